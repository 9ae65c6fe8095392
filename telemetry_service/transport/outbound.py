"""
What the hub sends down each WebSocket connection, and the budgets that bound it.

Everything outgoing goes through a bounded per-connection queue (L{WebSocketPeer}), so a
reader that stops reading costs at most C{--max-queued-bytes}, and all the queues together
at most C{--max-total-queued-bytes} (L{OutboundBudget}). Messages are framed once per
broadcast (L{prepared_fanout}), and a pass's frames go out together (L{WriteBatcher}).

The queue knows the WebSocket under it only as a L{Wire}: the protocol class implements it,
and this module imports nothing of it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any, Protocol, cast

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from telemetry_service.connections import Peer, Stream
from telemetry_service.endofpass import EndOfPass
from telemetry_service.internals import is_direct, write_around_buffer

_OPEN = WebSocketProtocol.STATE_OPEN


class Wire(Protocol):
    """
    What a connection's outbound queue needs of the WebSocket under it.
    """

    #: Autobahn's state of the connection (frames go out only while it is open)
    state: int
    #: True while the transport's outbound buffer is over its high-water mark
    write_paused: bool
    #: printable address of the remote end
    peer: str | None

    @property
    def transport(self) -> Any: ...

    def too_slow(self, limit: int, why: str | None = None) -> None:
        """
        Close the connection with 4008: the hub held more than C{limit} bytes for it.
        """

    def close_with(self, code: int, reason: str) -> None:
        """
        Start the closing handshake with any code.
        """

    def send_failed(self, failure: Failure, doing: str) -> None:
        """
        Sending to it failed: say so, and drop this connection only.
        """


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
        "_queue",
        "_queued_bytes",
        "_streams",
        "_transport",
        "_wire",
        "address",
        "limit",
    )

    def __init__(
        self,
        wire: Wire,
        limit: int,
        batcher: WriteBatcher | None = None,
        budget: OutboundBudget | None = None,
        direct_writes: bool = True,
    ) -> None:
        """
        @param batcher: sends a pass's frames together (without one, each goes out at once).
        @param direct_writes: whether the fast write path may be used (see internals).
        """
        self._wire = wire
        self._transport: Any = wire.transport
        # plain TCP and UNIX sockets are written around Twisted's buffer (see WriteBatcher);
        # a TLS transport must encrypt what it sends, so it gets Twisted's own write
        self._direct = direct_writes and is_direct(self._transport)
        self._batcher = batcher
        # makes what the store holds durable before a frame goes out (see EndOfPass)
        self._before_send = batcher.end_of_pass.commit if batcher is not None else _nothing
        self._budget = budget or OutboundBudget(2**62)
        # frames of this reactor pass, not yet sent (see WriteBatcher)
        self._pending: list[bytes] | None = None
        self._pending_bytes = 0
        # made when first needed: an empty deque costs ~600 bytes per idle connection
        self._queue: deque[bytes | _QueuedStream] | None = None
        self._queued_bytes = 0
        self._streams = 0
        self._failed = False
        self.address: str = str(wire.peer)
        self.limit = limit

    @property
    def congested(self) -> bool:
        return self._wire.write_paused

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
        protocol = self._wire
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
        if self._wire.state != _OPEN:
            return
        self._streams += 1
        queued = _QueuedStream(stream)
        self._enqueue(queued, queued.counted)
        if not self._wire.write_paused:
            self.flush()

    def close(self, code: int, reason: str) -> None:
        self.drop_queue()
        self._wire.close_with(code, reason)

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
        self._wire.too_slow(self.limit)

    def cut(self, why: str) -> None:
        """
        Close this connection to give back what the hub holds for it.
        """
        self.drop_queue()
        self._wire.too_slow(self.limit, why)

    def write_pending(self) -> None:
        """
        Send this pass's frames in one go (see L{WriteBatcher}).
        """
        frames, self._pending = self._pending, None
        self._pending_bytes = 0
        # frames still pending when a close frame went out must not follow it
        if not frames or self._wire.state != _OPEN:
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
        queue, protocol, transport = self._queue, self._wire, self._transport
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
        self._wire.send_failed(failure, doing)


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

    def __init__(self, end_of_pass: EndOfPass) -> None:
        """
        @param end_of_pass: when the frames go out, after the store's commit.
        """
        self.end_of_pass = end_of_pass
        end_of_pass.send_with(self.flush)
        self._marked: list[WebSocketPeer] = []

    def mark(self, peer: WebSocketPeer) -> None:
        self.end_of_pass.ask()
        self._marked.append(peer)

    def flush(self) -> None:
        marked, self._marked = self._marked, []
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
