"""
The WebSocket side: translates frames into calls on the L{Hub} and back, and owns the
listening port and the open connections.

Autobahn does the handshake, control frames, closing, pings and every unusual frame. The
common case, a whole masked text or binary frame of at most 64 KiB, is parsed here
(L{TelemetryServerProtocol.processData}), and outgoing messages are framed once per
broadcast and written straight to the transport: Autobahn's generic paths cost several
times more than the rest of the hub per message (futures, debug formatting, per-frame
objects). Everything outgoing goes through a bounded per-connection queue
(L{WebSocketPeer}), so a reader that stops reading costs at most C{max_queued_bytes}.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any, cast

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.application.service import Service
from twisted.internet import defer, tcp
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
#: Close code sent to a dashboard whose unread messages exceed C{max_queued_bytes}.
TOO_SLOW = 4008

_OPEN = WebSocketProtocol.STATE_OPEN
_INVALID_PAYLOAD = 1007


def text_frame(payload: bytes) -> bytes:
    """
    One unmasked, final text frame (RFC 6455 5.2), as a server sends it.
    """
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


def _unmask(data: bytes, start: int, end: int, mask: bytes) -> bytes:
    """
    XOR C{data[start:end]} with the 4-byte C{mask}, as one big-integer operation.
    """
    length = end - start
    if length == 0 or mask == b"\x00\x00\x00\x00":
        return data[start:end]
    key = (mask * ((length >> 2) + 1))[:length]
    value = int.from_bytes(data[start:end], "little") ^ int.from_bytes(key, "little")
    return value.to_bytes(length, "little")


class WebSocketPeer:
    """
    One open WebSocket connection, as the hub sees it, with its bounded outbound queue.

    While the transport's buffer is over its high-water mark (it tells us through
    C{pauseProducing}), frames wait in C{_queue}; past C{limit} bytes the connection is
    closed with L{TOO_SLOW}. The frames in the queue are shared with every other recipient
    of the same broadcast, so a queued frame costs a reference, not a copy.
    """

    __slots__ = (
        "_batcher",
        "_pending",
        "_protocol",
        "_queue",
        "_queued_bytes",
        "_transport",
        "address",
        "limit",
    )

    def __init__(
        self, protocol: TelemetryServerProtocol, limit: int, batcher: WriteBatcher | None = None
    ) -> None:
        self._protocol = protocol
        self._transport: Any = protocol.transport
        # plain TCP and UNIX sockets only: a TLS transport must encrypt what it sends
        direct = isinstance(self._transport, tcp.Connection) and not self._transport.TLS
        self._batcher = batcher if direct else None
        # frames of this reactor pass, not yet sent (see WriteBatcher)
        self._pending: list[bytes] | None = None
        # made when first needed: an empty deque costs ~600 bytes per idle connection
        self._queue: deque[bytes] | None = None
        self._queued_bytes = 0
        self.address: str = str(protocol.peer)
        self.limit = limit

    @property
    def congested(self) -> bool:
        return self._protocol.write_paused

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def send(self, payload: bytes) -> None:
        self.send_frame(text_frame(payload))

    def send_frame(self, frame: bytes) -> None:
        protocol = self._protocol
        # After a close frame has gone out (shutdown, 1009, 4008) no data frame may follow.
        if protocol.state != _OPEN:
            return
        queue = self._queue
        if protocol.write_paused or queue:
            if queue is None:
                queue = self._queue = deque()
            queue.append(frame)
            self._queued_bytes += len(frame)
            if self._queued_bytes > self.limit:
                self.drop_queue()
                protocol.too_slow(self.limit)
        elif self._batcher is not None:
            pending = self._pending
            if pending is None:
                self._pending = [frame]
                self._batcher.mark(self)
            else:
                pending.append(frame)
        else:
            self._transport.write(frame)

    def write_pending(self) -> None:
        """
        Send this pass's frames in one go (see L{WriteBatcher}).
        """
        frames, self._pending = self._pending, None
        # frames still pending when a close frame went out must not follow it
        if not frames or self._protocol.state != _OPEN:
            return
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        transport = self._transport
        if (
            transport._tempDataBuffer
            or transport.dataBuffer
            or not transport.connected
            or transport._writeDisconnected
            or transport.TLS
        ):
            transport.write(data)
            return
        sent = transport.writeSomeData(data)
        if not isinstance(sent, int):  # the connection is gone: let Twisted's own path see it
            transport.write(data)
        elif sent < len(data):
            transport.write(data[sent:])

    def flush(self) -> None:
        """
        Hand queued frames to the transport until it is full again.
        """
        # frames of the current pass were sent before anything that queued after them
        self.write_pending()
        queue, protocol, transport = self._queue, self._protocol, self._transport
        if queue is None:
            return
        while queue and not protocol.write_paused and protocol.state == _OPEN:
            frame = queue.popleft()
            self._queued_bytes -= len(frame)
            transport.write(frame)

    def drop_queue(self) -> None:
        self._queue = None
        self._queued_bytes = 0


class WriteBatcher:
    """
    Sends each connection's frames of one reactor pass in a single send(), straight to the
    socket when its transport has nothing buffered.

    Twisted's C{write} buffers a frame and registers the socket for writing, sends on the
    next pass and unregisters it: three system calls per frame when frames come one per
    pass (2,000 messages/s to 50 dashboards is 100k of them a second). Sending each frame
    at once instead loses the coalescing Twisted gives under load (measured: 2.5x fewer
    deliveries/s at 10 clients). Collecting a pass's frames per connection and sending them
    together at the start of the next pass keeps both: one send() per connection and pass,
    no registration unless the socket is full. What the socket does not take goes through
    C{write}, so order, the producer signal and error handling stay Twisted's.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._marked: list[WebSocketPeer] = []

    def mark(self, peer: WebSocketPeer) -> None:
        if not self._marked:
            self._clock.callLater(0, self.flush)
        self._marked.append(peer)

    def flush(self) -> None:
        marked, self._marked = self._marked, []
        for peer in marked:
            peer.write_pending()


def prepared_fanout(peers: Iterable[Peer], payload: bytes) -> None:
    """
    Send one message to many peers, framing it once.
    """
    frame = text_frame(payload)
    # The hub only ever holds the peers this module made.
    for peer in cast("Iterable[WebSocketPeer]", peers):
        peer.send_frame(frame)


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
    #: set by Autobahn from the factory's options
    maxMessagePayloadSize: int

    def connectionMade(self) -> None:
        super().connectionMade()
        _set_tcp_nodelay(self.transport)
        # As a push producer we are told when the peer stops reading (buffer over 64 KiB).
        transport: Any = self.transport
        transport.registerProducer(self, True)
        self.factory.connections.add(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.connections.discard(self)
        if self._hub_peer is not None:
            self._hub_peer.drop_queue()
        super().connectionLost(reason)

    def onOpen(self) -> None:
        # Autobahn keeps the whole opening handshake on every connection (about 1 KiB); it
        # reads it only while the handshake runs, so an idle dashboard need not carry it.
        self.http_headers = {}
        self.http_request_data = b""
        self.http_response_data = ""
        self.http_status_line = ""
        self._hub_peer = WebSocketPeer(self, self.factory.max_queued_bytes, self.factory.batcher)
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

    def processData(self) -> bool:
        """
        Take every whole, simple data frame at the front of the buffer, then let Autobahn
        handle what is left (control frames, fragments, long or partial frames, errors).
        """
        if self.state == _OPEN and self.current_frame is None and not self.inside_message:
            self._take_simple_frames()
        result: bool = super().processData()
        return result

    def _take_simple_frames(self) -> None:
        data: bytes = self.data
        size = len(data)
        limit = self.maxMessagePayloadSize or 65535
        pos = 0
        try:
            while size - pos >= 6 and self.state == _OPEN:
                b0, b1 = data[pos], data[pos + 1]
                opcode = b0 & 0x0F
                # FIN set, no RSV bits, text (1) or binary (2), masked as clients must
                if b0 & 0xF0 != 0x80 or opcode not in (1, 2) or not b1 & 0x80:
                    return
                length = b1 & 0x7F
                if length < 126:
                    start = pos + 6
                elif length == 126:
                    if size - pos < 8:
                        return
                    length = (data[pos + 2] << 8) | data[pos + 3]
                    start = pos + 8
                else:
                    return
                end = start + length
                if length > limit or end > size:
                    return  # too big: Autobahn closes with 1009; partial: wait for more
                payload = _unmask(data, start, end, data[start - 4 : start])
                pos = end
                if self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:
                    # any data frame proves the peer alive, as in Autobahn's own path
                    self._cancelAutoPingTimeoutCall()
                if opcode == 1 and not payload.isascii():
                    try:
                        payload.decode("utf-8")
                    except UnicodeDecodeError:
                        self._fail_connection(
                            _INVALID_PAYLOAD, "received text message is not valid UTF-8"
                        )
                        return
                self.onMessage(payload, opcode == 2)
        finally:
            # consumed frames leave the buffer once, not one copy per frame
            if pos:
                self.data = data[pos:]

    def too_slow(self, limit: int) -> None:
        self._log.warn(
            "Closing {peer} with {code}: it stopped reading and more than {limit} bytes "
            "waited for it",
            peer=self.peer,
            code=TOO_SLOW,
            limit=limit,
        )
        self.sendCloseFrame(
            code=TOO_SLOW, reasonUtf8=b"too slow: outbound queue over limit", isReply=False
        )

    def go_away(self) -> None:
        """
        Start the closing handshake with 1001 (Going Away). Autobahn's C{sendClose} refuses
        1001, which is reserved for exactly this, so the frame is sent directly.
        """
        if self.state == _OPEN:
            if self._hub_peer is not None:
                self._hub_peer.write_pending()  # what this pass sent still goes first
                self._hub_peer.drop_queue()
            self.sendCloseFrame(code=GOING_AWAY, reasonUtf8=b"hub shutting down", isReply=False)
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

    @ivar connections: every connection that has not been lost yet, in any state.
    """

    protocol = TelemetryServerProtocol  # type: ignore[assignment]
    # Twisted's "Starting factory" lines say nothing the listening line does not.
    noisy = False

    def __init__(self, hub: Hub, settings: Settings, clock: IReactorTime | None = None) -> None:
        """
        @param clock: runs the write batching; without one, frames go to C{transport.write}.
        """
        super().__init__()
        self.hub = hub
        self.batcher = WriteBatcher(clock) if clock is not None else None
        self.max_queued_bytes = settings.max_queued_bytes
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


class Listener(Service):
    """
    Listens on one endpoint from C{privilegedStartService} on; a port that cannot be had
    raises L{ConfigurationError} at once, naming it.
    """

    _log = Logger()
    #: what the log line calls this listener
    what = "server"

    def __init__(self, endpoint: Any, description: str, factory: Any) -> None:
        self._endpoint = endpoint
        self._description = description
        self._factory = factory
        self.port: IListeningPort | None = None

    @property
    def port_number(self) -> int | None:
        if self.port is None:
            return None
        number = getattr(self.port.getHost(), "port", None)
        return number if isinstance(number, int) else None

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
            "Telemetry {what} listening on {address} (port {port})",
            what=self.what,
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


class WebSocketListener(Listener):
    """
    The WebSocket port; on stop, it also closes every connection with 1001 and waits
    briefly for the closing handshakes.
    """

    what = "WebSocket server"

    def __init__(
        self,
        endpoint: Any,
        description: str,
        factory: TelemetryServerFactory,
        settings: Settings,
        clock: IReactorTime,
    ) -> None:
        super().__init__(endpoint, description, factory)
        self._settings = settings
        self._clock = clock

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        yield super().stopService()
        factory: TelemetryServerFactory = self._factory
        connections = list(factory.connections)
        if not connections:
            return
        self._log.info("Closing {count} connections with 1001 (going away)", count=len(connections))
        for protocol in connections:
            protocol.go_away()
        deadline = self._clock.seconds() + self._settings.shutdown_grace
        while factory.connections and self._clock.seconds() < deadline:
            yield _sleep(self._clock, 0.05)
        for protocol in list(factory.connections):
            protocol.dropConnection(abort=True)


def _sleep(clock: IReactorTime, seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    clock.callLater(seconds, d.callback, None)
    return d
