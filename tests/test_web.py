"""
The hub's HTTP side on a real loopback port: the page, its files, /health, /config.json.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.web.client import Agent, readBody

from telemetry_service.http.site import WEB_DIR

from . import examples as ex
from .wsclient import RunningHub, settle

JAVASCRIPT_TYPES = {"text/javascript", "application/javascript"}


@pytest.fixture
def hub() -> Iterator[RunningHub]:
    running = RunningHub().start()
    yield running
    pytest_twisted.blockon(defer.ensureDeferred(running.stop()))


async def get(hub: RunningHub, path: str) -> tuple[int, dict[str, list[str]], bytes]:
    agent = Agent(reactor)
    response = await agent.request(b"GET", f"http://127.0.0.1:{hub.http_port}{path}".encode())
    body = await readBody(response)
    headers = {
        k.decode().lower(): [v.decode() for v in vs]
        for k, vs in response.headers.getAllRawHeaders()
    }
    return response.code, headers, body


@pytest_twisted.ensureDeferred
async def test_the_page_and_its_files_are_served(hub: RunningHub) -> None:
    code, headers, body = await get(hub, "/")
    assert code == 200
    assert headers["content-type"][0].startswith("text/html")
    assert b'<div id="graph"' in body
    for script in (b"vendor/cytoscape-3.35.0.min.js", b"js/main.js"):
        assert script in body
        code, _, content = await get(hub, "/" + script.decode())
        assert code == 200 and len(content) > 1000
    assert b'<script type="module" src="js/main.js">' in body
    code, headers, _ = await get(hub, "/app.css")
    assert code == 200
    assert headers["content-type"][0].startswith("text/css")


@pytest_twisted.ensureDeferred
async def test_every_module_of_the_page_is_served_as_javascript(hub: RunningHub) -> None:
    """
    Every module the page's entry point imports, however deep, is served, and as
    JavaScript (site.py says so, whatever the machine's mime.types): a browser does not run
    a module script served as anything else. No file of js/ is left out of the page.
    """
    seen: set[str] = set()
    waiting = ["main.js"]
    while waiting:
        name = waiting.pop()
        if name in seen:
            continue
        seen.add(name)
        code, headers, content = await get(hub, f"/js/{name}")
        assert code == 200, name
        assert headers["content-type"][0].split(";")[0] in JAVASCRIPT_TYPES, (name, headers)
        waiting += re.findall(r'from "\./([\w.-]+\.js)";', content.decode())
    assert seen == {p.name for p in (WEB_DIR / "js").glob("*.js")}


@pytest_twisted.ensureDeferred
async def test_folders_are_not_listed(hub: RunningHub) -> None:
    for folder in ("/vendor/", "/js/"):
        code, _, _ = await get(hub, folder)
        assert code == 403
    code, _, _ = await get(hub, "/no-such-file")
    assert code == 404


@pytest_twisted.ensureDeferred
async def test_config_names_the_websocket_port(hub: RunningHub) -> None:
    code, headers, body = await get(hub, "/config.json")
    assert code == 200
    assert headers["content-type"] == ["application/json"]
    assert json.loads(body) == {"wsPort": hub.port}


@pytest_twisted.ensureDeferred
async def test_health_reports_the_hub(hub: RunningHub) -> None:
    connector = await hub.connect()
    connector.send(ex.node_status("connector-a"))
    connector.send(b"{bad")
    dashboard = await hub.dashboard()
    await settle(0.1)
    code, headers, body = await get(hub, "/health")
    assert code == 200
    assert headers["cache-control"] == ["no-store"]
    health: dict[str, Any] = json.loads(body)
    assert health["status"] == "ok"
    assert health["connections"] == {
        "listener": 0,
        "dashboard": 1,
        "connector": 1,
        "unidentified": 0,
        "nodes": 1,
    }
    assert (health["accepted"], health["rejected"]) == (1, 1)
    assert health["rejectedByReason"] == {"INVALID_JSON": 1}
    assert health["seq"] == 2  # presence and NODE_STATUS
    assert health["epoch"] == hub.hub.store.epoch
    assert dashboard is not None


def test_http_can_be_turned_off() -> None:
    running = RunningHub("--http-port", "off")
    assert [s.name for s in running.service] == ["websocket"]


def _channel(catalog: Any) -> tuple[Any, Any, Any]:
    """The page's HTTP channel over an in-memory transport, on a fake clock."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from telemetry_service.config import Settings
    from telemetry_service.http.site import build_site
    from telemetry_service.hub import Hub
    from telemetry_service.settlement import SettlementState

    clock = Clock()
    hub = Hub(catalog, Settings(), clock)
    site = build_site(hub, SettlementState(clock), lambda: None, clock)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    transport = StringTransport()
    transport.abortConnection = lambda: setattr(transport, "aborted", True)  # type: ignore[attr-defined]
    transport.aborted = False  # type: ignore[attr-defined]
    channel.makeConnection(transport)
    return channel, transport, clock


def test_every_request_on_a_kept_alive_connection_has_the_deadline(catalog: Any) -> None:
    """
    A request must arrive whole within REQUEST_SECONDS, the second one on a kept-alive
    connection as much as the first: one that drips in after an answered request is cut.
    """
    from telemetry_service.http.site import REQUEST_SECONDS

    channel, transport, clock = _channel(catalog)
    channel.dataReceived(b"GET /health HTTP/1.1\r\nHost: hub\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200")
    clock.advance(REQUEST_SECONDS * 3)  # idle between requests: no deadline runs then
    assert not transport.aborted
    channel.dataReceived(b"GET /health HTTP/1.1\r\nHo")  # ... and the rest never comes
    clock.advance(REQUEST_SECONDS - 0.5)
    assert not transport.aborted
    clock.advance(1)
    assert transport.aborted
