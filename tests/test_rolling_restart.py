"""
The production shape: two real hubs on a real Redis behind Debian's HAProxy, which speaks
the PROXY protocol to them and checks their C{/health}. The hubs see each client's own
address (for logs and per-address limits), and a rolling restart (one hub at a time:
SIGTERM, wait, start) loses no accepted message, keeps every connector (each retries once,
as the real one does, and lands on the other hub), and lets every dashboard resume.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from . import examples as ex
from .process import HubProcess
from .services import HAProxy, RedisServer, free_port
from .test_cluster import Dashboard, contiguous

pytestmark = pytest.mark.slow

#: how often an emulated connector sends: 100 messages/s, a busy connector's pace
SEND_INTERVAL = 0.01
#: the real connector's wait before its one reconnect attempt
CONNECTOR_RETRY_SECONDS = 1.0


class Hub:
    """
    One hub process on fixed ports (the proxy's configuration names them), restartable.
    """

    def __init__(self, redis: RedisServer, *args: str) -> None:
        self.ws_port, self.http_port = free_port(), free_port()
        self.args = args
        self.redis = redis
        self.lives: list[HubProcess] = []

    def start(self) -> HubProcess:
        process = HubProcess(
            "--redis",
            self.redis.url,
            *self.args,
            port=f"haproxy:tcp:{self.ws_port}:interface=127.0.0.1",
            http_port=f"tcp:{self.http_port}:interface=127.0.0.1",
        )
        self.lives.append(process)
        process.wait_listening()
        process.wait_for(lambda r: "Redis bus: connected" in r.get("message", ""))
        return process

    @property
    def process(self) -> HubProcess:
        return self.lives[-1]

    def healthy(self) -> bool:
        try:
            address = f"http://127.0.0.1:{self.http_port}/health"
            with urllib.request.urlopen(address, timeout=2) as answer:
                return bool(json.loads(answer.read())["status"] == "ok")
        except OSError:
            return False

    def stop(self) -> int:
        process = self.process
        process.signal(signal.SIGTERM)
        code = process.wait(15)
        process.drain()
        return code

    def accepted(self) -> int:
        """Messages accepted over all its lives, as each said when it stopped."""
        total = 0
        for life in self.lives:
            life.drain()
            (line,) = [r for r in life.records if r.get("message", "").startswith("Stopped:")]
            total += int(line["accepted"])
        return total

    def close(self) -> None:
        for life in self.lives:
            life.stop()


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


class Connector:
    """
    As the real connector: NODE_STATUS once, then telemetry; when its connection is lost it
    tries once more after about a second, and if that is refused it exits for good.
    """

    def __init__(self, address: str, node: str, interval: float = SEND_INTERVAL) -> None:
        self.address = address
        self.node = node
        self.interval = interval
        self.sent = 0
        self.reconnects = 0
        self.exited: str | None = None

    async def run(self, stop: asyncio.Event) -> None:
        connection = await websockets.connect(self.address)
        await connection.send(json.dumps(ex.node_status(self.node)))
        while not stop.is_set():
            try:
                await connection.send(json.dumps(ex.packet_sent(self.node, self.sent)))
                self.sent += 1
                await asyncio.sleep(self.interval)
            except ConnectionClosed:
                await asyncio.sleep(CONNECTOR_RETRY_SECONDS)
                try:
                    connection = await websockets.connect(self.address, open_timeout=5)
                except (OSError, InvalidStatus, TimeoutError) as e:
                    self.exited = f"its reconnect was refused: {e!r}"
                    return
                self.reconnects += 1
        await connection.close()


class ResumingDashboard(Dashboard):
    """
    As the hub's page: on a lost connection, back after half a second, resuming.
    """

    async def run(self, stop: asyncio.Event) -> None:
        """Read until C{stop}; connected already."""
        while not stop.is_set():
            try:
                self.take(json.loads(await asyncio.wait_for(self.connection.recv(), 0.2)))
            except TimeoutError:
                continue
            except ConnectionClosed:
                await asyncio.sleep(0.5)
                await self.connect(self.position)
        await self.close()


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.1)


#: the proxy's health checks: every 500 ms, up after two good ones
PROXY_SEES_IT_UP_SECONDS = 1.5


def test_rolling_restart_behind_haproxy_loses_nothing(redis: RedisServer) -> None:
    hubs = [Hub(redis), Hub(redis)]
    proxy = None
    try:
        for hub in hubs:
            hub.start()
        proxy = HAProxy([(h.ws_port, h.http_port) for h in hubs])
        time.sleep(PROXY_SEES_IT_UP_SECONDS)
        address = f"ws://127.0.0.1:{proxy.port}/"
        connectors = [Connector(address, f"connector-{i}") for i in range(4)]
        dashboards = [ResumingDashboard(address) for _ in range(2)]
        restarts: list[dict[str, Any]] = []

        async def scenario() -> None:
            stop, stop_reading = asyncio.Event(), asyncio.Event()
            # both dashboards are in before any connector: they see every message
            for dashboard in dashboards:
                await dashboard.connect()
            dashboards_running = [asyncio.ensure_future(d.run(stop_reading)) for d in dashboards]
            running = [asyncio.ensure_future(c.run(stop)) for c in connectors]
            await asyncio.sleep(2)
            for hub in hubs:
                on_it = len(hub.process.records)
                code = await asyncio.to_thread(hub.stop)
                restarts.append({"code": code, "records": on_it})
                await asyncio.to_thread(hub.start)
                await asyncio.to_thread(wait_until, hub.healthy, 10, "restarted hub healthy")
                await asyncio.sleep(PROXY_SEES_IT_UP_SECONDS + 1)
            stop.set()
            await asyncio.gather(*running)
            # the connectors' last messages reach the dashboards too
            await asyncio.sleep(1)
            stop_reading.set()
            await asyncio.gather(*dashboards_running)

        asyncio.run(scenario())
        time.sleep(0.5)
        for hub in hubs:
            assert hub.stop() == 0
        assert [r["code"] for r in restarts] == [0, 0]

        # every connector is still there: its one retry found the other hub
        assert [c.exited for c in connectors] == [None] * 4
        assert sum(c.reconnects for c in connectors) >= 4, "each hub had connectors to move"

        # every dashboard resumed every time, and saw one unbroken sequence
        for dashboard in dashboards:
            statuses = [r["status"] for r in dashboard.resumes]
            assert statuses[0] == "fresh" and set(statuses[1:]) == {"resumed"}, statuses
            assert contiguous(dashboard.live)
        assert dashboards[0].live == dashboards[1].live

        # no accepted message lost: what the hubs accepted over all their lives is what the
        # dashboards got
        telemetry = [m for m in dashboards[0].live if m["type"] != "NODE_PRESENCE"]
        accepted = sum(hub.accepted() for hub in hubs)
        assert accepted == len(telemetry)
        # and each connector's messages arrived in the order sent, none twice
        for connector in connectors:
            ids = [
                m["data"]["packetId"]
                for m in telemetry
                if m["type"] == "PACKET_SENT" and m["nodeId"] == connector.node
            ]
            assert len(ids) == len(set(ids))
            order = {ex.packet_id(n): n for n in range(connector.sent)}
            numbers = [order[i] for i in ids]
            assert numbers == sorted(numbers)
            lost = connector.sent - len(ids)
            # only messages written while the hub was already closing the connection
            assert lost <= 5 * max(1, connector.reconnects), (connector.node, lost)
    finally:
        if proxy is not None:
            proxy.stop()
        for hub in hubs:
            hub.close()


def test_behind_the_proxy_the_hub_sees_each_client_s_own_address(redis: RedisServer) -> None:
    hub = Hub(redis, "--max-connections-per-address", "2")
    proxy = None
    try:
        hub.start()
        proxy = HAProxy([(hub.ws_port, hub.http_port)])
        time.sleep(PROXY_SEES_IT_UP_SECONDS)
        address = f"ws://127.0.0.1:{proxy.port}/"

        async def scenario() -> tuple[list[Any], Any]:
            # the proxy connects to the hub from 127.0.0.1; these clients come from .3/.4
            mine = [
                await websockets.connect(address, local_addr=("127.0.0.3", 0)) for _ in range(2)
            ]
            with pytest.raises(InvalidStatus) as refused:
                await websockets.connect(address, local_addr=("127.0.0.3", 0))
            other = await websockets.connect(address, local_addr=("127.0.0.4", 0))
            await other.send(json.dumps({"type": "CLIENT_CONNECT"}))
            await asyncio.sleep(0.3)
            for connection in [*mine, other]:
                await connection.close()
            return mine, refused.value

        _, refused = asyncio.run(scenario())
        assert refused.response.status_code == 429
        process = hub.process
        record = process.wait_for(lambda r: "Dashboard client connected" in r.get("message", ""))
        assert re.match(r"tcp4:127\.0\.0\.4:\d+$", record["peer"]), record
        refusal = process.wait_for(lambda r: r.get("status") == 429)
        assert refusal["reason"] == "more than 2 connections from 127.0.0.3"
        # the proxy's own address is never counted, so never refused: the one refusal
        # is the client's
        assert [r["reason"] for r in process.records if r.get("status") == 429] == [
            "more than 2 connections from 127.0.0.3"
        ]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{hub.http_port}/metrics").read()
        per_address = [
            line
            for line in metrics.decode().splitlines()
            if line.startswith("telemetry_handshakes_refused") and "per_address" in line
        ]
        assert per_address and all(line.endswith(" 1.0") for line in per_address), per_address
    finally:
        if proxy is not None:
            proxy.stop()
        hub.close()
