"""
End to end on real loopback sockets: the hub as makeService wires it, Autobahn clients in
the same reactor. These are the seed story's integration tests (Task 10) and the network
behaviours: limits, close codes, ping, TCP_NODELAY, shutdown.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientProtocol
from twisted.internet import defer, error, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint

from . import examples as ex
from .fakes import telemetry_only
from .wsclient import RunningHub, WsClient, connect, settle

Start = Callable[..., RunningHub]


# -- the seed's Task 10


@pytest_twisted.ensureDeferred
async def test_server_starts_and_accepts_websocket_connections(start: Start) -> None:
    hub = start()
    client = await hub.connect()
    assert client.state == WebSocketClientProtocol.STATE_OPEN


@pytest_twisted.ensureDeferred
async def test_valid_telemetry_is_accepted_without_warnings(start: Start, logs: Any) -> None:
    hub = start()
    connector = await hub.connect()
    connector.send(ex.node_status("connector-a"))
    await settle(0.1)
    assert hub.hub.stats.accepted == 1
    assert logs.matching("Connector registered: connector-a")
    # the one warning is the start-up's: the hub is open to anyone (no tokens, no origins)
    assert [t for t in logs.texts("warn") if "No tokens and no origin list" not in t] == []
    assert await connector.quiet(0.1) == []  # nothing comes back to a good connector


@pytest_twisted.ensureDeferred
async def test_malformed_message_is_not_broadcast_and_a_warning_is_logged(
    start: Start, logs: Any
) -> None:
    hub = start()
    dashboard = await hub.dashboard()
    connector = await hub.connect()
    connector.send(b"{invalid json}")
    error = await connector.next()
    assert error["type"] == "ERROR"
    assert error["reason"] == "INVALID_JSON"
    assert logs.matching("INVALID_JSON", "warn")
    assert await dashboard.quiet() == []
    # the connection stays open and usable
    connector.send(ex.packet_sent())
    assert await dashboard.telemetry() == ex.packet_sent()


@pytest_twisted.ensureDeferred
async def test_telemetry_is_broadcast_to_two_clients(start: Start) -> None:
    hub = start()
    one, two = await hub.dashboard(), await hub.dashboard(ex.CLIENT_CONNECT_DASHBOARD)
    connector = await hub.connect()
    await settle()
    connector.send(ex.packet_sent("connector-a"))
    assert await one.telemetry() == ex.packet_sent("connector-a")
    assert await two.telemetry() == ex.packet_sent("connector-a")


@pytest_twisted.ensureDeferred
async def test_connector_disconnect_is_logged_and_forgotten(start: Start, logs: Any) -> None:
    hub = start()
    connector = await hub.connect()
    connector.send(ex.node_status("connector-a"))
    await settle()
    assert hub.hub.live_connectors("connector-a") == 1
    await connector.leave()
    await settle()
    assert hub.hub.live_connectors("connector-a") == 0
    assert logs.matching("Connector disconnected: connector-a")
    # its status stays for replay: connectors never resend it
    assert hub.hub.node_ids == ["connector-a"]


@pytest_twisted.ensureDeferred
async def test_client_disconnect_is_handled_gracefully(start: Start, logs: Any) -> None:
    hub = start()
    leaving = await hub.dashboard()
    staying = await hub.dashboard()
    await settle()
    leaving.dropConnection(abort=True)  # not even a close frame
    await settle(0.1)
    connector = await hub.connect()
    connector.send(ex.packet_sent())
    assert await staying.telemetry() == ex.packet_sent()
    assert logs.matching("Dashboard client disconnected")
    assert logs.texts("error") == []
    assert hub.hub.counts()["dashboard"] == 1


# -- roles and replay, as a client sees them


@pytest_twisted.ensureDeferred
async def test_replay_on_client_connect_in_first_report_order_before_anything_else(
    start: Start,
) -> None:
    hub = start()
    nodes = ["connector-c", "connector-a", "connector-b"]
    connectors = {}
    for node in nodes:
        connectors[node] = await hub.connect()
        connectors[node].send(ex.node_status(node))
        await settle(0.02)
    dashboard = await hub.connect("/any/path?x=1")
    dashboard.send(ex.CLIENT_CONNECT_DASHBOARD)
    connectors["connector-a"].send(ex.packet_received("connector-a"))
    got = await dashboard.take_telemetry(4)
    assert [m["type"] for m in got] == ["NODE_STATUS"] * 3 + ["PACKET_RECEIVED"]
    assert [m["nodeId"] for m in got[:3]] == nodes
    assert got[:3] == [ex.node_status(n) for n in nodes]


@pytest_twisted.ensureDeferred
async def test_listen_only_connection_receives_the_broadcast(start: Start) -> None:
    hub = start()
    listener = await hub.connect()
    connector = await hub.connect()
    await settle()
    connector.send(ex.route_lookup(selected_peer=None))
    assert await listener.telemetry() == ex.route_lookup(selected_peer=None)


@pytest_twisted.ensureDeferred
async def test_three_connectors_two_clients_every_message_in_per_connector_order(
    start: Start,
) -> None:
    hub = start()
    clients = [await hub.dashboard(ex.CLIENT_CONNECT_DASHBOARD) for _ in range(2)]
    connectors = [await hub.connect() for _ in range(3)]
    await settle()
    per_connector = 200
    for n in range(per_connector):
        for i, connector in enumerate(connectors):
            kind = (ex.packet_received, ex.route_lookup, ex.packet_sent)[n % 3]
            message = kind(f"connector-{i}")
            message["data"]["n"] = n
            connector.send(message)
    for client in clients:
        got = await client.take_telemetry(3 * per_connector)
        for i in range(3):
            mine = [m["data"]["n"] for m in got if m["nodeId"] == f"connector-{i}"]
            assert mine == list(range(per_connector))
        assert await client.quiet(0.1) == []


# -- bad input on the wire


@pytest_twisted.ensureDeferred
async def test_oversize_message_closes_with_1009_and_others_carry_on(start: Start) -> None:
    hub = start()
    dashboard = await hub.dashboard()
    good = await hub.connect()
    bad = await hub.connect()
    bad.send(ex.packet_sent(blob="x" * (64 * 1024)))
    assert await bad.close_code() == 1009
    good.send(ex.packet_sent())
    assert await dashboard.telemetry() == ex.packet_sent()


@pytest_twisted.ensureDeferred
async def test_message_size_limit_is_configurable(start: Start) -> None:
    hub = start("--max-message-bytes", "2000000", "--max-queued-bytes", "4000000")
    dashboard = await hub.dashboard()
    sender = await hub.connect()
    # a 1 MiB string: within the raised limit, then refused by its schema's maxLength
    sender.send(ex.route_lookup(reason="x" * (1 << 20)))
    error = await sender.next()
    assert error["reason"] == "SCHEMA_VIOLATION"
    assert error["path"] == "$.data.reason"
    # a 1 MiB string where the schema allows any value is accepted and broadcast whole
    sender.send(ex.packet_sent(blob="y" * (1 << 20)))
    got = await dashboard.telemetry()
    assert got["data"]["blob"] == "y" * (1 << 20)


@pytest_twisted.ensureDeferred
async def test_invalid_utf8_in_a_text_frame_closes_with_1007(start: Start) -> None:
    hub = start()
    dashboard = await hub.dashboard()
    bad = await hub.connect()
    bad.sendMessage(b'{"type":"\xff\xfe\xc3("}', isBinary=False)
    assert await bad.close_code() == 1007
    good = await hub.connect()
    good.send(ex.packet_sent())
    assert await dashboard.telemetry() == ex.packet_sent()


@pytest_twisted.ensureDeferred
async def test_binary_frames_are_json_too(start: Start) -> None:
    hub = start()
    dashboard = await hub.dashboard()
    sender = await hub.connect()
    sender.send(bytes(range(256)), binary=True)
    assert (await sender.next())["reason"] == "INVALID_UTF8"
    sender.send(json.dumps(ex.packet_sent()).encode(), binary=True)
    assert await dashboard.telemetry() == ex.packet_sent()


@pytest_twisted.ensureDeferred
async def test_hostile_inputs_cost_only_themselves(start: Start, logs: Any) -> None:
    hub = start()
    dashboard = await hub.dashboard()
    hostile = await hub.connect()
    connector = await hub.connect()
    await settle()
    deep = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
    payloads = [
        b'{"type":"PACKET_SENT","nodeId":"n","timestamp":"'
        + ex.TS.encode()
        + b'","data":'
        + deep
        + b"}",
        json.dumps(ex.packet_sent(node_id="n" * 60_000)).encode(),
        b"[" * 30_000 + b"]" * 30_000,
        b"null",
        json.dumps({**ex.packet_sent(), "type": "NO_SUCH_TYPE"}).encode(),
        json.dumps(ex.node_status(health="sick")).encode(),
    ]
    for payload in payloads:
        hostile.sendMessage(payload, isBinary=False)
    reasons = [m["reason"] for m in await hostile.take(len(payloads))]
    assert reasons == [
        "TOO_DEEP",
        "SCHEMA_VIOLATION",
        "TOO_DEEP",
        "NOT_AN_OBJECT",
        "UNKNOWN_TYPE",
        "SCHEMA_VIOLATION",
    ]
    connector.send(ex.packet_sent())
    assert await dashboard.telemetry() == ex.packet_sent()
    assert telemetry_only(await dashboard.quiet(0.1)) == []
    assert logs.texts("error") == []
    assert all(len(t) < 2000 for t in logs.texts())


# -- limits


def _server_socket(hub: RunningHub) -> socket.socket:
    (server_side,) = list(hub.factory.connections)
    handle: socket.socket = server_side.transport.getHandle()
    return handle


@pytest_twisted.ensureDeferred
async def test_tcp_nodelay_is_really_set_on_accepted_sockets(start: Start) -> None:
    hub = start()
    await hub.connect()
    handle = _server_socket(hub)
    assert handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


@pytest_twisted.ensureDeferred
async def test_listen_backlog_is_large_and_configurable(start: Start) -> None:
    for backlog in (1024, 333):
        hub = start("--backlog", str(backlog))
        assert hub.listener.port.backlog == backlog  # type: ignore[union-attr]
        # and the kernel agrees: for a listening socket, ss shows the backlog as Send-Q
        out = subprocess.run(
            ["ss", "-Hltn", f"sport = :{hub.port}"], capture_output=True, text=True, check=True
        ).stdout.split()
        assert out[2] == str(backlog)


class SilentClient(WsClient):
    """Never answers a ping: a half-open or frozen peer."""

    def onPing(self, payload: bytes) -> None:
        pass


@pytest_twisted.ensureDeferred
async def test_peer_that_never_answers_pings_is_dropped(start: Start, logs: Any) -> None:
    hub = start("--ping-interval", "1", "--ping-timeout", "1")
    from autobahn.twisted.websocket import WebSocketClientFactory

    factory = WebSocketClientFactory(f"ws://127.0.0.1:{hub.port}/")
    factory.protocol = SilentClient
    silent: SilentClient = await TCP4ClientEndpoint(reactor, "127.0.0.1", hub.port).connect(factory)
    await silent.opened
    healthy = await hub.dashboard()
    silent.send({"type": "CLIENT_CONNECT"})
    await settle()
    assert hub.hub.counts()["dashboard"] == 2
    closed = silent.closed
    closed.addTimeout(5, reactor)
    await closed
    # the healthy one answered its pings and is still there
    await settle(0.5)
    assert hub.hub.counts()["dashboard"] == 1
    assert healthy.state == WebSocketClientProtocol.STATE_OPEN
    assert logs.matching("ping timeout")


@pytest_twisted.ensureDeferred
async def test_a_connector_that_sends_steadily_is_alive_though_it_answers_pings_late(
    start: Start,
) -> None:
    """Any data frame proves the peer alive, on the hub's own fast frame path too."""
    hub = start("--ping-interval", "1", "--ping-timeout", "1")
    from autobahn.twisted.websocket import WebSocketClientFactory

    factory = WebSocketClientFactory(f"ws://127.0.0.1:{hub.port}/")
    factory.protocol = SilentClient
    sender: SilentClient = await TCP4ClientEndpoint(reactor, "127.0.0.1", hub.port).connect(factory)
    await sender.opened
    dashboard = await hub.dashboard()
    for n in range(18):  # 3.6 s: more than three ping intervals with no answer to any
        sender.send(ex.packet_sent("connector-a", n))
        await settle(0.2)
    assert not sender.closed.called
    assert sender.state == WebSocketClientProtocol.STATE_OPEN
    got = await dashboard.take_telemetry(18)
    assert [m["data"]["packetId"] for m in got] == [ex.packet_id(n) for n in range(18)]


@pytest_twisted.ensureDeferred
async def test_max_queued_bytes_is_each_connections_budget(start: Start) -> None:
    small = start("--max-queued-bytes", "262144")
    default = start()
    for running, limit in ((small, 262144), (default, 1 << 20)):
        await running.dashboard()
        await settle()
        (protocol_,) = running.factory.connections
        assert protocol_._hub_peer.limit == limit


class RawClient(protocol.Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


@pytest_twisted.ensureDeferred
async def test_opening_handshake_must_finish_in_time(start: Start) -> None:
    hub = start("--handshake-timeout", "0.5")
    raw = RawClient()
    await TCP4ClientEndpoint(reactor, "127.0.0.1", hub.port).connect(
        protocol.Factory.forProtocol(lambda: raw)
    )
    raw.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the rest
    lost = raw.lost
    lost.addTimeout(5, reactor)
    await lost
    assert hub.hub.counts() == {
        "listener": 0,
        "dashboard": 0,
        "connector": 0,
        "unidentified": 0,
        "nodes": 0,
    }


# -- shutdown


@pytest_twisted.ensureDeferred
async def test_stopping_the_service_closes_every_connection_with_1001(start: Start) -> None:
    hub = start()
    dashboard = await hub.dashboard()
    connector = await hub.connect()
    connector.send(ex.node_status())
    listener = await hub.connect()
    await settle()
    port = hub.port
    await hub.service.stopService()
    codes = [await c.close_code() for c in (dashboard, connector, listener)]
    assert codes == [1001, 1001, 1001]
    # no longer listening
    with pytest.raises(error.ConnectionRefusedError):
        await connect(port)
