"""
Delivery on real loopback sockets: gap-free resume under load, an honest "not recovered",
presence, filters, and a stuck reader cut off while the others keep up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import LoopingCall

from . import examples as ex
from .wsclient import RunningHub, WsClient, settle

Start = Callable[..., RunningHub]
PRESENCE = {"hubEvents": ["NODE_PRESENCE"]}


class Pump:
    """A connector sending C{total} messages, C{per_tick} at a time, as fast as it can."""

    def __init__(self, connector: WsClient, total: int, per_tick: int = 25, **data: Any) -> None:
        self.connector, self.total, self.per_tick, self.data = connector, total, per_tick, data
        self.sent = 0
        self.loop = LoopingCall(self._tick)

    def _tick(self) -> None:
        for _ in range(self.per_tick):
            if self.sent == self.total:
                self.loop.stop()
                return
            self.connector.send(ex.packet_sent("connector-a", self.sent, **self.data))
            self.sent += 1

    def start(self) -> defer.Deferred[Any]:
        return self.loop.start(0.0005)


async def until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    waited = 0.0
    while not predicate():
        assert waited < timeout, "condition not reached in time"
        await settle(0.01)
        waited += 0.01


def numbered(messages: list[Any]) -> list[Any]:
    return [m for m in messages if "seq" in m and m.get("type") != "RESUME"]


@pytest_twisted.ensureDeferred
async def test_resume_across_a_reconnect_under_load_loses_and_doubles_nothing(start: Start) -> None:
    hub = start()
    connector = await hub.connect()
    # both ask for presence too, so that every seq is theirs and a gap would be a loss
    first = await hub.dashboard({"type": "CLIENT_CONNECT", "resume": {}, **PRESENCE})
    hello = await first.next()
    assert hello["status"] == "fresh"
    pump = Pump(connector, total=6000)
    done = pump.start()
    await until(lambda: len(first.received) > 1500)
    # gone mid-stream, without a close frame; whatever it had not read is lost to it
    first.dropConnection(abort=True)
    seen = numbered(list(first.received))
    await settle(0.05)
    assert 0 < pump.sent < pump.total, "the stream must still be running at the seam"
    second = await hub.dashboard(
        {
            "type": "CLIENT_CONNECT",
            "resume": {"epoch": hello["epoch"], "seq": seen[-1]["seq"]},
            **PRESENCE,
        }
    )
    # Until its CLIENT_CONNECT arrives the new connection is a listener and may hear live
    # messages; the RESUME frame is the seam, and exactly what follows it counts.
    status = await second.next()
    while status.get("type") != "RESUME":
        status = await second.next()
    assert status["status"] == "resumed"
    assert status["missed"] > 0
    await done
    await until(
        lambda: any(
            m.get("data", {}).get("packetId") == ex.packet_id(5999) for m in second.received
        )
    )
    seam = next(i for i, m in enumerate(second.received) if m.get("type") == "RESUME")
    after = numbered(second.received[seam + 1 :])
    both = seen + after
    assert [m["seq"] for m in both] == list(range(1, len(both) + 1))
    packets = [m["data"]["packetId"] for m in both if m["type"] == "PACKET_SENT"]
    assert packets == [ex.packet_id(n) for n in range(6000)]


@pytest_twisted.ensureDeferred
async def test_resume_beyond_the_history_says_so_and_sends_the_snapshot(start: Start) -> None:
    hub = start("--history-messages", "10")
    connector = await hub.connect()
    connector.send(ex.node_status("connector-a"))
    first = await hub.dashboard({"type": "CLIENT_CONNECT", "resume": {}})
    hello = await first.next()
    await first.take(1)  # the snapshot
    await first.leave()
    for n in range(50):
        connector.send(ex.packet_sent("connector-a", n))
    await settle(0.1)
    second = await hub.dashboard(
        {"type": "CLIENT_CONNECT", "resume": {"epoch": hello["epoch"], "seq": hello["seq"]}}
    )
    status, snapshot = await second.take(2)
    assert status["status"] == "not_recovered"
    assert status["seq"] == hello["seq"] + 50
    assert "no longer holds" in status["reason"]
    assert snapshot["type"] == "NODE_STATUS" and snapshot["online"] is True
    connector.send(ex.packet_sent("connector-a", 50))
    assert (await second.telemetry()) == ex.packet_sent("connector-a", 50)


@pytest_twisted.ensureDeferred
async def test_presence_goes_and_comes_back(start: Start) -> None:
    hub = start()
    watcher = await hub.dashboard({"type": "CLIENT_CONNECT", **PRESENCE})
    connector = await hub.connect()
    connector.send(ex.node_status("connector-a"))
    online, status = await watcher.take(2)
    assert (online["type"], online["nodeId"], online["online"]) == (
        "NODE_PRESENCE",
        "connector-a",
        True,
    )
    assert status["type"] == "NODE_STATUS"
    await connector.leave()
    offline = await watcher.next()
    assert (offline["type"], offline["online"]) == ("NODE_PRESENCE", False)
    late = await hub.dashboard(ex.CLIENT_CONNECT_DASHBOARD)
    (replayed,) = await late.take(1)
    assert replayed["online"] is False
    back = await hub.connect()
    back.send(ex.packet_sent("connector-a"))
    again = await watcher.next()
    assert (again["type"], again["online"]) == ("NODE_PRESENCE", True)
    # a dashboard that did not ask for presence gets the connector's message and nothing else
    assert (await late.next())["type"] == "PACKET_SENT"
    assert [m["type"] for m in late.received] == ["NODE_STATUS", "PACKET_SENT"]


@pytest_twisted.ensureDeferred
async def test_filters_over_the_wire(start: Start) -> None:
    hub = start()
    picky = await hub.dashboard(
        {
            "type": "CLIENT_CONNECT",
            "filter": {"types": ["ROUTE_LOOKUP"], "nodeIds": ["connector-b"]},
        }
    )
    a, b = await hub.connect(), await hub.connect()
    a.send(ex.route_lookup("connector-a"))
    b.send(ex.packet_sent("connector-b"))
    b.send(ex.route_lookup("connector-b", None))
    assert await picky.telemetry() == ex.route_lookup("connector-b", None)
    assert await picky.quiet(0.1) == []


@pytest_twisted.ensureDeferred
async def test_a_stuck_reader_is_cut_off_while_the_others_keep_up(start: Start, logs: Any) -> None:
    hub = start("--max-queued-bytes", "262144")
    stuck = await hub.dashboard()
    fast = await hub.dashboard()
    await settle()
    stuck.transport.pauseProducing()  # it stops reading its socket altogether
    connector = await hub.connect()
    total = 5000  # 4 KB each: 20 MB, far more than the socket buffers hold
    await Pump(connector, total, per_tick=10, blob="z" * 4000).start()
    await until(lambda: hub.hub.counts()["dashboard"] == 1, timeout=20)
    assert logs.matching("with 4008")
    got = []
    while len(got) < total:
        got.append(await fast.telemetry())
    assert [m["data"]["packetId"] for m in got] == [ex.packet_id(n) for n in range(total)]
    stuck.transport.resumeProducing()
    await stuck.close_code(timeout=10)
    assert reactor.running


@pytest_twisted.ensureDeferred
async def test_a_stuck_reader_is_dropped_by_its_ping_timeout_even_with_a_full_buffer(
    start: Start, logs: Any
) -> None:
    # a queue limit too large to be reached: only the ping timeout can end it
    hub = start("--ping-interval", "1", "--ping-timeout", "1", "--max-queued-bytes", "1000000000")
    stuck = await hub.dashboard()
    await settle()
    stuck.transport.pauseProducing()
    connector = await hub.connect()
    # enough to fill the socket buffers and the transport's, so the ping waits behind data
    await Pump(connector, 2000, per_tick=20, blob="z" * 4000).start()
    (server_side,) = [p for p in hub.factory.connections if p._hub_peer and p._hub_peer.congested]
    assert server_side._hub_peer.queued_bytes > 0
    await until(lambda: hub.hub.counts()["dashboard"] == 0, timeout=10)
    assert logs.matching("ping timeout")
    assert not logs.matching("with 4008")
