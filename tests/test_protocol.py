"""
The WebSocket protocol class over an in-memory transport: it only translates frames into
hub calls and back.
"""

from __future__ import annotations

import base64
import json
import os
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from telemetry_service.config import Settings
from telemetry_service.connections import Role
from telemetry_service.endofpass import EndOfPass
from telemetry_service.hub import Hub
from telemetry_service.internals import PUBLIC_ONLY, FastPaths
from telemetry_service.schemas import SchemaCatalog
from telemetry_service.transport.outbound import prepared_fanout
from telemetry_service.transport.websocket import TelemetryServerFactory, TelemetryServerProtocol

from . import examples as ex
from .fakes import telemetry_only


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One masked client frame (RFC 6455 5.2)."""
    mask = os.urandom(4)
    header = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        header += bytes([0x80 | n])
    elif n < 65536:
        header += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        header += bytes([0x80 | 127]) + struct.pack("!Q", n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split unmasked server frames into (opcode, payload)."""
    frames = []
    while data:
        opcode = data[0] & 0x0F
        n = data[1] & 0x7F
        offset = 2
        if n == 126:
            (n,) = struct.unpack("!H", data[2:4])
            offset = 4
        elif n == 127:
            (n,) = struct.unpack("!Q", data[2:10])
            offset = 10
        frames.append((opcode, data[offset : offset + n]))
        data = data[offset + n :]
    return frames


class Connected:
    def __init__(self, factory: TelemetryServerFactory) -> None:
        self.protocol: TelemetryServerProtocol = factory.buildProtocol(
            IPv4Address("TCP", "127.0.0.1", 5555)
        )
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5555))
        self.protocol.makeConnection(self.transport)
        key = base64.b64encode(os.urandom(16)).decode()
        self.protocol.dataReceived(
            (
                "GET /anything HTTP/1.1\r\nHost: hub:9000\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        response = self.transport.value()
        self.handshake = response[: response.index(b"\r\n\r\n") + 4]
        self.transport.clear()

    def send(self, message: Any, opcode: int = 0x1) -> None:
        payload = message if isinstance(message, bytes) else json.dumps(message).encode()
        self.protocol.dataReceived(client_frame(payload, opcode))

    def frames(self) -> list[tuple[int, bytes]]:
        out = server_frames(self.transport.value())
        self.transport.clear()
        return out

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


#: every protocol test runs on the fast paths, and on the public ones they fall back to when
#: a library's internals change (see telemetry_service.internals)
@pytest.fixture(params=[None, PUBLIC_ONLY], ids=["fast", "public"])
def paths(request: Any) -> FastPaths | None:
    result: FastPaths | None = request.param
    return result


@pytest.fixture
def parts(
    catalog: SchemaCatalog, paths: FastPaths | None
) -> Iterator[tuple[Hub, TelemetryServerFactory, list[Connected]]]:
    settings = Settings()
    hub = Hub(catalog, settings, Clock(), prepared_fanout)
    factory = TelemetryServerFactory(hub, settings, Clock(), fast_paths=paths)
    connections: list[Connected] = []
    yield hub, factory, connections
    for c in connections:  # cancels Autobahn's timers, which live on the global reactor
        c.lose()


def connect(parts: Any) -> Connected:
    _hub, factory, connections = parts
    c = Connected(factory)
    connections.append(c)
    return c


def test_handshake_on_any_path_opens_a_hub_connection(parts: Any) -> None:
    hub = parts[0]
    c = connect(parts)
    assert c.handshake.startswith(b"HTTP/1.1 101 ")
    assert hub.counts()["listener"] == 1


def test_text_message_reaches_the_hub_and_broadcast_leaves_as_one_frame(parts: Any) -> None:
    connector, dashboard = connect(parts), connect(parts)
    dashboard.send(ex.CLIENT_CONNECT_BARE)
    connector.send(ex.packet_sent())
    ((opcode, payload),) = dashboard.frames()  # seq 1 was presence, which it did not ask for
    assert opcode == 0x1
    assert json.loads(payload) == {**ex.packet_sent(), "seq": 2}
    assert connector.frames() == []


def test_binary_message_is_handled_like_text(parts: Any) -> None:
    connector, dashboard = connect(parts), connect(parts)
    connector.send(ex.packet_sent(), opcode=0x2)
    ((opcode, payload),) = dashboard.frames()
    assert opcode == 0x1  # the broadcast is always text
    assert json.loads(payload) == {**ex.packet_sent(), "seq": 2}


def test_refusal_comes_back_as_an_error_text_frame(parts: Any) -> None:
    c = connect(parts)
    c.send(b"{nope")
    ((opcode, payload),) = c.frames()
    assert opcode == 0x1
    assert json.loads(payload)["reason"] == "INVALID_JSON"


def test_going_away_sends_a_1001_close_frame(parts: Any) -> None:
    c = connect(parts)
    c.protocol.go_away()
    ((opcode, payload),) = c.frames()
    assert opcode == 0x8
    assert struct.unpack("!H", payload[:2]) == (1001,)
    # and no data frame may follow a close frame
    other = connect(parts)
    other.send(ex.packet_sent())
    assert c.frames() == []


def test_a_restart_sends_a_1012_close_frame(parts: Any) -> None:
    c = connect(parts)
    c.protocol.go_away(1012, "hub restarting")
    ((opcode, payload),) = c.frames()
    assert opcode == 0x8
    assert struct.unpack("!H", payload[:2]) == (1012,)
    assert payload[2:] == b"hub restarting"


def test_transport_backpressure_marks_the_peer_congested(parts: Any) -> None:
    hub = parts[0]
    c = connect(parts)
    assert c.transport.producer is c.protocol
    c.protocol.pauseProducing()
    c.send(b"{nope")
    assert c.frames() == []  # no error frame into a full buffer
    c.protocol.resumeProducing()
    c.send(b"{nope")
    assert len(c.frames()) == 1
    assert hub.stats.rejected == 2


def test_connection_lost_tells_the_hub_once(parts: Any) -> None:
    hub = parts[0]
    c = connect(parts)
    c.send(ex.node_status())
    assert hub.role_of(c.protocol._hub_peer) is Role.CONNECTOR
    c.lose()
    assert hub.counts()["connector"] == 0
    assert hub.live_connectors("connector-a") == 0


def test_a_bug_in_the_hub_costs_one_message_not_the_connection(
    parts: Any, monkeypatch: Any, logs: Any
) -> None:
    hub = parts[0]
    c = connect(parts)

    def broken(*args: Any) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(hub, "message_received", broken)
    c.send(ex.packet_sent())
    assert not c.transport.disconnecting
    assert logs.matching("Error while handling a message")


# -- the fast path for simple data frames, and what it leaves to Autobahn


def fresh(
    catalog: SchemaCatalog, paths: FastPaths | None = None, **settings: Any
) -> tuple[Hub, TelemetryServerFactory]:
    s = Settings(**settings)
    hub = Hub(catalog, s, Clock(), prepared_fanout)
    return hub, TelemetryServerFactory(hub, s, Clock(), fast_paths=paths)


@pytest.fixture
def made(catalog: SchemaCatalog, paths: FastPaths | None) -> Iterator[Any]:
    connections: list[Connected] = []

    def make(**settings: Any) -> tuple[Hub, Connected, Connected]:
        hub, factory = fresh(catalog, paths, **settings)
        sender, listener = Connected(factory), Connected(factory)
        connections.extend((sender, listener))
        return hub, sender, listener

    yield make
    for c in connections:
        c.lose()


def packets(n: int) -> list[dict[str, Any]]:
    return [ex.packet_sent("connector-a", i) for i in range(n)]


def received(listener: Connected) -> list[dict[str, Any]]:
    return telemetry_only(json.loads(p) for op, p in listener.frames() if op == 0x1)


def test_many_frames_in_one_read_are_all_delivered_in_order(made: Any) -> None:
    _, sender, listener = made()
    wire = b"".join(client_frame(json.dumps(m).encode()) for m in packets(50))
    sender.protocol.dataReceived(wire)
    assert received(listener) == packets(50)


def test_frames_split_at_every_byte_are_delivered_once(made: Any) -> None:
    _, sender, listener = made()
    wire = b"".join(client_frame(json.dumps(m).encode()) for m in packets(3))
    for i in range(len(wire)):
        sender.protocol.dataReceived(wire[i : i + 1])
    assert received(listener) == packets(3)


def test_a_ping_between_data_frames_is_answered_in_place(made: Any) -> None:
    _, sender, listener = made()
    one, two = (client_frame(json.dumps(m).encode()) for m in packets(2))
    sender.protocol.dataReceived(one + client_frame(b"are you there", opcode=0x9) + two)
    assert (0xA, b"are you there") in sender.frames()
    assert received(listener) == packets(2)


def test_a_fragmented_message_goes_through_autobahn(made: Any) -> None:
    _, sender, listener = made()
    payload = json.dumps(packets(1)[0]).encode()
    first = client_frame(payload[:20], opcode=0x1)
    first = bytes([first[0] & 0x7F]) + first[1:]  # FIN off
    rest = client_frame(payload[20:], opcode=0x0)
    sender.protocol.dataReceived(first + rest + client_frame(json.dumps(packets(2)[1]).encode()))
    assert received(listener) == packets(2)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535])
def test_length_encodings_at_their_boundaries(made: Any, size: int) -> None:
    _, sender, listener = made(max_message_bytes=70_000)
    message = ex.packet_sent(blob="")
    filler = size - len(json.dumps(message, separators=(",", ":")))
    if filler < 0:  # too small for a valid message: the hub must still answer it correctly
        sender.send(b"x" * size if size else b"")
        (error,) = sender.frames()
        assert json.loads(error[1])["type"] == "ERROR"
        return
    message["data"]["blob"] = "b" * filler
    payload = json.dumps(message, separators=(",", ":")).encode()
    assert len(payload) == size
    sender.protocol.dataReceived(client_frame(payload))
    assert received(listener) == [message]


def test_invalid_utf8_text_closes_with_1007(made: Any) -> None:
    _, sender, _listener = made()
    sender.protocol.dataReceived(client_frame(b'{"type":"\xff\xfe"}'))
    ((opcode, payload),) = sender.frames()
    assert opcode == 0x8
    assert struct.unpack("!H", payload[:2]) == (1007,)


def test_binary_frame_that_is_not_utf8_is_only_refused(made: Any) -> None:
    _, sender, _ = made()
    sender.protocol.dataReceived(client_frame(b"\xff\xfe", opcode=0x2))
    ((opcode, payload),) = sender.frames()
    assert opcode == 0x1
    assert json.loads(payload)["reason"] == "INVALID_UTF8"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda f: bytes([f[0] | 0x40]) + f[1:],  # RSV1 without a negotiated extension
        lambda f: f[:1] + bytes([f[1] & 0x7F]) + f[6:],  # an unmasked client frame
    ],
    ids=["rsv-bit", "unmasked"],
)
def test_protocol_errors_are_left_to_autobahn(made: Any, mangle: Any) -> None:
    hub, sender, _listener = made()
    sender.protocol.dataReceived(mangle(client_frame(json.dumps(ex.packet_sent()).encode())))
    frames = sender.frames()
    assert frames[0][0] == 0x8
    assert struct.unpack("!H", frames[0][1][:2]) == (1002,)
    assert hub.stats.accepted == 0


def test_oversize_frame_closes_with_1009(made: Any) -> None:
    hub, sender, _ = made(max_message_bytes=1000)
    sender.protocol.dataReceived(client_frame(json.dumps(ex.packet_sent(blob="x" * 2000)).encode()))
    ((opcode, payload),) = sender.frames()
    assert (opcode, struct.unpack("!H", payload[:2])) == (0x8, (1009,))
    assert hub.stats.accepted == 0


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
def test_own_framing_matches_autobahns(size: int) -> None:
    from autobahn.websocket.protocol import PreparedMessage

    from telemetry_service.transport.outbound import text_frame

    payload = b"p" * size
    assert text_frame(payload) == PreparedMessage(payload, False, False, True).payloadHybi


# -- the outbound queue


def test_paused_peer_queues_and_catches_up_in_order(made: Any) -> None:
    _, sender, listener = made()
    listener.protocol.pauseProducing()
    for m in packets(5):
        sender.send(m)
    assert listener.frames() == []
    assert listener.protocol._hub_peer.queued_bytes > 0
    listener.protocol.resumeProducing()
    assert received(listener) == packets(5)
    assert listener.protocol._hub_peer.queued_bytes == 0


def test_peer_over_its_queue_limit_is_closed_with_4008(made: Any, logs: Any) -> None:
    hub, sender, listener = made(max_queued_bytes=2000)
    listener.protocol.pauseProducing()
    for m in packets(20):
        sender.send(m)
    assert listener.protocol._hub_peer.queued_bytes == 0  # dropped, not kept
    frames = listener.frames()
    assert frames[-1][0] == 0x8
    assert struct.unpack("!H", frames[-1][1][:2]) == (4008,)
    assert logs.matching("with 4008")
    # it gets nothing more, and the sender is unaffected
    sender.send(ex.packet_sent("connector-a", 99))
    assert listener.frames() == []
    assert hub.stats.accepted == 21


# -- the write batching on real TCP transports


class FakeTCP:
    """The parts of a Twisted TCP transport that the direct write path touches."""

    def __init__(self, takes: int | None = None, lost: bool = False, tls: bool = False) -> None:
        self.takes, self.lost, self.TLS = takes, lost, tls
        self._tempDataBuffer: list[bytes] = []
        self.dataBuffer = b""
        self.connected = True
        self._writeDisconnected = False
        self.on_wire = b""

    def writeSomeData(self, data: bytes) -> Any:
        if self.lost:
            return ConnectionDone()
        n = len(data) if self.takes is None else min(self.takes, len(data))
        self.on_wire += data[:n]
        return n

    def write(self, data: bytes) -> None:
        self._tempDataBuffer.append(data)


def batched_peer(transport: FakeTCP) -> tuple[Any, Clock]:
    from telemetry_service.transport.outbound import WebSocketPeer, WriteBatcher

    class Protocol:
        state = 3  # WebSocketProtocol.STATE_OPEN
        write_paused = False
        peer = "tcp4:127.0.0.1:1"

    Protocol.transport = transport  # type: ignore[attr-defined]
    clock = Clock()
    peer = WebSocketPeer(Protocol(), 1 << 20, WriteBatcher(EndOfPass(clock)))  # type: ignore[arg-type]
    return peer, clock


@pytest.fixture
def tcp_like(monkeypatch: Any) -> None:
    # let FakeTCP pass the "plain TCP transport" check
    import telemetry_service.internals as module

    monkeypatch.setattr(module.tcp, "Connection", FakeTCP)


def test_a_pass_worth_of_frames_leaves_in_one_send(tcp_like: None) -> None:
    transport = FakeTCP()
    peer, clock = batched_peer(transport)
    for frame in (b"one", b"two", b"three"):
        peer.send_frame(frame)
    assert transport.on_wire == b""  # nothing until the pass ends
    clock.advance(0)
    assert (transport.on_wire, transport._tempDataBuffer) == (b"onetwothree", [])


def test_what_the_socket_does_not_take_is_left_to_twisted_in_order(tcp_like: None) -> None:
    transport = FakeTCP(takes=4)
    peer, clock = batched_peer(transport)
    peer.send_frame(b"frame-1")
    clock.advance(0)
    assert (transport.on_wire, transport._tempDataBuffer) == (b"fram", [b"e-1"])
    peer.send_frame(b"frame-2")  # something waits now: this goes behind it
    clock.advance(0)
    assert (transport.on_wire, transport._tempDataBuffer) == (b"fram", [b"e-1", b"frame-2"])


def test_a_lost_connection_or_tls_goes_through_twisted(tcp_like: None) -> None:
    lost = FakeTCP(lost=True)
    peer, clock = batched_peer(lost)
    peer.send_frame(b"frame")
    clock.advance(0)
    assert lost._tempDataBuffer == [b"frame"]
    tls = FakeTCP(tls=True)
    peer, clock = batched_peer(tls)
    peer.send_frame(b"frame")  # a TLS transport's frames leave at the end of the pass too...
    peer.send_frame(b"frame")
    assert tls._tempDataBuffer == []
    clock.advance(0)  # ...but through Twisted, which encrypts them
    assert (tls.on_wire, tls._tempDataBuffer) == (b"", [b"frameframe"])


def test_frames_pending_behind_a_close_frame_are_not_sent(tcp_like: None) -> None:
    transport = FakeTCP()
    peer, clock = batched_peer(transport)
    peer.send_frame(b"frame")
    peer._wire.state = 2  # closing: a close frame has gone out
    clock.advance(0)
    assert transport.on_wire == b""


def test_frames_of_this_pass_go_before_those_queued_by_backpressure(tcp_like: None) -> None:
    transport = FakeTCP()
    peer, clock = batched_peer(transport)
    peer.send_frame(b"first")  # pending for this pass
    peer._wire.write_paused = True  # the transport fills up in the same pass...
    peer.send_frame(b"second")  # ...so this one waits in the queue
    peer._wire.write_paused = False
    peer.flush()  # and the transport drains before the pass ends
    clock.advance(0)
    assert (transport.on_wire, transport._tempDataBuffer) == (b"first", [b"second"])


# -- every byte held for a connection counts: streams, this pass's frames, the global budget


class RecordingProtocol:
    """The parts of the protocol a WebSocketPeer calls, recording how it was closed."""

    state = 3  # WebSocketProtocol.STATE_OPEN
    write_paused = False
    peer = "tcp4:127.0.0.1:1"

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.closed: list[Any] = []

    def too_slow(self, limit: int, why: str | None = None) -> None:
        self.closed.append(("4008", why))
        self.state = 2

    def close_with(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))
        self.state = 2

    def send_failed(self, failure: Failure, doing: str) -> None:
        self.closed.append(("failed", failure.getErrorMessage()))
        self.state = 2


def budget_peers(count: int, limit: int = 1 << 20, total: int = 1 << 30) -> tuple[list[Any], Any]:
    from telemetry_service.transport.outbound import OutboundBudget, WebSocketPeer, WriteBatcher

    clock = Clock()
    batcher = WriteBatcher(EndOfPass(clock))
    budget = OutboundBudget(total)
    peers = [
        WebSocketPeer(RecordingProtocol(FakeTCP()), limit, batcher, budget)  # type: ignore[arg-type]
        for _ in range(count)
    ]
    return peers, (clock, budget)


def test_frames_of_one_pass_count_against_the_connection_budget(tcp_like: None) -> None:
    (peer,), (clock, _) = budget_peers(1, limit=1000)
    for _ in range(9):
        peer.send_frame(b"x" * 100)
    assert peer.queued_bytes == 900 and peer._wire.closed == []
    peer.send_frame(b"x" * 101)  # nothing was written yet: 1,001 bytes held
    assert peer._wire.closed[0][0] == "4008"
    assert peer.queued_bytes == 0
    clock.advance(0)
    assert peer._transport.on_wire == b""


class ListStream:
    """A stream over generated payloads; it holds nothing but its own bookkeeping."""

    def __init__(self, frames: Iterator[bytes], held: int = 64) -> None:
        self._frames = frames
        self.held_bytes = held

    def next_payload(self) -> bytes | None:
        return next(self._frames, None)


def test_a_stream_is_pulled_only_as_the_peer_reads_and_goes_before_later_frames(
    tcp_like: None,
) -> None:
    (peer,), _ = budget_peers(1)
    pulled: list[int] = []

    def frames() -> Iterator[bytes]:
        for n in range(100):
            pulled.append(n)
            yield f'{{"n":{n}}}'.encode()

    peer._wire.write_paused = True
    peer.send(b"before")
    peer.send_stream(ListStream(frames()))
    peer.send(b"after")
    assert pulled == [] and peer.replaying
    peer._wire.write_paused = False
    peer.flush()
    assert not peer.replaying and peer.queued_bytes == 0
    sent = [p for _, p in server_frames(b"".join(peer._transport._tempDataBuffer))]
    assert sent == [b"before", *(f'{{"n":{n}}}'.encode() for n in range(100)), b"after"]


def test_a_paused_stream_holds_only_what_it_has_pulled(tcp_like: None) -> None:
    (peer,), _ = budget_peers(1)
    pulled: list[int] = []

    class Transport(FakeTCP):
        def write(self, data: bytes) -> None:
            super().write(data)
            peer._wire.write_paused = len(self._tempDataBuffer) >= 3  # the buffer fills

    peer._transport = Transport()

    def frames() -> Iterator[bytes]:
        for n in range(1000):
            pulled.append(n)
            yield b"{}"

    peer.send_stream(ListStream(frames()))
    assert len(pulled) == 3  # three written, then the transport said stop
    assert peer.replaying


def test_a_stream_that_fails_closes_that_peer_only(tcp_like: None) -> None:
    peers, _ = budget_peers(2)

    def broken() -> Iterator[bytes]:
        yield b"{}"
        raise RuntimeError("history lost")

    peers[0].send_stream(ListStream(broken()))
    assert peers[0]._wire.closed == [("failed", "history lost")]
    assert peers[0].queued_bytes == 0
    peers[1].send_frame(b"still here")
    assert peers[1]._wire.closed == []


def test_what_a_stream_holds_counts_against_the_budget_as_it_changes(tcp_like: None) -> None:
    (peer,), (_, budget) = budget_peers(1, limit=5000)

    class Growing(ListStream):
        def next_payload(self) -> bytes | None:
            self.held_bytes += 1000  # e.g. a chunk read from the history
            return b"{}"

    peer._wire.write_paused = True
    peer.send_stream(Growing(iter(())))
    assert peer.queued_bytes == 64 and budget.total == 64
    peer._wire.write_paused = False
    peer._transport = type(
        "Slow", (FakeTCP,), {"write": lambda self, data: None}
    )()  # takes everything and never pauses: the stream grows until the budget says stop
    peer.flush()
    assert peer._wire.closed[0][0] == "4008"
    assert peer.queued_bytes == 0 and budget.total == 0


def test_the_global_budget_cuts_the_biggest_queues_first(tcp_like: None) -> None:
    peers, (_, budget) = budget_peers(3, limit=10_000, total=5_000)
    for peer in peers:
        peer._wire.write_paused = True
    peers[0].send_frame(b"a" * 1000)
    peers[1].send_frame(b"b" * 3000)
    peers[2].send_frame(b"c" * 500)
    assert budget.total == 4500 and all(p._wire.closed == [] for p in peers)
    peers[2].send_frame(b"c" * 1000)  # 5,500 in all: the biggest queue (3,000) goes
    assert peers[1]._wire.closed[0][0] == "4008"
    assert peers[0]._wire.closed == [] and peers[2]._wire.closed == []
    assert budget.total == 2500
    # what drains is given back
    peers[0]._wire.write_paused = False
    peers[0].flush()
    assert budget.total == 1500


def test_a_failure_in_the_write_batcher_closes_that_peer_and_no_other(
    tcp_like: None, monkeypatch: Any
) -> None:
    from telemetry_service.transport.outbound import WebSocketPeer

    peers, (clock, _) = budget_peers(3)
    write_pending = WebSocketPeer.write_pending

    def broken_for_the_first(self: WebSocketPeer) -> None:
        if self is peers[0]:
            raise MemoryError()
        write_pending(self)

    monkeypatch.setattr(WebSocketPeer, "write_pending", broken_for_the_first)
    for peer in peers:
        peer.send_frame(b"frame-1")
    clock.advance(0)
    assert peers[0]._wire.closed[0][0] == "failed"
    for peer in peers[1:]:
        assert peer._transport.on_wire == b"frame-1"
        peer.send_frame(b"frame-2")  # and they are marked again, next pass
    clock.advance(0)
    assert [p._transport.on_wire for p in peers[1:]] == [b"frame-1frame-2"] * 2


def test_a_failure_in_the_fanout_closes_that_peer_and_no_other(
    tcp_like: None, monkeypatch: Any
) -> None:
    from telemetry_service.transport.outbound import WebSocketPeer

    peers, (clock, _) = budget_peers(3)
    send_frame = WebSocketPeer.send_frame

    def broken_for_the_second(self: WebSocketPeer, frame: bytes) -> None:
        if self is peers[1]:
            raise MemoryError()
        send_frame(self, frame)

    monkeypatch.setattr(WebSocketPeer, "send_frame", broken_for_the_second)
    prepared_fanout(peers, b'{"n":1}')
    clock.advance(0)
    assert peers[1]._wire.closed[0][0] == "failed"
    assert [p._transport.on_wire for p in (peers[0], peers[2])] == [b'\x81\x07{"n":1}'] * 2


def test_connections_over_the_per_address_limit_are_refused_at_the_handshake(
    catalog: SchemaCatalog,
) -> None:
    hub, factory = fresh(catalog, max_connections_per_address=2)
    first, second, third = (Connected(factory) for _ in range(3))
    try:
        assert first.handshake.startswith(b"HTTP/1.1 101 ")
        assert second.handshake.startswith(b"HTTP/1.1 101 ")
        assert third.handshake.startswith(b"HTTP/1.1 429 ")
        assert hub.counts()["listener"] == 2
        assert factory.refused["per_address"] == 1
        second.lose()
        third.lose()  # refused, but counted until its TCP connection is gone
        fourth = Connected(factory)
        assert fourth.handshake.startswith(b"HTTP/1.1 101 ")
        fourth.lose()
    finally:
        first.lose()


def test_nothing_is_written_before_the_store_has_committed(tcp_like: None) -> None:
    """Within one epoch a seq names one message: a frame leaves only once it is stored."""
    from telemetry_service.transport.outbound import OutboundBudget, WebSocketPeer, WriteBatcher

    events: list[str] = []

    class Transport(FakeTCP):
        def writeSomeData(self, data: bytes) -> Any:
            events.append("write")
            return super().writeSomeData(data)

        def write(self, data: bytes) -> None:
            events.append("write")
            super().write(data)

    clock = Clock()
    end_of_pass = EndOfPass(clock)
    end_of_pass.commit_with(lambda: events.append("commit"))
    batcher = WriteBatcher(end_of_pass)
    peer = WebSocketPeer(
        RecordingProtocol(Transport()),  # type: ignore[arg-type]
        1 << 20,
        batcher,
        OutboundBudget(1 << 30),
    )
    peer.send_frame(b"one")  # this pass's frame: at the end of the pass
    clock.advance(0)
    assert events == ["commit", "write"]
    events.clear()
    peer._wire.write_paused = True
    peer.send_frame(b"two")  # queued behind a full buffer: when it drains
    peer._wire.write_paused = False
    peer.flush()
    assert events == ["commit", "write"]
    events.clear()
    peer.send_stream(ListStream(iter([b"{}"])))  # a snapshot, written at once
    assert events[0] == "commit"


# -- the library internals the fast paths use


def test_the_installed_libraries_have_what_the_fast_paths_use() -> None:
    from telemetry_service.internals import check

    assert check() == FastPaths(True, True, ())


def test_a_library_without_an_internal_gets_the_public_path_and_one_warning(
    catalog: SchemaCatalog, monkeypatch: Any, logs: Any
) -> None:
    from autobahn.websocket.protocol import WebSocketProtocol
    from twisted.internet import tcp

    monkeypatch.delattr(WebSocketProtocol, "_cancelAutoPingTimeoutCall")
    monkeypatch.setattr(tcp.Connection, "TLS", None)  # another shape
    _, factory = fresh(catalog)
    assert (factory.fast.frames, factory.fast.writes) == (False, False)
    (warning,) = logs.matching("public (slower) paths", "warn")
    assert "_cancelAutoPingTimeoutCall" in warning and "TLS" in warning
