"""
Several real hub processes on one real C{redis-server}, as one hub: one order and one
C{seq} space everywhere, resumes across hubs, shared presence (and its bound when a hub is
killed), Redis going away and coming back (with and without its data), all hubs restarted.
The proxy and the rolling restart are in L{tests.test_rolling_restart}.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from . import examples as ex
from .process import HubProcess
from .services import RedisServer

#: the documented bound for a killed hub's nodes to go offline: the presence TTL (5 s)
#: plus one heartbeat of a surviving hub (1 s)
OFFLINE_BOUND_SECONDS = 6.0
#: what the test allows on top of it, on a loaded 2-core machine
SLACK_SECONDS = 1.5


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


class Cluster:
    """
    Hub processes on one Redis; stopped at the end of the test.
    """

    def __init__(self, redis: RedisServer) -> None:
        self.redis = redis
        self.hubs: list[HubProcess] = []

    def start(self, *args: str) -> HubProcess:
        hub = HubProcess("--redis", self.redis.url, *args)
        self.hubs.append(hub)
        hub.ws_port = hub.wait_listening()  # type: ignore[attr-defined]
        hub.http = hub.wait_http()  # type: ignore[attr-defined]
        hub.wait_for(lambda r: "Redis bus: connected" in r.get("message", ""))
        return hub

    def stop(self) -> None:
        for hub in self.hubs:
            hub.stop()


@pytest.fixture
def cluster(redis: RedisServer) -> Iterator[Cluster]:
    running = Cluster(redis)
    yield running
    running.stop()


def url(hub: HubProcess) -> str:
    return f"ws://127.0.0.1:{hub.ws_port}/"  # type: ignore[attr-defined]


def health(hub: HubProcess) -> dict[str, Any]:
    address = f"http://127.0.0.1:{hub.http}/health"  # type: ignore[attr-defined]
    with urllib.request.urlopen(address, timeout=5) as answer:
        result: dict[str, Any] = json.loads(answer.read())
        return result


def wait_until(predicate: Any, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, f"not within {timeout} s: {what}"
        time.sleep(0.05)
    return time.monotonic() - started


class Dashboard:
    """
    A dashboard as the hub's page is one: asks for presence and to resume, keeps its
    position, and reads everything after the RESUME frame.
    """

    def __init__(self, address: str, hub_events: bool = True) -> None:
        self.address = address
        self.hub_events = hub_events
        self.resumes: list[dict[str, Any]] = []
        self.live: list[dict[str, Any]] = []  # after RESUME, snapshot statuses left out
        self.snapshot: list[dict[str, Any]] = []
        self.connection: Any = None

    async def connect(self, resume: dict[str, Any] | None = None) -> dict[str, Any]:
        self.connection = await websockets.connect(self.address, max_size=None)
        hello: dict[str, Any] = {"type": "CLIENT_CONNECT", "resume": resume or {}}
        if self.hub_events:
            hello["hubEvents"] = ["NODE_PRESENCE"]
        await self.connection.send(json.dumps(hello))
        while True:
            frame = json.loads(await asyncio.wait_for(self.connection.recv(), 10))
            if frame.get("type") == "RESUME":
                self.resumes.append(frame)
                return frame

    async def read_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                frame = json.loads(await asyncio.wait_for(self.connection.recv(), left))
            except TimeoutError:
                return
            self.take(frame)

    async def read_until(self, predicate: Any, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            left = deadline - time.monotonic()
            assert left > 0, f"dashboard did not get there; last: {self.live[-3:]}"
            self.take(json.loads(await asyncio.wait_for(self.connection.recv(), left)))

    def take(self, frame: dict[str, Any]) -> None:
        if frame.get("type") == "NODE_STATUS" and "online" in frame:
            self.snapshot.append(frame)
        else:
            self.live.append(frame)

    @property
    def position(self) -> dict[str, Any]:
        seq = self.live[-1]["seq"] if self.live else self.resumes[-1]["seq"]
        return {"epoch": self.resumes[-1]["epoch"], "seq": seq}

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.live if m.get("type") == kind]

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()


async def send_packets(address: str, node: str, start: int, count: int) -> None:
    async with websockets.connect(address) as connector:
        await connector.send(json.dumps(ex.node_status(node)))
        for n in range(start, start + count):
            await connector.send(json.dumps(ex.packet_sent(node, n)))


def contiguous(messages: list[dict[str, Any]]) -> bool:
    seqs = [m["seq"] for m in messages]
    return seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_dashboards_on_two_hubs_get_the_same_messages_in_the_same_order(
    cluster: Cluster,
) -> None:
    a, b = cluster.start(), cluster.start()

    async def scenario() -> tuple[Dashboard, Dashboard]:
        on_a, on_b = Dashboard(url(a)), Dashboard(url(b))
        await on_a.connect()
        await on_b.connect()
        # connectors on both hubs at once, in rounds, so that their messages interleave
        async with (
            websockets.connect(url(a)) as connector_a,
            websockets.connect(url(b)) as connector_b,
        ):
            await connector_a.send(json.dumps(ex.node_status("connector-a")))
            await connector_b.send(json.dumps(ex.node_status("connector-b")))
            for start in range(0, 300, 20):
                for n in range(start, start + 20):
                    await connector_a.send(json.dumps(ex.packet_sent("connector-a", n)))
                    await connector_b.send(json.dumps(ex.packet_sent("connector-b", 1000 + n)))
                await asyncio.sleep(0.02)

        def done(d: Dashboard) -> bool:
            return len(d.of_type("PACKET_SENT")) == 600 and len(d.of_type("NODE_PRESENCE")) == 4

        await on_a.read_until(done)
        await on_b.read_until(done)
        await on_a.read_for(0.3)
        await on_b.read_for(0.3)
        await on_a.close()
        await on_b.close()
        return on_a, on_b

    on_a, on_b = asyncio.run(scenario())
    assert on_a.live == on_b.live  # the same frames, byte for byte once parsed, same order
    assert contiguous(on_a.live), "one seq space, no gaps for a dashboard that wants all"
    by_node = {
        node: [m["data"]["packetId"] for m in on_a.of_type("PACKET_SENT") if m["nodeId"] == node]
        for node in ("connector-a", "connector-b")
    }
    assert by_node["connector-a"] == [ex.packet_id(n) for n in range(0, 300)]
    assert by_node["connector-b"] == [ex.packet_id(n) for n in range(1000, 1300)]
    # both orders interleave: neither hub's messages all came first
    kinds = [m["nodeId"] for m in on_a.of_type("PACKET_SENT")]
    assert kinds.index("connector-b") < len(kinds) - kinds[::-1].index("connector-a") - 1
    assert health(a)["seq"] == health(b)["seq"] == on_a.live[-1]["seq"]
    assert health(a)["epoch"] == health(b)["epoch"]


def test_a_dashboard_resumes_on_b_after_a_dies(cluster: Cluster) -> None:
    a, b = cluster.start(), cluster.start()

    async def scenario() -> tuple[Dashboard, dict[str, Any], Dashboard]:
        first = Dashboard(url(a))
        await first.connect()
        await send_packets(url(b), "connector-b", 0, 100)
        await first.read_until(lambda d: len(d.of_type("PACKET_SENT")) == 100)
        position = first.position
        a.process.send_signal(signal.SIGKILL)
        await send_packets(url(b), "connector-b", 100, 50)
        moved = Dashboard(url(b))
        resumed = await moved.connect(position)
        await moved.read_until(lambda d: len(d.of_type("PACKET_SENT")) == 50)
        await moved.read_for(0.3)
        await moved.close()
        return first, resumed, moved

    first, resumed, moved = asyncio.run(scenario())
    assert resumed["status"] == "resumed", resumed
    assert resumed["epoch"] == first.resumes[0]["epoch"]
    # exactly what it missed: the 50 packets (and the presence of their connection), no more
    assert moved.live[0]["seq"] == first.position["seq"] + 1
    assert contiguous(moved.live)
    assert [m["data"]["packetId"] for m in moved.of_type("PACKET_SENT")] == [
        ex.packet_id(n) for n in range(100, 150)
    ]
    assert not moved.snapshot


def test_a_resume_from_a_seq_the_hub_has_not_read_yet_waits_for_it(cluster: Cluster) -> None:
    """
    A dashboard that saw seq N on hub A can come to hub B before B has read N from Redis;
    B answers once it has, instead of calling the seq unknown.
    """
    a = cluster.start()
    b = cluster.start()

    async def scenario() -> list[dict[str, Any]]:
        first = Dashboard(url(a))
        await first.connect()
        await send_packets(url(a), "connector-a", 0, 10)
        await first.read_until(lambda d: len(d.of_type("PACKET_SENT")) == 10)
        epoch, seq = first.position["epoch"], first.position["seq"]
        answers = []
        for ahead in (5, 60):  # 5 arrive within the wait, 60 never do
            late = Dashboard(url(b))
            waiting = asyncio.ensure_future(late.connect({"epoch": epoch, "seq": seq + ahead}))
            await asyncio.sleep(0.3)
            if ahead == 5:
                assert not waiting.done(), "answered before it had read that seq"
                await send_packets(url(a), "connector-a", 10, 5)
            answers.append(await waiting)
            await late.close()
        await first.close()
        return answers

    caught_up, never = asyncio.run(scenario())
    assert caught_up["status"] == "resumed", caught_up
    assert never["status"] == "not_recovered"
    assert "ahead" in never["reason"]


def test_a_killed_hub_s_nodes_go_offline_within_the_bound(cluster: Cluster) -> None:
    a, b = cluster.start(), cluster.start()

    async def scenario() -> tuple[float, Dashboard]:
        watcher = Dashboard(url(b))
        await watcher.connect()
        only_on_a = await websockets.connect(url(a))
        await only_on_a.send(json.dumps(ex.node_status("connector-a")))
        on_both = [await websockets.connect(url(hub)) for hub in (a, b)]
        for connection in on_both:
            await connection.send(json.dumps(ex.node_status("connector-ab")))
        await watcher.read_until(lambda d: len(d.of_type("NODE_PRESENCE")) == 2)
        killed = time.monotonic()
        a.process.send_signal(signal.SIGKILL)
        await watcher.read_until(lambda d: len(d.of_type("NODE_PRESENCE")) == 3, timeout=15)
        offline_after = time.monotonic() - killed
        await watcher.read_for(1.0)
        for connection in [only_on_a, *on_both]:
            await connection.close()
        await watcher.close()
        return offline_after, watcher

    offline_after, watcher = asyncio.run(scenario())
    presence = watcher.of_type("NODE_PRESENCE")
    assert [(p["nodeId"], p["online"]) for p in presence] == [
        ("connector-a", True),
        ("connector-ab", True),
        ("connector-a", False),  # and connector-ab stays online: hub B still has it
    ]
    assert offline_after < OFFLINE_BOUND_SECONDS + SLACK_SECONDS, offline_after
    assert health(b)["status"] == "ok"


def test_redis_killed_and_restarted_without_its_data(cluster: Cluster) -> None:
    a, b = cluster.start(), cluster.start()

    async def scenario() -> tuple[Dashboard, dict[str, Any], dict[str, Any]]:
        watcher = Dashboard(url(b))
        await watcher.connect()
        connector = await websockets.connect(url(a))
        await connector.send(json.dumps(ex.node_status("connector-a")))
        for n in range(20):
            await connector.send(json.dumps(ex.packet_sent("connector-a", n)))
        await watcher.read_until(lambda d: len(d.of_type("PACKET_SENT")) == 20)
        before = watcher.position
        cluster.redis.kill()
        await asyncio.to_thread(
            wait_until,
            lambda: health(a)["status"] == health(b)["status"] == "degraded",
            10,
            "both hubs say they are degraded",
        )
        # accepted during the outage: buffered, sent when Redis is back
        for n in range(20, 50):
            await connector.send(json.dumps(ex.packet_sent("connector-a", n)))
        await asyncio.sleep(0.5)
        during = health(a)
        cluster.redis.start()
        await watcher.read_until(lambda d: len(d.of_type("PACKET_SENT")) == 50, timeout=20)
        await connector.send(json.dumps(ex.packet_sent("connector-a", 50)))
        await watcher.read_until(lambda d: len(d.of_type("PACKET_SENT")) == 51)
        late = Dashboard(url(a))
        answer = await late.connect(before)
        await late.close()
        await connector.close()
        await watcher.close()
        return watcher, during, answer

    watcher, during, answer = asyncio.run(scenario())
    # the sockets stayed open through the outage, and nothing was lost or doubled
    assert [m["data"]["packetId"] for m in watcher.of_type("PACKET_SENT")] == [
        ex.packet_id(n) for n in range(51)
    ]
    assert during["status"] == "degraded"
    assert during["bus"]["bufferedBytes"] > 0 and during["bus"]["dropped"] == 0
    # Redis came back empty: a new history, from seq 1, and resumes from before are told
    new_epoch = [m for m in watcher.live if m["seq"] == 1]
    assert new_epoch, "the new history starts again at seq 1"
    assert answer["status"] == "not_recovered"
    assert answer["epoch"] != watcher.resumes[0]["epoch"]
    # each connection retries at most 2 s apart: the last one is back within that
    wait_until(lambda: health(a)["status"] == health(b)["status"] == "ok", 5, "both ok again")
    a.wait_for(lambda r: "Redis lost its data" in r.get("message", ""))
    b.wait_for(lambda r: "Redis bus: back after" in r.get("message", ""))


def test_past_the_buffer_messages_are_dropped_and_counted(cluster: Cluster) -> None:
    a = cluster.start("--redis-buffer-bytes", "20000")

    async def scenario() -> None:
        connector = await websockets.connect(url(a))
        cluster.redis.kill()
        await asyncio.to_thread(
            wait_until, lambda: health(a)["status"] == "degraded", 10, "degraded"
        )
        for n in range(200):  # ~230 bytes each: about 85 fit in 20,000 bytes
            await connector.send(json.dumps(ex.packet_sent("connector-a", n)))
        await asyncio.sleep(0.5)
        await connector.close()

    asyncio.run(scenario())
    status = health(a)
    assert 0 < status["bus"]["bufferedBytes"] <= 20000
    dropped = status["bus"]["dropped"]
    assert 100 < dropped < 200, status
    a.wait_for(lambda r: "messages dropped since start" in r.get("message", ""))
    # one line for the burst, not one per message
    assert sum("dropped since start" in m for m in a.messages()) == 1


def test_all_hubs_restarted_and_the_replay_is_complete(cluster: Cluster) -> None:
    a, b = cluster.start(), cluster.start()

    async def before_restart() -> Dashboard:
        watcher = Dashboard(url(a))
        await watcher.connect()
        for hub, node in ((a, "connector-a"), (b, "connector-b"), (a, "connector-c")):
            await send_packets(url(hub), node, 0, 40)
        await watcher.read_until(lambda d: len(d.of_type("PACKET_SENT")) == 120)
        await watcher.read_for(0.3)
        await watcher.close()
        return watcher

    watcher = asyncio.run(before_restart())
    for hub in (a, b):
        hub.signal(signal.SIGTERM)
        assert hub.wait() == 0
    a2, b2 = cluster.start(), cluster.start()

    async def after_restart() -> tuple[Dashboard, Dashboard]:
        fresh = Dashboard(url(b2))
        await fresh.connect()
        await fresh.read_until(lambda d: len(d.snapshot) == 3)
        resumed = Dashboard(url(a2))
        await resumed.connect({"epoch": watcher.resumes[0]["epoch"], "seq": 0})
        await resumed.read_until(lambda d: len(d.live) >= len(watcher.live))
        await resumed.read_for(0.3)
        await fresh.close()
        await resumed.close()
        return fresh, resumed

    fresh, resumed = asyncio.run(after_restart())
    assert [(s["nodeId"], s["online"]) for s in fresh.snapshot] == [
        ("connector-a", False),
        ("connector-b", False),
        ("connector-c", False),
    ]
    assert resumed.resumes[0]["status"] == "resumed"
    assert resumed.live[: len(watcher.live)] == watcher.live
    assert contiguous(resumed.live) and resumed.live[0]["seq"] == 1


def test_a_stopped_hub_says_goodbye_at_once(cluster: Cluster) -> None:
    """
    SIGTERM: the hub's nodes go offline as its connectors go, not after the TTL.
    """
    a, b = cluster.start(), cluster.start()

    async def scenario() -> float:
        watcher = Dashboard(url(b))
        await watcher.connect()
        connector = await websockets.connect(url(a))
        await connector.send(json.dumps(ex.node_status("connector-a")))
        await watcher.read_until(lambda d: len(d.of_type("NODE_PRESENCE")) == 1)
        stopped = time.monotonic()
        a.signal(signal.SIGTERM)
        await watcher.read_until(lambda d: len(d.of_type("NODE_PRESENCE")) == 2)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(connector.recv(), 5)
        await watcher.close()
        return time.monotonic() - stopped

    assert asyncio.run(scenario()) < 3.0
    assert a.wait() == 0
    assert cluster.redis.command("ZCARD", "telemetry-hub:hubs") == "1"
