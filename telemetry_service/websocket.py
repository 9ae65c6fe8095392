"""
The WebSocket side: translates frames into calls on the L{Hub} and back, and owns the
listening port and the open connections.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import PreparedMessage, WebSocketProtocol
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort, IPushProducer, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from telemetry_service.config import Settings
from telemetry_service.errors import ConfigurationError
from telemetry_service.hub import Hub, Peer

#: Close code sent to every peer when the hub shuts down (RFC 6455 "going away").
GOING_AWAY = 1001

_OPEN = WebSocketProtocol.STATE_OPEN


class WebSocketPeer:
    """
    One open WebSocket connection, as the hub sees it.
    """

    __slots__ = ("_protocol", "address")

    def __init__(self, protocol: TelemetryServerProtocol) -> None:
        self._protocol = protocol
        self.address: str = str(protocol.peer)

    @property
    def congested(self) -> bool:
        return self._protocol.write_paused

    def send(self, payload: bytes) -> None:
        protocol = self._protocol
        # After a close frame has gone out (shutdown, 1009) no data frame may follow it.
        if protocol.state == _OPEN:
            protocol.sendMessage(payload, isBinary=False)

    def send_prepared(self, prepared: PreparedMessage) -> None:
        protocol = self._protocol
        if protocol.state == _OPEN:
            protocol.sendPreparedMessage(prepared)


def prepared_fanout(peers: Iterable[Peer], payload: bytes) -> None:
    """
    Send one message to many peers, framing it once.
    """
    prepared = PreparedMessage(payload, False, False, True)
    # The hub only ever holds the peers this module made.
    for peer in cast("Iterable[WebSocketPeer]", peers):
        peer.send_prepared(prepared)


def _set_tcp_nodelay(transport: Any) -> bool:
    """
    Turn Nagle's algorithm off so that small telemetry frames leave at once.

    Autobahn's own C{tcpNoDelay} option never takes effect on its Twisted server (it reads the
    option before copying it from the factory, and swallows the error), so the hub sets it.
    UNIX sockets have no such option.
    """
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is None:
        return False
    try:
        set_no_delay(True)
    except OSError:
        return False
    return True


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

    def connectionMade(self) -> None:
        super().connectionMade()
        _set_tcp_nodelay(self.transport)
        # As a push producer we are told when the peer stops reading (buffer over 64 KiB).
        transport: Any = self.transport
        transport.registerProducer(self, True)
        self.factory.connections.add(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.connections.discard(self)
        super().connectionLost(reason)

    def onOpen(self) -> None:
        self._hub_peer = WebSocketPeer(self)
        self.factory.hub.connection_opened(self._hub_peer)

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

    def go_away(self) -> None:
        """
        Start the closing handshake with 1001 (Going Away). Autobahn's C{sendClose} refuses
        1001, which is reserved for exactly this, so the frame is sent directly.
        """
        if self.state == _OPEN:
            self.sendCloseFrame(code=GOING_AWAY, reasonUtf8=b"hub shutting down", isReply=False)
        else:
            self.dropConnection(abort=True)

    # -- IPushProducer: the transport tells us when its write buffer fills and drains

    def pauseProducing(self) -> None:
        self.write_paused = True

    def resumeProducing(self) -> None:
        self.write_paused = False

    def stopProducing(self) -> None:
        self.write_paused = True


class TelemetryServerFactory(WebSocketServerFactory):
    """
    Builds one L{TelemetryServerProtocol} per connection, all speaking to one hub.

    @ivar connections: every connection that has not been lost yet, in any state.
    """

    protocol = TelemetryServerProtocol  # type: ignore[assignment]
    # Twisted's "Starting factory" lines say nothing the listening line does not.
    noisy = False

    def __init__(self, hub: Hub, settings: Settings) -> None:
        super().__init__()
        self.hub = hub
        self.connections: set[TelemetryServerProtocol] = set()
        self.setProtocolOptions(
            maxFramePayloadSize=settings.max_message_bytes,
            maxMessagePayloadSize=settings.max_message_bytes,
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


class WebSocketListener(Service):
    """
    Listens on one endpoint; on stop, closes every connection with 1001 and waits briefly
    for the closing handshakes.
    """

    _log = Logger()

    def __init__(
        self,
        endpoint: Any,
        description: str,
        factory: TelemetryServerFactory,
        settings: Settings,
        clock: IReactorTime,
    ) -> None:
        self._endpoint = endpoint
        self._description = description
        self._factory = factory
        self._settings = settings
        self._clock = clock
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        outcome: list[Any] = []
        self._endpoint.listen(self._factory).addBoth(outcome.append)
        if not outcome:
            raise ConfigurationError(f"listening on {self._description} did not complete")
        if isinstance(outcome[0], Failure):
            raise ConfigurationError(
                f"cannot listen on {self._description}: {outcome[0].getErrorMessage()}"
            )
        self.port = outcome[0]
        address: Any = self.port.getHost()
        port = getattr(address, "port", None)
        where = f"{address.host}:{port}" if port is not None else str(address)
        self._log.info(
            "Telemetry WebSocket server listening on {address} (port {port})",
            address=where,
            port=port,
            endpoint=self._description,
        )

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        if self.port is not None:
            yield self.port.stopListening()
            self.port = None
        connections = list(self._factory.connections)
        if not connections:
            return
        self._log.info("Closing {count} connections with 1001 (going away)", count=len(connections))
        for protocol in connections:
            protocol.go_away()
        deadline = self._clock.seconds() + self._settings.shutdown_grace
        while self._factory.connections and self._clock.seconds() < deadline:
            yield _sleep(self._clock, 0.05)
        for protocol in list(self._factory.connections):
            protocol.dropConnection(abort=True)


def _sleep(clock: IReactorTime, seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    clock.callLater(seconds, d.callback, None)
    return d
