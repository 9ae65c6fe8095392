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
from collections.abc import Callable, Iterable
from typing import Any, cast

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
from telemetry_service.errors import (
    GOING_AWAY,
    TOO_SLOW,
    shorten,
)
from telemetry_service.hub import Hub, Peer, Stream
from telemetry_service.internals import (
    FastPaths,
    is_direct,
    take_simple_frames,
    write_around_buffer,
)
from telemetry_service.ratelimit import TokenBucket

_OPEN = WebSocketProtocol.STATE_OPEN


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


class _QueuedStream:
    """
    A stream of messages (a snapshot, a resume) in a peer's queue, with what of it has
    been counted against the peer's budget.
    """

    __slots__ = ("counted", "stream")

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.counted = stream.held_bytes


class OutboundBudget:
    """
    The bytes waiting for slow readers, summed over every connection, against one limit.

    Each connection is held to its own budget (L{WebSocketPeer.limit}); this one keeps many
    connections, each within its own, from adding up to more than the hub can hold. Past
    the limit, the connections with the biggest queues are closed first, until the total is
    back under it.
    """

    _log = Logger()

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        #: connections with something queued (the only candidates for a cut)
        self._holders: dict[WebSocketPeer, None] = {}
        self.cuts = 0

    def add(self, peer: WebSocketPeer, size: int) -> None:
        self.total += size
        self._holders[peer] = None
        if self.total > self.limit:
            self._cut()

    def release(self, peer: WebSocketPeer, size: int, empty: bool) -> None:
        self.total -= size
        if empty:
            self._holders.pop(peer, None)

    def _cut(self) -> None:
        biggest_first = sorted(self._holders, key=lambda p: p.queued_bytes, reverse=True)
        self._log.warn(
            "Outbound queues hold {total} bytes, over the hub's limit of {limit}: "
            "closing the biggest",
            total=self.total,
            limit=self.limit,
        )
        for peer in biggest_first:
            if self.total <= self.limit:
                break
            self.cuts += 1
            peer.cut(f"its queue was among the biggest when the hub's {self.limit} bytes ran out")


class WebSocketPeer:
    """
    One open WebSocket connection, as the hub sees it, with its bounded outbound queue.

    Every byte the hub holds for the connection counts against C{limit}: frames of this
    reactor pass not yet written (C{_pending}), frames waiting while the transport's buffer
    is over its high-water mark (it tells us through C{pauseProducing}) in C{_queue}, and
    what the unsent part of a snapshot or resume holds. Past C{limit} the connection is
    closed with L{TOO_SLOW}. Queued frames are shared with every other recipient of the
    same broadcast, so a queued frame costs a reference, not a copy; it is still counted in
    full, as the most it could cost.
    """

    __slots__ = (
        "_batcher",
        "_before_send",
        "_budget",
        "_direct",
        "_failed",
        "_pending",
        "_pending_bytes",
        "_protocol",
        "_queue",
        "_queued_bytes",
        "_streams",
        "_transport",
        "address",
        "limit",
    )

    def __init__(
        self,
        protocol: TelemetryServerProtocol,
        limit: int,
        batcher: WriteBatcher | None = None,
        budget: OutboundBudget | None = None,
        direct_writes: bool = True,
    ) -> None:
        """
        @param direct_writes: whether the fast write path may be used (see internals).
        """
        self._protocol = protocol
        self._transport: Any = protocol.transport
        # plain TCP and UNIX sockets only: a TLS transport must encrypt what it sends
        # plain TCP and UNIX sockets are written around Twisted's buffer (see WriteBatcher);
        # a TLS transport must encrypt what it sends, so it gets Twisted's own write
        self._direct = direct_writes and is_direct(self._transport)
        self._batcher = batcher
        # makes what the store holds durable before a frame goes out (see MessageStore)
        self._before_send = batcher.before_send if batcher is not None else _nothing
        self._budget = budget or OutboundBudget(2**62)
        # frames of this reactor pass, not yet sent (see WriteBatcher)
        self._pending: list[bytes] | None = None
        self._pending_bytes = 0
        # made when first needed: an empty deque costs ~600 bytes per idle connection
        self._queue: deque[bytes | _QueuedStream] | None = None
        self._queued_bytes = 0
        self._streams = 0
        self._failed = False
        self.address: str = str(protocol.peer)
        self.limit = limit

    @property
    def congested(self) -> bool:
        return self._protocol.write_paused

    @property
    def replaying(self) -> bool:
        return self._streams > 0

    @property
    def queued_bytes(self) -> int:
        """
        Bytes held for this connection: this pass's frames, the queue and its streams.
        """
        return self._pending_bytes + self._queued_bytes

    def send(self, payload: bytes) -> None:
        self.send_frame(text_frame(payload))

    def send_frame(self, frame: bytes) -> None:
        protocol = self._protocol
        # After a close frame has gone out (shutdown, 1009, 4008) no data frame may follow.
        if protocol.state != _OPEN:
            return
        if protocol.write_paused or self._queue:
            self._enqueue(frame, len(frame))
        elif self._batcher is not None:
            pending = self._pending
            if pending is None:
                self._pending = [frame]
                self._batcher.mark(self)
            else:
                pending.append(frame)
            self._pending_bytes += len(frame)
            if self._pending_bytes + self._queued_bytes > self.limit:
                self._over_limit()
        else:
            self._before_send()
            self._transport.write(frame)

    def send_stream(self, stream: Stream) -> None:
        if self._protocol.state != _OPEN:
            return
        self._streams += 1
        queued = _QueuedStream(stream)
        self._enqueue(queued, queued.counted)
        if not self._protocol.write_paused:
            self.flush()

    def close(self, code: int, reason: str) -> None:
        self.drop_queue()
        self._protocol.close_with(code, reason)

    def _enqueue(self, item: bytes | _QueuedStream, size: int) -> None:
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        queue.append(item)
        self._queued_bytes += size
        self._budget.add(self, size)
        if self._pending_bytes + self._queued_bytes > self.limit:
            self._over_limit()

    def _over_limit(self) -> None:
        self.drop_queue()
        self._protocol.too_slow(self.limit)

    def cut(self, why: str) -> None:
        """
        Close this connection to give back what the hub holds for it.
        """
        self.drop_queue()
        self._protocol.too_slow(self.limit, why)

    def write_pending(self) -> None:
        """
        Send this pass's frames in one go (see L{WriteBatcher}).
        """
        frames, self._pending = self._pending, None
        self._pending_bytes = 0
        # frames still pending when a close frame went out must not follow it
        if not frames or self._protocol.state != _OPEN:
            return
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        if self._direct:
            write_around_buffer(self._transport, data)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """
        Hand queued frames to the transport, and pull streams, until it is full again.
        """
        self._before_send()
        # frames of the current pass were sent before anything that queued after them
        self.write_pending()
        queue, protocol, transport = self._queue, self._protocol, self._transport
        while queue and not protocol.write_paused and protocol.state == _OPEN:
            item = queue[0]
            if isinstance(item, bytes):
                queue.popleft()
                self._release(len(item))
                transport.write(item)
                continue
            try:
                payload = item.stream.next_payload()
            except Exception:
                self.failed(Failure(), "while its snapshot or resume was being sent")
                return
            if payload is None:
                queue.popleft()
                self._streams -= 1
                self._release(item.counted)
                continue
            if not self._recount(item):
                return
            transport.write(text_frame(payload))

    def _recount(self, item: _QueuedStream) -> bool:
        """
        Count what a stream holds now; False if that put the peer over its budget.
        """
        held = item.stream.held_bytes
        change, item.counted = held - item.counted, held
        if change < 0:
            self._release(-change)
        elif change > 0:
            self._queued_bytes += change
            self._budget.add(self, change)
            if self._pending_bytes + self._queued_bytes > self.limit:
                self._over_limit()
        # closing the peer drops its queue: nothing more may be written
        return self._queue is not None

    def _release(self, size: int) -> None:
        self._queued_bytes -= size
        self._budget.release(self, size, not self._queue)

    def drop_queue(self) -> None:
        self._pending = None
        self._pending_bytes = 0
        if self._queued_bytes or self._queue:
            self._budget.release(self, self._queued_bytes, True)
        self._queue = None
        self._queued_bytes = 0
        self._streams = 0

    def failed(self, failure: Failure, doing: str = "while sending to it") -> None:
        """
        Something failed in this connection's send path: say so once, close this
        connection only, and let every other go on.
        """
        if self._failed:
            return
        self._failed = True
        self.drop_queue()
        self._protocol.send_failed(failure, doing)


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

    A failure while sending to one connection closes that connection and nothing else.
    """

    def __init__(self, clock: IReactorTime, before_send: Callable[[], None] | None = None) -> None:
        """
        @param before_send: called before any frame goes out (the store's commit).
        """
        self._clock = clock
        self._marked: list[WebSocketPeer] = []
        self._scheduled = False
        self.before_send = before_send or _nothing

    def wake(self) -> None:
        """
        End this reactor pass with a flush (and a commit of the store), frames or not.
        """
        if not self._scheduled:
            self._scheduled = True
            self._clock.callLater(0, self.flush)

    def mark(self, peer: WebSocketPeer) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._clock.callLater(0, self.flush)
        self._marked.append(peer)

    def flush(self) -> None:
        self._scheduled = False
        marked, self._marked = self._marked, []
        self.before_send()
        for peer in marked:
            try:
                peer.write_pending()
            except Exception:
                peer.failed(Failure())


def _nothing() -> None:
    pass


def prepared_fanout(peers: Iterable[Peer], payload: bytes) -> None:
    """
    Send one message to many peers, framing it once.
    """
    frame = text_frame(payload)
    # The hub only ever holds the peers this module made.
    for peer in cast("Iterable[WebSocketPeer]", peers):
        try:
            peer.send_frame(frame)
        except Exception:
            # one connection's failure must cost that connection, never the broadcast
            peer.failed(Failure())


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

    #: (HTTP status, reason) when this connection is over a connection limit: it is
    #: refused at the handshake
    _refusal: tuple[int, str] | None = None
    _counted_as: str | None = None
    #: what the token presented at the handshake allows
    _grant: Grant | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        _set_tcp_nodelay(self.transport)
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
        self._counted_as = _address_key(transport)
        self._refusal = self.factory.admit(self, self._counted_as)

    def _first_data(self, data: bytes) -> None:
        del self.dataReceived  # the class's from now on
        transport: Any = self.transport
        self._counted_as = _address_key(transport)
        self._refusal = self.factory.admit(self, self._counted_as)
        self.peer = peer2str(transport)
        self.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.leave(self, self._counted_as)  # nothing if it was never counted
        if self._hub_peer is not None:
            self._hub_peer.drop_queue()
        super().connectionLost(reason)

    def onConnect(self, request: Any) -> None:
        if self._refusal is not None:
            status, reason = self._refusal
            raise ConnectionDeny(status, reason)
        self._grant = self.factory.admit_request(request)

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

    @ivar connections: every connection that has not been lost yet, in any state.
    """

    protocol = TelemetryServerProtocol  # type: ignore[assignment]
    # Twisted's "Starting factory" lines say nothing the listening line does not.
    noisy = False

    _log = Logger()

    def __init__(
        self,
        hub: Hub,
        settings: Settings,
        clock: IReactorTime | None = None,
        before_send: Callable[[], None] | None = None,
        fast_paths: FastPaths | None = None,
    ) -> None:
        """
        @param clock: runs the write batching; without one, frames go to C{transport.write}.
        @param before_send: called before any frame goes out: the store's commit.
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
        self.batcher = WriteBatcher(clock, before_send) if clock is not None else None
        self.max_queued_bytes = settings.max_queued_bytes
        self.budget = OutboundBudget(settings.max_total_queued_bytes)
        self.connections: set[TelemetryServerProtocol] = set()
        self._max_connections = settings.max_connections
        self._max_per_address = settings.max_connections_per_address
        self._per_address: dict[str, int] = {}
        #: connections refused at the handshake, by reason
        self.refused: dict[str, int] = {
            "total": 0,
            "per_address": 0,
            "unauthorized": 0,
            "origin": 0,
        }
        #: connections the hub closed for what they cost, by why
        self.closes: dict[str, int] = {"slow_reader": 0, "global_budget": 0, "send_failed": 0}
        #: while the hub closes every connection (stopping, restarting): the close code and
        #: reason for a connection that completes its handshake meanwhile
        self.closing: tuple[int, str] | None = None
        #: the HTTP port of the hub's own page, whose origin may always connect
        self.page_port: Callable[[], int | None] = lambda: None
        # refusals are logged at most once a second, with a count of the rest
        self._refusal_log = TokenBucket(clock or _reactor_clock(), 1.0, 5)
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

    def admit(self, protocol: TelemetryServerProtocol, address: str) -> tuple[int, str] | None:
        """
        Count a new connection; say why it must be refused, if it must.
        """
        self.connections.add(protocol)
        count = self._per_address[address] = self._per_address.get(address, 0) + 1
        if len(self.connections) > self._max_connections:
            return self._refuse(
                "total", 503, f"the hub is at its limit of {self._max_connections} connections"
            )
        if count > self._max_per_address:
            return self._refuse(
                "per_address",
                429,
                f"more than {self._max_per_address} connections from {address}",
            )
        return None

    def admit_request(self, request: Any) -> Grant | None:
        """
        Check a handshake's origin and token against the hub's access rules.

        @return: what its token allows (None: it presented none).
        @raise ConnectionDeny: 403 for a foreign origin, 401 for a wrong or missing token.
        """
        access = self.hub.access
        origin = request.headers.get("origin")
        if not access.origin_allowed(origin, self._own_origins(request.host)):
            raise ConnectionDeny(
                *self._refuse("origin", 403, f"origin {shorten(origin, 100)} is not allowed")
            )
        token = _bearer(request.headers.get("authorization"))
        if token is None:
            tokens = request.params.get("token") or [None]
            token = tokens[0]
        if token is not None:
            grant = access.authenticate(token)
            if grant is None:
                raise ConnectionDeny(*self._refuse("unauthorized", 401, "unknown token"))
            return grant
        if access.publishing_needs_a_token and access.reading_needs_a_token:
            raise ConnectionDeny(
                *self._refuse("unauthorized", 401, "this hub needs a connector or viewer token")
            )
        return None

    def _own_origins(self, host: str | None) -> tuple[str, ...]:
        port = self.page_port()
        if not host or port is None:
            return ()
        hostname = host.rsplit(":", 1)[0] if host.count(":") == 1 or "]" in host else host
        hostname = hostname.lower()
        origins = [f"http://{hostname}:{port}", f"https://{hostname}:{port}"]
        if port == 80:
            origins.append(f"http://{hostname}")
        if port == 443:
            origins.append(f"https://{hostname}")
        return tuple(origins)

    def leave(self, protocol: TelemetryServerProtocol, address: str | None) -> None:
        if protocol not in self.connections:
            return
        self.connections.discard(protocol)
        if address is not None:
            count = self._per_address.get(address, 1) - 1
            if count:
                self._per_address[address] = count
            else:
                self._per_address.pop(address, None)

    def _refuse(self, kind: str, status: int, reason: str) -> tuple[int, str]:
        self.refused[kind] += 1
        if self._refusal_log.allow():
            self._log.warn(
                "Refusing a connection at the handshake ({status}): {reason} "
                "({suppressed} more refusals not logged)",
                status=status,
                reason=reason,
                suppressed=self._refusal_log.take_suppressed(),
            )
        return status, reason


def _bearer(header: str | None) -> str | None:
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


def _address_key(transport: Any) -> str:
    """
    What the per-address limit counts by: the remote host of a TCP connection (a UNIX
    socket's peers all count as one).
    """
    host = getattr(transport.getPeer(), "host", None)
    return host if isinstance(host, str) else "local"


def _reactor_clock() -> IReactorTime:
    from twisted.internet import reactor

    return cast(IReactorTime, reactor)
