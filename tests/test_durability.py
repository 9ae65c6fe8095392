"""
The real process restarted under connectors and dashboards: gracefully, with kill -9, and on
a corrupt state file. Within one epoch a seq always names the same message.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from . import examples as ex
from .process import HubProcess

pytestmark = pytest.mark.slow

PRESENCE = {"hubEvents": ["NODE_PRESENCE"]}


@pytest.fixture
def hubs() -> Iterator[list[HubProcess]]:
    started: list[HubProcess] = []
    yield started
    for hub in started:
        hub.stop()


def start(hubs: list[HubProcess], state: Path, *args: str) -> tuple[HubProcess, str]:
    hub = HubProcess("--state-dir", str(state), *args)
    hubs.append(hub)
    return hub, f"ws://127.0.0.1:{hub.wait_listening()}/"


async def recv(conn: Any, timeout: float = 5) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(conn.recv(), timeout))
    return message


async def drain(conn: Any, seconds: float = 0.3) -> list[dict[str, Any]]:
    got = []
    try:
        while True:
            got.append(await recv(conn, seconds))
    except (TimeoutError, websockets.ConnectionClosed):
        return got


def health(hub: HubProcess) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{hub.wait_http()}/health", timeout=5) as r:
        body: dict[str, Any] = json.loads(r.read())
    return body


def test_a_graceful_restart_keeps_epoch_seq_replay_and_resume(
    hubs: list[HubProcess], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    hub, url = start(hubs, state)

    async def before() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        async with websockets.connect(url) as dashboard:
            await dashboard.send(json.dumps({"type": "CLIENT_CONNECT", "resume": {}}))
            hello = await recv(dashboard)
            async with websockets.connect(url) as a, websockets.connect(url) as b:
                # b reports once a's report is in: the replay's order is the hub's order
                # of first reports, and two connections' frames have no order of their own
                await a.send(json.dumps(ex.node_status("connector-a")))
                assert (await recv(dashboard))["nodeId"] == "connector-a"
                await b.send(json.dumps(ex.node_status("connector-b")))
                assert (await recv(dashboard))["nodeId"] == "connector-b"
                for n in range(20):
                    await a.send(json.dumps(ex.packet_sent("connector-a", n)))
                seen = [await recv(dashboard) for _ in range(20)]
        return hello, seen

    hello, seen = asyncio.run(before())
    hub.signal(signal.SIGTERM)
    assert hub.wait() == 0
    hub, url = start(hubs, state)

    async def after() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with websockets.connect(url) as dashboard:
            await dashboard.send(json.dumps(ex.CLIENT_CONNECT_DASHBOARD))
            replay = await drain(dashboard)
        async with websockets.connect(url) as resumer:
            position = {"epoch": hello["epoch"], "seq": seen[9]["seq"]}
            await resumer.send(json.dumps({"type": "CLIENT_CONNECT", "resume": position}))
            resumed = await drain(resumer)
        return replay, resumed

    replay, resumed = asyncio.run(after())
    # every node known, each offline until its connector is back
    assert [(m["nodeId"], m["online"]) for m in replay] == [
        ("connector-a", False),
        ("connector-b", False),
    ]
    status, *missed = resumed
    assert (status["status"], status["epoch"]) == ("resumed", hello["epoch"])
    assert missed == seen[10:]
    assert health(hub)["seq"] == seen[-1]["seq"] + 2  # the two connectors' presence: offline


def test_kill_9_mid_stream_contradicts_loses_and_doubles_nothing(
    hubs: list[HubProcess], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    hub, url = start(hubs, state)

    async def until_the_kill() -> tuple[dict[str, Any], list[dict[str, Any]], int]:
        async with websockets.connect(url) as dashboard, websockets.connect(url) as connector:
            await dashboard.send(json.dumps({"type": "CLIENT_CONNECT", "resume": {}, **PRESENCE}))
            hello = await recv(dashboard)
            await connector.send(json.dumps(ex.node_status("connector-a")))
            sent = 0

            async def stream() -> None:
                nonlocal sent
                try:
                    while True:
                        await connector.send(json.dumps(ex.packet_sent("connector-a", sent)))
                        sent += 1
                        if sent % 20 == 0:
                            await asyncio.sleep(0.001)
                except websockets.ConnectionClosed:
                    pass

            streaming = asyncio.ensure_future(stream())
            received: list[dict[str, Any]] = []
            while len(received) < 2000:
                received.append(await recv(dashboard))
            os.kill(hub.process.pid, signal.SIGKILL)  # mid-stream, no goodbye
            received += await drain(dashboard, 2)
            streaming.cancel()
        return hello, received, sent

    hello, received, sent = asyncio.run(until_the_kill())
    assert hub.wait() == -signal.SIGKILL
    assert len(received) > 2000, "the stream was still running at the kill"
    seqs = [m["seq"] for m in received]
    assert seqs == list(range(1, len(received) + 1))  # it asked for everything: no gaps
    hub, url = start(hubs, state)

    async def after_the_restart() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        last = {"epoch": hello["epoch"], "seq": seqs[-1]}
        async with websockets.connect(url) as connector, websockets.connect(url) as dashboard:
            await dashboard.send(json.dumps({"type": "CLIENT_CONNECT", "resume": last, **PRESENCE}))
            for n in range(sent, sent + 50):  # the connector is back and goes on
                await connector.send(json.dumps(ex.packet_sent("connector-a", n)))
            resumed = await drain(dashboard, 1)
        # and what the hub holds of before the kill is exactly what was received
        early = {"epoch": hello["epoch"], "seq": 0}
        async with websockets.connect(url) as checker:
            await checker.send(json.dumps({"type": "CLIENT_CONNECT", "resume": early, **PRESENCE}))
            again = await drain(checker, 1)
        return resumed, again

    resumed, again = asyncio.run(after_the_restart())
    status, *after = resumed
    assert (status["status"], status["epoch"]) == ("resumed", hello["epoch"])
    # nothing doubled or reordered: seqs go on from the last one received, without a gap
    assert [m["seq"] for m in after] == list(range(seqs[-1] + 1, seqs[-1] + 1 + len(after)))
    packets = [m["data"]["packetId"] for m in received + after if m["type"] == "PACKET_SENT"]
    assert len(packets) == len(set(packets))
    # nothing lost: the 50 sent after the restart all came, after whatever the hub had
    # committed before the kill and the dashboard had not read yet
    assert packets[-50:] == [ex.packet_id(n) for n in range(sent, sent + 50)]
    # and before those, the connector's first life in its own order, from its first packet
    # (what it sent after the last commit before the kill was never accepted: it is lost
    # to the connector, as with any hub that dies, and no client ever saw it)
    assert packets[:-50] == [ex.packet_id(n) for n in range(len(packets) - 50)]
    # nothing contradicted: every seq the dashboard saw still names the same message
    assert again[0]["status"] == "resumed"
    assert again[1 : 1 + len(received)] == received


def test_a_corrupt_state_file_is_set_aside_and_the_hub_starts(
    hubs: list[HubProcess], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "hub-state.sqlite3").write_bytes(b"not sqlite at all" * 64)
    hub, url = start(hubs, state)
    line = hub.wait_for(lambda r: "set aside" in r.get("message", ""))
    assert line["level"] == "error"
    assert len(list(state.glob("hub-state.sqlite3.unusable-*"))) == 1
    assert health(hub)["status"] == "ok"

    async def works() -> dict[str, Any]:
        async with websockets.connect(url) as connector, websockets.connect(url) as dashboard:
            await dashboard.send(json.dumps(ex.CLIENT_CONNECT_BARE))
            await asyncio.sleep(0.2)
            await connector.send(json.dumps(ex.packet_sent("connector-a")))
            return await recv(dashboard)

    assert asyncio.run(works())["type"] == "PACKET_SENT"
