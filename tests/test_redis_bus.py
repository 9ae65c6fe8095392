"""
The Redis bus in process, against a real C{redis-server}: what happens to a batch of
messages that was on its way when the connection broke (sent again only if Redis did not
apply it), and a Redis that loses its data while the hub is connected.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import pytest_twisted
from twisted.internet import reactor, task

from telemetry_service.bus.redis.address import RedisAddress
from telemetry_service.bus.redis.bus import RedisBus
from telemetry_service.bus.redis.client import REPLY_TIMEOUT
from telemetry_service.history.memory import StoredMessage
from telemetry_service.vocabulary import presence_event

from . import examples as ex
from .services import RedisServer


class DeliveredHere:
    """The hub's side of the bus: what it was given, in order."""

    def __init__(self) -> None:
        self.delivered: list[StoredMessage] = []
        self.restored: list[Any] = []
        self.presence_resets: list[list[str]] = []

    def deliver(self, stored: StoredMessage, message: dict[str, Any] | None = None) -> None:
        self.delivered.append(stored)

    def restore(self, statuses: Any, online: Any) -> None:
        self.restored.append((list(statuses), list(online)))

    def reset_presence(self, online: Any) -> None:
        self.presence_resets.append(sorted(online))

    def presence(self) -> list[tuple[str | None, bool]]:
        return [
            (m.node_id, b'"online":true' in m.payload)
            for m in self.delivered
            if m.type == "NODE_PRESENCE"
        ]

    def packets(self) -> list[StoredMessage]:
        return [m for m in self.delivered if m.type == "PACKET_SENT"]


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


async def until(predicate: Any, timeout: float = 10, what: str = "") -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"not within {timeout} s: {what}")


async def started(
    redis: RedisServer, hub: DeliveredHere, url: str | None = None, **options: Any
) -> RedisBus:
    bus = RedisBus(
        hub,
        RedisAddress.parse(url or redis.url),
        reactor,
        reactor,
        history_messages=1000,
        history_bytes=1 << 20,
        max_nodes=100,
        buffer_bytes=1 << 20,
        **options,
    )
    bus.start()
    await until(lambda: bus.degraded is None, what="connected")
    return bus


def submit_packets(bus: RedisBus, start: int, count: int) -> None:
    for n in range(start, start + count):
        bus.submit(ex.packet_sent("connector-a", n), "PACKET_SENT", "connector-a")


def packet_numbers(hub: DeliveredHere) -> list[str]:
    return [m.payload.decode().split('"packetId":"')[1][:8] for m in hub.packets()]


@pytest_twisted.ensureDeferred
async def test_a_batch_redis_applied_is_not_sent_again(redis: RedisServer) -> None:
    hub = DeliveredHere()
    bus = await started(redis, hub)
    try:
        # the answer to the batch never reaches the hub: the link breaks first
        bus._applied = lambda last_seq, batch: None  # type: ignore[method-assign]
        submit_packets(bus, 0, 10)
        await until(lambda: len(hub.packets()) == 10, what="delivered")
        assert bus.buffered_bytes > 0, "the batch is still counted as on its way"
        redis.command("CLIENT", "KILL", "TYPE", "normal")
        await until(lambda: bus.degraded is not None, what="noticed")
        await until(lambda: bus.degraded is None, what="reconnected")
        del bus._applied
        await task.deferLater(reactor, 0.3, lambda: None)
        assert redis.command("XLEN", "telemetry-hub:log") == "10"
        assert len(hub.packets()) == 10
        assert bus.buffered_bytes == 0
    finally:
        await bus.close()


@pytest_twisted.ensureDeferred
async def test_a_batch_redis_never_ran_is_sent_again_once(redis: RedisServer) -> None:
    hub = DeliveredHere()
    bus = await started(redis, hub)
    try:
        submit_packets(bus, 0, 5)
        await until(lambda: len(hub.packets()) == 5, what="first five")
        # Redis holds the next script call, and the connection breaks before it runs
        redis.command("CLIENT", "PAUSE", "5000", "WRITE")
        submit_packets(bus, 5, 10)
        await task.deferLater(reactor, 0.2, lambda: None)
        redis.command("CLIENT", "KILL", "TYPE", "normal")
        redis.command("CLIENT", "UNPAUSE")
        await until(lambda: len(hub.packets()) == 15, what="all fifteen")
        await task.deferLater(reactor, 0.3, lambda: None)
        assert redis.command("XLEN", "telemetry-hub:log") == "15"
        assert [m.seq for m in hub.delivered] == list(range(1, 16))
        assert packet_numbers(hub) == [ex.packet_id(n)[:8] for n in range(15)]
    finally:
        await bus.close()


@pytest_twisted.ensureDeferred
async def test_a_frozen_redis_is_left_and_nothing_is_lost_or_doubled(redis: RedisServer) -> None:
    """
    Redis stops answering with its connections open (SIGSTOP): the bus gives up on them
    after REPLY_TIMEOUT, buffers, keeps trying, and when Redis wakes (and reads the old
    connections' bytes too) every message is in the stream once, in order.
    """
    hub = DeliveredHere()
    bus = await started(redis, hub)
    try:
        submit_packets(bus, 0, 5)
        await until(lambda: len(hub.packets()) == 5, what="first five")
        redis.freeze()
        frozen_at = reactor.seconds()
        submit_packets(bus, 5, 10)  # written to a socket Redis does not read
        await until(lambda: bus.degraded is not None, timeout=REPLY_TIMEOUT + 3, what="noticed")
        noticed = reactor.seconds() - frozen_at
        assert noticed < REPLY_TIMEOUT + 2, noticed
        submit_packets(bus, 15, 5)  # accepted while degraded: buffered
        assert bus.buffered_bytes > 0
        redis.thaw()
        await until(lambda: bus.degraded is None, timeout=10, what="back")
        await until(lambda: len(hub.packets()) >= 20, what="all twenty")
        await task.deferLater(reactor, 0.5, lambda: None)
        assert redis.command("XLEN", "telemetry-hub:log") == "20"
        assert [m.seq for m in hub.delivered] == list(range(1, 21))
        assert packet_numbers(hub) == [ex.packet_id(n)[:8] for n in range(20)]
        assert bus.buffered_bytes == 0
    finally:
        redis.thaw()
        await bus.close()


@pytest_twisted.ensureDeferred
async def test_a_batch_number_is_applied_once(redis: RedisServer) -> None:
    """The script's side of sending a batch again: a number already applied is a no-op."""
    hub = DeliveredHere()
    bus = await started(redis, hub)
    try:
        # an operation as submit() makes it: the message without its closing brace
        prefix = orjson.dumps(ex.packet_sent("connector-a", 0))[:-1] + b',"seq":'
        op = (b"m", b"PACKET_SENT\0connector-a", prefix, b"")
        for batch in (b"7", b"7", b"3", b"8"):
            await bus._script("submit", batch, b"100", *op)
        assert redis.command("XLEN", "telemetry-hub:log") == "2"
        key = f"telemetry-hub:batch:{bus.store.epoch}:{bus.hub_id}"
        assert redis.command("GET", key) == "8"
        assert 0 < int(redis.command("TTL", key)) <= 86400
    finally:
        await bus.close()


@pytest_twisted.ensureDeferred
async def test_redis_flushed_while_connected_starts_a_new_epoch(redis: RedisServer) -> None:
    hub = DeliveredHere()
    bus = await started(redis, hub)
    try:
        submit_packets(bus, 0, 3)
        await until(lambda: len(hub.packets()) == 3, what="first three")
        old_epoch = bus.store.epoch
        redis.command("FLUSHALL")
        submit_packets(bus, 3, 2)
        await until(lambda: len(hub.packets()) == 5, what="after the flush")
        assert bus.store.epoch != old_epoch
        assert bus.epoch_changes == 1
        # the new history starts at 1, and holds only what came after
        assert [m.seq for m in hub.packets()[3:]] == [1, 2]
        assert bus.store.after(0, 10) is not None
        assert [m.seq for m in bus.store.after(0, 10) or []] == [1, 2]
    finally:
        await bus.close()


@pytest_twisted.ensureDeferred
async def test_the_address_hides_its_password(redis: RedisServer) -> None:
    address = RedisAddress.parse("redis://:s3cret@127.0.0.1:6390/2")
    assert address.password == "s3cret" and address.db == 2 and address.port == 6390
    assert "s3cret" not in str(address)


@pytest_twisted.ensureDeferred
async def test_redis_that_lost_its_last_writes_gets_a_new_epoch(redis: RedisServer) -> None:
    """
    Redis restarted from a disk a second behind (appendfsync everysec): its epoch is the
    same, its seq is behind what the hub delivered. Going on would give seqs that
    dashboards saw to other messages.
    """
    hub = DeliveredHere()
    bus = await started(redis, hub)
    try:
        joined(bus, "connector-a")
        submit_packets(bus, 0, 5)
        await until(lambda: len(hub.packets()) == 5, what="first five")
        old_epoch = bus.store.epoch
        # as the disk had it a moment ago: the last three writes never reached it
        redis.command("XDEL", "telemetry-hub:log", "4-0", "5-0", "6-0")
        redis.command("SET", "telemetry-hub:seq", "3")
        redis.command("CLIENT", "KILL", "TYPE", "normal")
        await until(lambda: bus.epoch_changes == 1, what="a new epoch")
        assert bus.store.epoch != old_epoch
        assert redis.command("GET", "telemetry-hub:epoch") == bus.store.epoch
        # presence is not history: the node this hub has stays online, for later hubs too
        assert redis.command("SISMEMBER", "telemetry-hub:online", "connector-a") == "1"
        assert hub.presence_resets == [["connector-a"]]
        submit_packets(bus, 5, 1)
        await until(lambda: len(hub.packets()) == 6, what="the next message")
        assert hub.packets()[-1].seq == 1
    finally:
        await bus.close()


@pytest.mark.parametrize(
    "command",
    [
        (b"PING",),
        (b"EVALSHA", b"0" * 40, b"0", b"telemetry-hub:", b"", b"\r\n\x00binary", b"x" * 70000),
        (b"XREAD", "COUNT", 1000, b"STREAMS", b"k", b"0-0"),
    ],
)
def test_the_lean_protocol_writes_what_txredisapi_writes(command: tuple[Any, ...]) -> None:
    import txredisapi

    from telemetry_service.bus.redis.client import _Protocol

    assert _Protocol()._build_command(*command) == txredisapi.BaseRedisProtocol()._build_command(
        *command
    )


def test_the_lean_protocol_hands_replies_over_unchanged() -> None:
    """A stream read comes back as Redis sent it: bytes stay bytes, numbers stay text."""
    from telemetry_service.bus.redis.client import _Protocol

    protocol = _Protocol()
    replies: list[Any] = []
    protocol.replyReceived = replies.append
    protocol.dataReceived(
        b"*1\r\n*2\r\n$17\r\ntelemetry-hub:log\r\n*1\r\n*2\r\n$3\r\n7-0\r\n"
        b"*2\r\n$11\r\nPACKET_SENT\r\n$2\r\n42\r\n:5\r\n"
    )
    assert replies == [[[b"telemetry-hub:log", [[b"7-0", [b"PACKET_SENT", b"42"]]]]], 5]


def joined(bus: RedisBus, node: str) -> None:
    bus.node_joined(node, {"timestamp": "2026-12-02T00:00:00.000Z"})


@pytest.fixture
def redis_with_password() -> Iterator[RedisServer]:
    server = RedisServer(password="s3cret")
    yield server
    server.stop()


@pytest_twisted.ensureDeferred
async def test_a_frozen_redis_with_a_password_is_reconnected(
    redis_with_password: RedisServer,
) -> None:
    """
    AUTH and SELECT on a new connection to a Redis that does not answer time out; the bus
    goes on trying (txredisapi alone would stop for good) and is back once Redis is.
    """
    redis = redis_with_password
    hub = DeliveredHere()
    url = f"redis://:s3cret@127.0.0.1:{redis.port}/3"
    bus = await started(redis, hub, url)
    try:
        redis.freeze()
        await until(lambda: bus.degraded is not None, timeout=REPLY_TIMEOUT + 3, what="noticed")
        # long enough for reconnections (AUTH unanswered) to time out too
        await task.deferLater(reactor, REPLY_TIMEOUT + 2, lambda: None)
        redis.thaw()
        await until(lambda: bus.degraded is None, timeout=10, what="back")
        submit_packets(bus, 0, 3)
        await until(lambda: len(hub.packets()) == 3, what="delivered after the freeze")
        assert redis.command("-n", "3", "XLEN", "telemetry-hub:log") == "3"
    finally:
        redis.thaw()
        await bus.close()


@pytest_twisted.ensureDeferred
async def test_a_hub_taken_for_dead_does_not_send_applied_batches_again(
    redis: RedisServer,
) -> None:
    """
    Another hub forgets one that stopped renewing its entry; when that one comes back, the
    batches Redis applied for it (the answers lost with its connection) are not sent again.
    """
    hub_a, hub_b = DeliveredHere(), DeliveredHere()
    a = await started(redis, hub_a, presence_ttl=1.0, heartbeat=0.2)
    b = await started(redis, hub_b, presence_ttl=1.0, heartbeat=0.2)
    try:
        a._applied = lambda last_seq, batch: None  # type: ignore[method-assign]
        submit_packets(a, 0, 10)
        await until(lambda: len(hub_a.packets()) == 10, what="delivered")
        a._heartbeat.stop()  # silent, as a hub whose reactor is blocked
        await until(
            lambda: redis.command("ZSCORE", "telemetry-hub:hubs", a.hub_id) == "",
            what="b forgets a",
        )
        redis.command("CLIENT", "KILL", "TYPE", "normal")
        await until(lambda: a.degraded is not None, what="noticed")
        await until(lambda: a.degraded is None, what="reconnected")
        del a._applied
        await task.deferLater(reactor, 0.5, lambda: None)
        assert redis.command("XLEN", "telemetry-hub:log") == "10"
        assert len(hub_b.packets()) == 10
    finally:
        await a.close()
        await b.close()


@pytest_twisted.ensureDeferred
async def test_redis_that_forgot_the_scripts_is_given_them_again(redis: RedisServer) -> None:
    hub = DeliveredHere()
    bus = await started(redis, hub)
    try:
        submit_packets(bus, 0, 5)
        await until(lambda: len(hub.packets()) == 5, what="first five")
        redis.command("SCRIPT", "FLUSH")
        submit_packets(bus, 5, 5)
        await until(lambda: len(hub.packets()) == 10, what="all ten")
        assert bus.dropped == 0
        assert packet_numbers(hub) == [ex.packet_id(n)[:8] for n in range(10)]
        assert redis.command("XLEN", "telemetry-hub:log") == "10"
    finally:
        await bus.close()


@pytest_twisted.ensureDeferred
async def test_a_stalled_redis_takes_no_node_offline(redis: RedisServer) -> None:
    """
    Redis stopped for longer than a hub may be silent, then goes on: every hub's entry has
    expired by its clock, but no hub died. None is forgotten, no node goes offline.

    (Set up as Redis has it after such a stall, rather than by freezing it: which hub's
    queued heartbeat Redis runs first when it wakes is chance, and only a heartbeat of
    another hub than the one with the node would show the fault.)
    """
    hub_a, hub_b = DeliveredHere(), DeliveredHere()
    a = await started(redis, hub_a, presence_ttl=1.0, heartbeat=0.2)
    b = await started(redis, hub_b, presence_ttl=1.0, heartbeat=0.2)
    try:
        joined(a, "connector-a")
        await until(lambda: hub_b.presence() == [("connector-a", True)], what="online")
        a._heartbeat.stop()
        b._heartbeat.stop()
        seconds = int(redis.command("TIME").split()[0])
        ten_seconds_ago = str((seconds - 10) * 1000)
        # the last heartbeat Redis ran, and every hub's deadline, ten seconds ago
        redis.command("SET", "telemetry-hub:beat", ten_seconds_ago)
        for bus in (a, b):
            redis.command("ZADD", "telemetry-hub:hubs", ten_seconds_ago, bus.hub_id)
        b._heartbeat.start(0.2)
        await task.deferLater(reactor, 0.5, lambda: None)
        assert hub_b.presence() == [("connector-a", True)]
        assert redis.command("SISMEMBER", "telemetry-hub:online", "connector-a") == "1"
        # a hub silent while the others go on is still taken for dead
        await until(
            lambda: hub_b.presence()[-1:] == [("connector-a", False)],
            what="a's node offline once b has beaten for longer than the TTL",
        )
    finally:
        await a.close()
        await b.close()


class FailsOnce(DeliveredHere):
    def deliver(self, stored: StoredMessage, message: dict[str, Any] | None = None) -> None:
        if stored.seq == 3:
            raise RuntimeError("a bug in the hub")
        super().deliver(stored, message)


@pytest_twisted.ensureDeferred
async def test_a_message_the_hub_fails_to_deliver_does_not_stop_the_reading(
    redis: RedisServer,
) -> None:
    hub = FailsOnce()
    bus = await started(redis, hub)
    try:
        submit_packets(bus, 0, 5)
        await until(lambda: len(hub.packets()) == 4, what="the other four")
        submit_packets(bus, 5, 5)
        await until(lambda: len(hub.packets()) == 9, what="and what came after")
        assert bus.degraded is None
    finally:
        await bus.close()


@pytest_twisted.ensureDeferred
async def test_a_new_epoch_takes_presence_from_redis(redis: RedisServer) -> None:
    """
    After Redis lost its data, what this hub believed online (from presence events of the
    old history) is replaced by what Redis says, then by the new history's events.
    """
    hub = DeliveredHere()
    bus = await started(redis, hub)
    try:
        joined(bus, "connector-a")
        await until(lambda: hub.presence() == [("connector-a", True)], what="online")
        redis.command("FLUSHALL")
        await until(lambda: bus.epoch_changes == 1, timeout=5, what="a new epoch")
        assert hub.presence_resets == [[]]
        # this hub's own connector is said again in the new history
        await until(lambda: hub.presence()[-1:] == [("connector-a", True)], what="again")
        assert redis.command("SISMEMBER", "telemetry-hub:online", "connector-a") == "1"
    finally:
        await bus.close()


@pytest_twisted.ensureDeferred
async def test_a_new_history_read_before_the_hub_noticed_is_not_taken_for_the_old(
    redis: RedisServer,
) -> None:
    """
    Redis loses its data while hub A is connected and idle; hub B starts and writes a new
    history past A's last seq before A's next script call would tell it. A's waiting read
    gets those entries: it must see they are of another epoch, not deliver them as the
    old history's seqs 6..., and deliver the new history once, from its first entry.
    """
    hub_a, hub_b = DeliveredHere(), DeliveredHere()
    a = await started(redis, hub_a)
    b = None
    try:
        submit_packets(a, 0, 5)
        await until(lambda: len(hub_a.packets()) == 5, what="a's first five")
        a._heartbeat.stop()  # idle: nothing of A's own would notice before its read does
        redis.command("FLUSHALL")
        b = await started(redis, hub_b)
        submit_packets(b, 100, 10)
        await until(lambda: len(hub_b.packets()) == 10, what="b's ten")
        await until(lambda: a.epoch_changes == 1, what="a notices from the stream")
        await until(lambda: len(hub_a.packets()) == 15, what="the new history, once")
        await task.deferLater(reactor, 0.3, lambda: None)
        new = hub_a.packets()[5:]
        assert [m.seq for m in new] == list(range(1, 11))
        assert packet_numbers(hub_a)[5:] == [ex.packet_id(n)[:8] for n in range(100, 110)]
        assert a.store.epoch == b.store.epoch
    finally:
        await a.close()
        if b is not None:
            await b.close()


#: the SHA-1 by which Redis knows each script: the text sent to Redis is exactly what it was
#: when the scripts were Python strings
SCRIPT_SHA1 = {
    "goodbye": "7ba52c79a5f5cf33c603782ea1b0080d8a785cad",
    "heartbeat": "129676a56e91391e4cf1bc185b49f3f6944776d2",
    "init": "19574e5c4a12c50bff7c2982ceff4db0a0df6cec",
    "load": "7630e0a4a40f1e73eaf64d0d2d7fd9e5d19b2d50",
    "submit": "bf0bae6f7ec5ef016c88d9f5f1801ad59bd7705a",
    "sync": "46eb1f832c4c969996d5919f9ff3951597847123",
}


def test_the_scripts_read_from_their_files_are_the_text_redis_knows() -> None:
    from telemetry_service.bus.redis.scripts import SCRIPTS

    assert {
        name: hashlib.sha1(source.encode()).hexdigest() for name, source in SCRIPTS.items()
    } == SCRIPT_SHA1


class StoppedClock:
    """The reactor's timers, and a time that stays where it is set."""

    def __init__(self, seconds: float) -> None:
        self.now = seconds

    def seconds(self) -> float:
        return self.now

    def callLater(self, delay: float, f: Any, *args: Any, **kwargs: Any) -> Any:
        return reactor.callLater(delay, f, *args, **kwargs)

    def getDelayedCalls(self) -> Any:
        return reactor.getDelayedCalls()


@pytest_twisted.ensureDeferred
async def test_the_scripts_write_node_presence_as_the_hub_builds_it(redis: RedisServer) -> None:
    """
    The scripts build NODE_PRESENCE by concatenation; whichever writes it (the submit of a
    join or a leave, a sync after connecting, a goodbye), its bytes are the hub's own event
    with its seq, for a nodeId that JSON escapes too.
    """
    first, second = 'connector "\u00e4"\\a', "connector-b"
    at = 1_796_000_000.25  # the time of the bus that joins and leaves
    watcher = DeliveredHere()
    watching = await started(redis, watcher)
    try:
        bus = RedisBus(
            DeliveredHere(),
            RedisAddress.parse(redis.url),
            StoppedClock(at),  # type: ignore[arg-type]
            reactor,
            history_messages=1000,
            history_bytes=1 << 20,
            max_nodes=100,
            buffer_bytes=1 << 20,
        )
        # before the bus is connected: the sync says it, at the bus's time
        bus.node_joined(first, presence_event(first, True, at - 60))
        bus.start()
        try:
            await until(lambda: bus.degraded is None, what="connected")
            bus.node_joined(second, presence_event(second, True, at + 1.5))
            bus.node_left(second, presence_event(second, False, at + 2.75))
            await until(lambda: len(watcher.presence()) == 3, what="sync, join, leave")
        finally:
            await bus.close()  # the goodbye takes the first node offline, at the bus's time
        await until(lambda: len(watcher.presence()) == 4, what="goodbye")
        expected = [(first, True, at), (second, True, at + 1.5), (second, False, at + 2.75)]
        expected.append((first, False, at))
        written = [m for m in watcher.delivered if m.type == "NODE_PRESENCE"]
        assert [m.payload for m in written] == [
            orjson.dumps({**presence_event(node, online, seconds), "seq": m.seq})
            for (node, online, seconds), m in zip(expected, written, strict=True)
        ]
        assert [m.node_id for m in written] == [first, second, second, first]
    finally:
        await watching.close()


def test_the_lean_command_builder_is_in_use() -> None:
    from telemetry_service.bus.redis.client import LEAN_COMMANDS_MISSING, _Protocol
    from telemetry_service.internals import _build_redis_command

    assert LEAN_COMMANDS_MISSING == ()
    assert _Protocol._build_command is _build_redis_command


def test_a_txredisapi_without_what_the_lean_builder_uses_keeps_its_own(monkeypatch: Any) -> None:
    import txredisapi

    from telemetry_service.internals import lean_redis_commands

    class BuildsElsewhere(txredisapi.RedisProtocol):  # type: ignore[misc]
        def execute_command(self, *args: Any, **kwargs: Any) -> Any:
            self.transport.write(b"built another way")

    assert lean_redis_commands(BuildsElsewhere) == (
        "txredisapi execute_command() building through _build_command()",
    )
    assert BuildsElsewhere._build_command is txredisapi.BaseRedisProtocol._build_command

    monkeypatch.delattr(txredisapi.BaseRedisProtocol, "_encode_value")

    class Older(txredisapi.RedisProtocol):  # type: ignore[misc]
        pass

    assert lean_redis_commands(Older) == ("txredisapi Older._encode_value()",)
    assert Older._build_command is txredisapi.BaseRedisProtocol._build_command
