"""
The production set-up on the real process, with a client library that is not Autobahn:
tokens, origins, /metrics, the node API, reloading tokens, /health with tokens on.
"""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from telemetry_service.auth import token_line

from . import examples as ex
from .process import HubProcess

pytestmark = pytest.mark.slow

CONNECTOR_TOKEN = "a-connector-token-for-connector-a"
FLEET_TOKEN = "a-token-for-every-west-node"
VIEWER_TOKEN = "a-viewer-token"
ORIGIN = "https://dash.example.com"


def write_tokens(path: Path, *, connector_a: bool = True) -> None:
    lines = [
        token_line("connector", "fleet-west", FLEET_TOKEN, ["west-*"]),
        token_line("viewer", "ops", VIEWER_TOKEN, []),
    ]
    if connector_a:
        lines.append(token_line("connector", "connector-a", CONNECTOR_TOKEN, ["connector-a"]))
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[HubProcess, str, int, Path]]:
    tokens = tmp_path / "tokens"
    write_tokens(tokens)
    hub = HubProcess("--tokens", str(tokens), "--allowed-origins", ORIGIN)
    port = hub.wait_listening()
    yield hub, f"ws://127.0.0.1:{port}/", hub.wait_http(), tokens
    hub.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def recv(conn: Any, timeout: float = 5) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(conn.recv(), timeout))
    return message


async def refused_status(url: str, **kwargs: Any) -> int | None:
    try:
        async with websockets.connect(url, **kwargs):
            return None
    except websockets.InvalidStatus as e:
        return int(e.response.status_code)


def http(port: int, path: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_who_may_connect_publish_and_read(secured: Any) -> None:
    hub, url, _, _ = secured

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        seen["no token"] = await refused_status(url)
        seen["wrong token"] = await refused_status(url, additional_headers=bearer("nope"))
        async with (
            websockets.connect(f"{url}?token={VIEWER_TOKEN}") as viewer,
            websockets.connect(url, additional_headers=bearer(CONNECTOR_TOKEN)) as connector,
            websockets.connect(url, additional_headers=bearer(FLEET_TOKEN)) as fleet,
        ):
            await viewer.send(json.dumps(ex.CLIENT_CONNECT_BARE))
            await connector.send(json.dumps(ex.node_status("connector-a")))
            seen["viewer got"] = await recv(viewer)
            await connector.send(json.dumps(ex.packet_sent("connector-b")))  # not its node
            seen["foreign node"] = await recv(connector)
            await fleet.send(json.dumps(ex.packet_sent("west-7")))
            seen["fleet relayed"] = await recv(viewer)
            await viewer.send(json.dumps(ex.packet_sent("connector-a")))
            seen["viewer publishing"] = await recv(viewer)
            async with websockets.connect(url, additional_headers=bearer(FLEET_TOKEN)) as other:
                await other.send(json.dumps(ex.CLIENT_CONNECT_BARE))
                seen["connector subscribing"] = await recv(other)
            # a token in the query works for connectors too (clients that cannot set headers)
            async with websockets.connect(f"{url}?token={CONNECTOR_TOKEN}") as by_query:
                await by_query.send(json.dumps(ex.packet_sent("connector-a", 2)))
                seen["query token relayed"] = await recv(viewer)
        return seen

    seen = asyncio.run(scenario())
    assert seen["no token"] == 401 and seen["wrong token"] == 401
    assert seen["viewer got"]["nodeId"] == "connector-a"
    assert (seen["foreign node"]["reason"], "connector-b" in seen["foreign node"]["detail"]) == (
        "UNAUTHORIZED",
        True,
    )
    assert seen["fleet relayed"]["nodeId"] == "west-7"
    assert seen["viewer publishing"]["reason"] == "ROLE_VIOLATION"  # it is a dashboard already
    assert seen["connector subscribing"]["reason"] == "UNAUTHORIZED"
    assert seen["query token relayed"]["data"]["packetId"] == ex.packet_id(2)
    hub.wait_for(lambda r: r.get("message", "").startswith("Refusing a connection"))
    hub.wait_for(lambda r: r.get("reason") == "UNAUTHORIZED" and r.get("level") == "warn")


def test_a_foreign_origin_is_refused_while_clients_without_one_and_the_page_connect(
    secured: Any,
) -> None:
    _, url, http_port, _ = secured
    viewer = f"{url}?token={VIEWER_TOKEN}"

    async def scenario() -> list[int | None]:
        return [
            await refused_status(viewer, origin="http://evil.example"),
            await refused_status(viewer),  # no Origin: a connector or a CLI
            await refused_status(viewer, origin=ORIGIN),
            await refused_status(viewer, origin=f"http://127.0.0.1:{http_port}"),  # the page
        ]

    assert asyncio.run(scenario()) == [403, None, None, None]


def test_metrics_are_prometheus_text_and_move_with_traffic(secured: Any) -> None:
    _, url, http_port, _ = secured
    assert http(http_port, "/metrics")[0] == 401  # what viewers read needs a viewer token

    def scrape() -> dict[str, float]:
        code, body = http(http_port, "/metrics", VIEWER_TOKEN)
        assert code == 200
        values = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                values[f"{sample.name}{{{labels}}}"] = sample.value
        return values

    before = scrape()

    async def traffic() -> None:
        async with (
            websockets.connect(f"{url}?token={VIEWER_TOKEN}") as viewer,
            websockets.connect(url, additional_headers=bearer(CONNECTOR_TOKEN)) as connector,
        ):
            await viewer.send(json.dumps(ex.CLIENT_CONNECT_BARE))
            for n in range(5):
                await connector.send(json.dumps(ex.packet_sent("connector-a", n)))
            await connector.send(json.dumps(ex.packet_sent("connector-b")))
            for _ in range(5):
                await recv(viewer)
            await recv(connector)  # the refusal
            after["during"] = scrape()

    after: dict[str, Any] = {}
    asyncio.run(traffic())
    during = after["during"]
    key = "telemetry_messages_accepted_total{type=PACKET_SENT}"
    assert during[key] - before.get(key, 0) == 5
    assert during["telemetry_messages_refused_total{reason=UNAUTHORIZED}"] >= 1
    assert (
        during["telemetry_deliveries_total{}"] >= before.get("telemetry_deliveries_total{}", 0) + 5
    )
    assert during["telemetry_connections{role=dashboard}"] == 1
    assert during["telemetry_connections{role=connector}"] == 1
    assert during["telemetry_handshakes_refused_total{reason=unauthorized}"] >= 0
    assert during["telemetry_last_seq{}"] >= 5
    assert during["process_resident_memory_bytes{}"] > 10_000_000


def test_the_node_api_and_a_quieter_health_behind_tokens(secured: Any) -> None:
    _, url, http_port, _ = secured

    async def report() -> None:
        async with websockets.connect(url, additional_headers=bearer(FLEET_TOKEN)) as fleet:
            await fleet.send(json.dumps(ex.node_status("west-1")))
            await asyncio.sleep(0.2)
            assert http(http_port, "/api/nodes/west-1", VIEWER_TOKEN)[1]
            states["online"] = json.loads(http(http_port, "/api/nodes", VIEWER_TOKEN)[1])
        await asyncio.sleep(0.2)

    states: dict[str, Any] = {}
    asyncio.run(report())
    assert states["online"] == [{**ex.node_status("west-1"), "seq": 2, "online": True}]
    code, body = http(http_port, "/api/nodes/west-1", VIEWER_TOKEN)
    assert (code, json.loads(body)["online"]) == (200, False)
    assert http(http_port, f"/api/nodes/west-1?token={VIEWER_TOKEN}")[0] == 200
    assert http(http_port, "/api/nodes/no-such-node", VIEWER_TOKEN)[0] == 404
    assert http(http_port, "/api/nodes")[0] == 401
    assert http(http_port, "/api/balances")[0] == 401
    code, body = http(http_port, "/health")
    assert code == 200 and set(json.loads(body)) == {"status", "version"}


def test_sighup_reloads_tokens_and_a_broken_file_keeps_the_old_ones(secured: Any) -> None:
    hub, url, _, tokens = secured

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with websockets.connect(url, additional_headers=bearer(CONNECTOR_TOKEN)) as a:
            await a.send(json.dumps(ex.packet_sent("connector-a")))
            await asyncio.sleep(0.2)
            tokens.write_text("connector broken\n")
            hub.signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
            await a.send(json.dumps(ex.packet_sent("connector-a", 2)))  # still allowed
            write_tokens(tokens, connector_a=False)  # its token is revoked
            hub.signal(signal.SIGHUP)
            try:
                await asyncio.wait_for(a.recv(), 5)
            except websockets.ConnectionClosed as closed:
                seen["closed"] = closed.rcvd.code if closed.rcvd else None
        seen["after"] = await refused_status(url, additional_headers=bearer(CONNECTOR_TOKEN))
        return seen

    seen = asyncio.run(scenario())
    failed = hub.wait_for(lambda r: "Token reload failed" in r.get("message", ""))
    assert failed["level"] == "error" and "line 1" in failed["error"]
    assert seen == {"closed": 1008, "after": 401}
