"""
The WebSocket protocol: translates the frames of one connection into calls on the L{Hub},
and the hub's sends back into frames (through its L{WebSocketPeer}).

Autobahn does the handshake, control frames, closing, pings and every unusual frame. The
common case, a whole masked text or binary frame of at most 64 KiB, is parsed here
(L{TelemetryServerProtocol.processData}, through L{internals}): Autobahn's generic path costs
several times more than the rest of the hub per message (futures, debug formatting,
per-frame objects). What is sent goes through the connection's bounded queue (outbound.py);
who may connect is admission.py's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autobahn.twisted.util import peer2str
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from telemetry_service import internals
from telemetry_service.auth import Grant
from telemetry_service.config import Settings
from telemetry_service.endofpass import EndOfPass
from telemetry_service.errors import GOING_AWAY, TOO_SLOW
from telemetry_service.hub import Hub
from telemetry_service.internals import FastPaths, take_simple_frames
from telemetry_service.transport.admission import Admission, address_key
from telemetry_service.transport.outbound import OutboundBudget, WebSocketPeer, WriteBatcher
from telemetry_service.transport.tcp import set_no_delay

_OPEN = WebSocketProtocol.STATE_OPEN


@implementer(IPushProducer)
class TelemetryServerProtocol(WebSocketServerProtocol):
    """
    Translates WebSocket events of one connection into calls on the hub.
    """

    _log = Logger()
    factory: TelemetryServerFactory
    _hub_peer: WebSocketPeer | None = None
    #: True while the transport's outbound buffer is over its high-water mark
    write_paused = False
    #: set by Autobahn from the factory's options
    maxMessagePayloadSize: int

    #: (HTTP status, reason) when this connection is over a connection limit: it is
    #: refused at the handshake
    _refusal: tuple[int, str] | None = None
    _counted_as: str | None = None
    #: what the token presented at the handshake allows
    _grant: Grant | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        set_no_delay(self.transport)
        # As a push producer we are told when the peer stops reading (buffer over 64 KiB).
        transport: Any = self.transport
        transport.registerProducer(self, True)
        if getattr(transport, "wrappedProtocol", None) is self:
            # A wrapper's transport (the PROXY protocol of a haproxy: endpoint) learns the
            # client's own address from a header that comes before any of our data: count
            # the connection when our first bytes arrive, under that address (counted now,
            # every connection would be the proxy's, and refused past its limit).
            self.dataReceived = self._first_data
            return
        # Counted from the TCP connection on: one that never completes its handshake, or
        # never says what it is, holds a place like any other.
        self._counted_as = address_key(transport)
        self._refusal = self.factory.admission.admit(self, self._counted_as)

    def _first_data(self, data: bytes) -> None:
        del self.dataReceived  # the class's from now on
        transport: Any = self.transport
        self._counted_as = address_key(transport)
        self._refusal = self.factory.admission.admit(self, self._counted_as)
        self.peer = peer2str(transport)
        self.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.admission.leave(self, self._counted_as)  # nothing if it was never counted
        if self._hub_peer is not None:
            self._hub_peer.drop_queue()
        super().connectionLost(reason)

    def onConnect(self, request: Any) -> None:
        if self._refusal is not None:
            status, reason = self._refusal
            raise ConnectionDeny(status, reason)
        self._grant = self.factory.admission.admit_request(request)

    def onOpen(self) -> None:
        # Autobahn keeps the whole opening handshake on every connection (about 1 KiB); it
        # reads it only while the handshake runs, so an idle dashboard need not carry it.
        self.http_headers = {}
        self.http_request_data = b""
        self.http_response_data = ""
        self.http_status_line = ""
        factory = self.factory
        self._hub_peer = WebSocketPeer(
            self, factory.max_queued_bytes, factory.batcher, factory.budget, factory.fast.writes
        )
        self.factory.hub.connection_opened(self._hub_peer, self._grant)
        if factory.closing is not None:
            # its handshake began before the hub started closing (see close_connections)
            self.go_away(*factory.closing)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        peer = self._hub_peer
        if peer is None:
            return
        try:
            self.factory.hub.message_received(peer, payload, isBinary)
        except Exception:
            # A bug must cost one message, not the connection or the process.
            self._log.failure("Error while handling a message from {peer}", peer=peer.address)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        peer, self._hub_peer = self._hub_peer, None
        if peer is not None:
            self.factory.hub.connection_closed(peer)

    def processData(self) -> bool:
        """
        Take every whole, simple data frame at the front of the buffer, then let Autobahn
        handle what is left (control frames, fragments, long or partial frames, errors).
        """
        if self.factory.fast.frames:
            take_simple_frames(self)
        result: bool = super().processData()
        return result

    def too_slow(self, limit: int, why: str | None = None) -> None:
        if self.state != _OPEN:
            return
        self.factory.closes["global_budget" if why else "slow_reader"] += 1
        self._log.warn(
            "Closing {peer} with {code}: {why}",
            peer=self.peer,
            code=TOO_SLOW,
            limit=limit,
            why=why or f"it reads too slowly: more than {limit} bytes waited for it",
        )
        self.sendCloseFrame(
            code=TOO_SLOW, reasonUtf8=b"too slow: outbound queue over limit", isReply=False
        )

    def close_with(self, code: int, reason: str) -> None:
        """
        Start the closing handshake with any code, RFC 6455's own (1008, 1009) included,
        which Autobahn's C{sendClose} refuses.
        """
        if self.state == _OPEN:
            # a close frame's reason has room for 123 bytes
            reason_bytes = reason.encode("utf-8")[:123]
            self.sendCloseFrame(code=code, reasonUtf8=reason_bytes, isReply=False)

    def send_failed(self, failure: Failure, doing: str) -> None:
        self.factory.closes["send_failed"] += 1
        self._log.failure(
            "Sending to {peer} failed {doing}; closing that connection only",
            failure,
            peer=self.peer,
            doing=doing,
        )
        self.dropConnection(abort=True)

    def go_away(self, code: int = GOING_AWAY, reason: str = "hub shutting down") -> None:
        """
        Start the closing handshake because the hub stops (1001, Going Away) or restarts
        (1012, Service Restart). Autobahn's C{sendClose} refuses both, reserved for exactly
        this, so the frame is sent directly.
        """
        if self.state == _OPEN:
            if self._hub_peer is not None:
                self._hub_peer.flush()  # what this pass sent still goes first
                self._hub_peer.drop_queue()
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode(), isReply=False)
        else:
            self.dropConnection(abort=True)

    # -- IPushProducer: the transport tells us when its write buffer fills and drains

    def pauseProducing(self) -> None:
        self.write_paused = True

    def resumeProducing(self) -> None:
        self.write_paused = False
        if self._hub_peer is not None:
            self._hub_peer.flush()

    def stopProducing(self) -> None:
        self.write_paused = True


class TelemetryServerFactory(WebSocketServerFactory):
    """
    Builds one L{TelemetryServerProtocol} per connection, all speaking to one hub.
    """

    protocol = TelemetryServerProtocol  # type: ignore[assignment]
    # Twisted's "Starting factory" lines say nothing the listening line does not.
    noisy = False

    _log = Logger()

    def __init__(
        self,
        hub: Hub,
        settings: Settings,
        clock: IReactorTime,
        end_of_pass: EndOfPass | None = None,
        page_port: Callable[[], int | None] = lambda: None,
        fast_paths: FastPaths | None = None,
    ) -> None:
        """
        @param end_of_pass: where a pass's frames go out together, after the store's
            commit; without one, each frame goes to C{transport.write} at once.
        @param page_port: the port of the hub's own page, whose origin may always connect.
        @param fast_paths: which fast paths to use (default: what L{internals.check} finds).
        """
        super().__init__()
        self.hub = hub
        self.fast = fast_paths if fast_paths is not None else internals.check()
        if self.fast.missing:
            self._log.warn(
                "Using the public (slower) paths: this version of Autobahn or Twisted lacks "
                "what the fast ones use: {missing}",
                missing="; ".join(self.fast.missing),
            )
        self.batcher = WriteBatcher(end_of_pass) if end_of_pass is not None else None
        self.max_queued_bytes = settings.max_queued_bytes
        self.budget = OutboundBudget(settings.max_total_queued_bytes)
        self.admission = Admission(settings, clock, lambda: hub.access, page_port)
        #: every connection that has not been lost yet, in any state
        self.connections = self.admission.connections
        #: connections refused at the handshake, by reason
        self.refused = self.admission.refused
        #: connections the hub closed for what they cost, by why
        self.closes: dict[str, int] = {"slow_reader": 0, "global_budget": 0, "send_failed": 0}
        #: while the hub closes every connection (stopping, restarting): the close code and
        #: reason for a connection that completes its handshake meanwhile
        self.closing: tuple[int, str] | None = None
        # One limit for the frame: a batch may be up to max_batch_bytes; the hub holds a
        # single event to max_message_bytes (and closes with 1009 past it) itself.
        largest = max(settings.max_message_bytes, settings.max_batch_bytes)
        self.setProtocolOptions(
            maxFramePayloadSize=largest,
            maxMessagePayloadSize=largest,
            autoPingInterval=settings.ping_interval,
            autoPingTimeout=settings.ping_timeout,
            openHandshakeTimeout=settings.handshake_timeout,
            closeHandshakeTimeout=settings.close_timeout,
            # Close with the RFC 6455 code (1007 bad UTF-8, 1009 too big) instead of
            # silently dropping TCP, so the peer learns why.
            failByDrop=False,
            # No HTML status page for plain HTTP requests to the WebSocket port.
            webStatus=False,
        )
