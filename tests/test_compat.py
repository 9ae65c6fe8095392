"""
Compatibility with the original hub (m2m's packages/dashboard/server), against the real
C{twistd -n telemetry} process, talked to with the C{websockets} library (not Autobahn).

Every test of the original's C{telemetry-server.test.ts} is ported here, grouped like its
describe blocks and named after it in its docstring, with at least the original's
strictness: frames are counted exactly (a quiet window at the end of each test shows that
nothing more arrives), each relayed message must equal what was sent apart from the
top-level fields the hub adds (C{seq}; C{online} on a replayed NODE_STATUS; C{sourceNodeId}
for C{"nodeId": "unknown"}), with the sender's key order, and the state the original's tests
read from its memory is read from the original's HTTP API. Then the channel-visualization
integration tests, the HTTP API's shapes, the connector's batches, the whole vocabulary, a
listen-only connection, and many connectors and clients at once.

Where the answer depends on what the hub has seen (replays, the HTTP API), a test starts a
hub of its own; the others share one, which never receives a NODE_STATUS, so every replay it
sends is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.protocol import State

from telemetry_service.schemas import shipped_schemas_dir

from . import examples as ex
from .process import HubProcess

Json = dict[str, Any]

#: seconds without a frame after which a client is taken to have been sent everything
QUIET = 0.3
#: the HTTP API on loopback, never through a proxy from the environment
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))

PLUS_ONE = timezone(timedelta(hours=1))

CONNECT_FORMS: dict[str, Json] = {
    "enveloped": ex.CLIENT_CONNECT_DASHBOARD,
    "bare": ex.CLIENT_CONNECT_BARE,
}


# -- the hub


class Hub:
    """A running hub process: its WebSocket URL and its HTTP API."""

    def __init__(self, process: HubProcess) -> None:
        self.process = process
        self.url = f"ws://127.0.0.1:{process.wait_listening()}/"
        self.http_port = process.wait_http()

    def get(self, path: str) -> Any:
        """GET a path of the HTTP API: 200 with a JSON body."""
        url = f"http://127.0.0.1:{self.http_port}{path}"
        with HTTP.open(url, timeout=5) as response:
            assert response.status == 200
            assert response.headers.get_content_type() == "application/json"
            return json.loads(response.read())

    async def api(self, path: str) -> Any:
        return await asyncio.to_thread(self.get, path)


class Spares:
    """
    Hub processes started ahead: the next test's hub starts while this one runs. Each has a
    state folder of its own, so none starts with another's state.
    """

    def __init__(self, folders: pytest.TempPathFactory) -> None:
        self._folders = folders
        self._next: HubProcess | None = None

    def _start(self) -> HubProcess:
        state = self._folders.mktemp("hub-state")
        return HubProcess(env={"TELEMETRY_STATE_DIR": str(state)})

    def take(self) -> HubProcess:
        process = self._next or self._start()
        self._next = self._start()
        return process

    def close(self) -> None:
        if self._next is not None:
            self._next.stop()


@contextlib.contextmanager
def running_hub(process: HubProcess) -> Iterator[Hub]:
    try:
        yield Hub(process)
        assert process.process.poll() is None, "the hub must still be running"
    finally:
        process.stop()


@pytest.fixture(scope="module")
def spares(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Spares]:
    spares = Spares(tmp_path_factory)
    yield spares
    spares.close()


@pytest.fixture(scope="module")
def shared_hub(spares: Spares) -> Iterator[Hub]:
    """
    One hub for the tests that leave nothing another test could see: none of them sends a
    NODE_STATUS (so every replay from it is empty), none reads its HTTP API.
    """
    with running_hub(spares.take()) as hub:
        yield hub


@pytest.fixture
def hub(spares: Spares) -> Iterator[Hub]:
    """A hub of its own, for a test whose replay or HTTP state must hold only what it sent."""
    with running_hub(spares.take()) as hub:
        yield hub


# -- messages


def dumps(message: Any) -> str:
    """As JavaScript's JSON.stringify writes it."""
    return json.dumps(message, separators=(",", ":"))


def iso(ms: float | None = None) -> str:
    """As JavaScript's C{new Date(ms).toISOString()}; now without C{ms}."""
    when = datetime.now(UTC) if ms is None else datetime.fromtimestamp(ms / 1000, UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ns(node_id: str, uptime: int = 100, **data: Any) -> Json:
    """The original test's C{NS(nodeId, uptime)}."""
    body: Json = {
        "routes": [],
        "peers": [],
        "health": "healthy",
        "uptime": uptime,
        "peersConnected": 0,
        "totalPeers": 0,
    }
    body.update(data)
    return {"type": "NODE_STATUS", "nodeId": node_id, "timestamp": iso(), "data": body}


def client_connect(node_id: str = "client") -> Json:
    """Every CLIENT_CONNECT of the original test: the full envelope."""
    return {"type": "CLIENT_CONNECT", "nodeId": node_id, "timestamp": iso(), "data": {}}


def assert_relayed(received: Json, sent: Json, *added: str) -> None:
    """
    C{received} is C{sent}, in C{sent}'s key order (nested ones too), plus exactly the
    top-level fields C{seq} and C{added}.
    """
    extra = {"seq", *added}
    assert {k for k in received if k not in sent} == extra
    assert isinstance(received["seq"], int)
    stripped = {k: v for k, v in received.items() if k not in extra}
    assert stripped == sent
    assert dumps(stripped) == dumps(sent), "key order or value types differ"


def assert_replayed(received: Json, sent: Json, online: bool) -> None:
    """A replayed NODE_STATUS: as sent, plus C{seq} and C{online}."""
    assert_relayed(received, sent, "online")
    assert received["online"] is online


# -- clients


async def recv(ws: ClientConnection, timeout: float = 5.0) -> Json:
    raw = await asyncio.wait_for(ws.recv(), timeout)
    # the original sent strings (text frames); a browser's JSON.parse needs them
    assert isinstance(raw, str), "the hub must send text frames"
    message = json.loads(raw)
    assert isinstance(message, dict)
    return message


async def recv_n(ws: ClientConnection, count: int) -> list[Json]:
    return [await recv(ws) for _ in range(count)]


async def extra_frames(ws: ClientConnection, window: float = QUIET) -> list[Json]:
    """Every frame that arrives until none has for C{window} seconds."""
    frames: list[Json] = []
    while True:
        try:
            frames.append(await recv(ws, window))
        except TimeoutError:
            return frames


async def assert_quiet(*clients: ClientConnection) -> None:
    """None of these clients is sent anything more."""
    extras = await asyncio.gather(*(extra_frames(c) for c in clients))
    assert extras == [[] for _ in clients], "frames nobody should have been sent"


async def handled(*connections: ClientConnection) -> None:
    """
    The hub has handled every frame these connections sent so far (it handles one
    connection's frames in order, and answers a ping after those before it), and each is
    still open.
    """
    pongs = [await ws.ping() for ws in connections]
    await asyncio.wait_for(asyncio.gather(*pongs), 5)


@contextlib.asynccontextmanager
async def clients(hub: Hub) -> AsyncIterator[Clients]:
    async with contextlib.AsyncExitStack() as stack:
        yield Clients(hub, stack)


class Clients:
    """Connections to one hub, all closed at the end of the C{async with}."""

    def __init__(self, hub: Hub, stack: contextlib.AsyncExitStack) -> None:
        self.hub = hub
        self._stack = stack

    async def open(self) -> ClientConnection:
        """A connection that has sent nothing: a listener."""
        ws = await self._stack.enter_async_context(websockets.connect(self.hub.url))
        assert ws.state is State.OPEN
        return ws

    async def connector(self, *messages: Json) -> ClientConnection:
        """A connection that sent these, handled by the hub."""
        ws = await self.open()
        for message in messages:
            await ws.send(dumps(message))
        await handled(ws)
        return ws

    async def dashboard(self, hello: Json | None = None) -> ClientConnection:
        """A connection that sent CLIENT_CONNECT (the real dashboard's, unless given)."""
        ws = await self.open()
        await ws.send(dumps(hello if hello is not None else ex.CLIENT_CONNECT_DASHBOARD))
        await handled(ws)
        return ws


def run(scenario: Any) -> Any:
    return asyncio.run(scenario)


# == describe 'Server Startup and Port Binding'


def test_startup_listens_on_the_configured_port(shared_hub: Hub) -> None:
    """
    'should start server and listen on configured port': a WebSocket opens on the port the
    hub was told to use, and a connection that says nothing is sent nothing.
    """

    async def scenario() -> None:
        async with clients(shared_hub) as c:
            ws = await c.open()
            await handled(ws)
            await assert_quiet(ws)

    run(scenario())


def test_startup_accepts_multiple_connections(shared_hub: Hub) -> None:
    """'should accept multiple WebSocket connections': two connections are open at once."""

    async def scenario() -> None:
        async with clients(shared_hub) as c:
            first, second = await c.open(), await c.open()
            await handled(first, second)
            assert first.state is second.state is State.OPEN
            await assert_quiet(first, second)

    run(scenario())


# == describe 'Message Reception and Validation'


def test_valid_node_status_is_accepted(hub: Hub) -> None:
    """
    'should accept valid NODE_STATUS telemetry message': the connector is sent nothing and
    stays open, and a dashboard receives the status as sent.
    """
    status = ns("connector-test", 100)

    async def scenario() -> None:
        async with clients(hub) as c:
            dashboard = await c.dashboard()
            connector = await c.connector(status)
            assert_relayed(await recv(dashboard), status)
            await handled(connector)
            await assert_quiet(connector, dashboard)

    run(scenario())


def test_malformed_json_is_refused_and_the_connection_stays_open(shared_hub: Hub) -> None:
    """
    'should handle malformed JSON gracefully': the sender stays open and gets one INVALID_JSON
    error frame; nothing reaches a dashboard.
    """

    async def scenario() -> None:
        async with clients(shared_hub) as c:
            dashboard = await c.dashboard()
            sender = await c.open()
            await sender.send("{invalid json}")
            error = await recv(sender)
            assert error["type"] == "ERROR"
            assert error["reason"] == "INVALID_JSON"
            await handled(sender)
            await assert_quiet(sender, dashboard)

    run(scenario())


def test_message_missing_required_fields_is_refused_and_the_connection_stays_open(
    shared_hub: Hub,
) -> None:
    """
    'should reject message with missing required fields': a NODE_STATUS without nodeId and
    timestamp gets one SCHEMA_VIOLATION error frame, the sender stays open, and nothing
    reaches a dashboard or the replay.
    """

    async def scenario() -> None:
        async with clients(shared_hub) as c:
            dashboard = await c.dashboard()
            sender = await c.open()
            await sender.send(dumps({"type": "NODE_STATUS", "data": {}}))
            error = await recv(sender)
            assert (error["type"], error["reason"]) == ("ERROR", "SCHEMA_VIOLATION")
            assert error["messageType"] == "NODE_STATUS"
            await handled(sender)
            later = await c.dashboard()
            await assert_quiet(sender, dashboard, later)

    run(scenario())


# == describe 'Broadcasting Mechanism'


def test_telemetry_is_broadcast_to_all_connected_clients(shared_hub: Hub) -> None:
    """
    'should broadcast telemetry to all connected clients': both dashboards (enveloped and
    bare CLIENT_CONNECT) and a listener receive the PACKET_SENT exactly once, as sent; the
    connector receives nothing.
    """
    stamp = iso()
    packet = {
        "type": "PACKET_SENT",
        "nodeId": "connector-a",
        "timestamp": stamp,
        "data": {"packetId": "test-packet", "nextHop": "connector-b", "timestamp": stamp},
    }

    async def scenario() -> None:
        async with clients(shared_hub) as c:
            connector = await c.open()
            client1 = await c.dashboard(client_connect("client1"))
            client2 = await c.dashboard(ex.CLIENT_CONNECT_BARE)
            listener = await c.open()
            await connector.send(dumps(packet))
            for receiver in (client1, client2, listener):
                assert_relayed(await recv(receiver), packet)
            await assert_quiet(connector, client1, client2, listener)

    run(scenario())


# == describe 'Connection Lifecycle'


def test_connector_disconnection(hub: Hub) -> None:
    """
    'should handle connector disconnection': after a connector closes, a new connection
    opens, and as a dashboard it is replayed the node's status with online false.
    """
    status = ns("connector-test", 0)

    async def scenario() -> None:
        async with clients(hub) as c:
            connector = await c.connector(status)
            await connector.close()
            dashboard = await c.dashboard(client_connect())
            assert_replayed(await recv(dashboard), status, online=False)
            await assert_quiet(dashboard)

    run(scenario())


def test_client_disconnection(shared_hub: Hub) -> None:
    """
    'should handle client disconnection gracefully': after a dashboard closes, a new one
    opens and receives the next broadcast exactly once.
    """
    packet = ex.packet_sent("connector-lifecycle")

    async def scenario() -> None:
        async with clients(shared_hub) as c:
            first = await c.dashboard(client_connect())
            await first.close()
            second = await c.dashboard(client_connect())
            connector = await c.connector(packet)
            assert_relayed(await recv(second), packet)
            await assert_quiet(second, connector)

    run(scenario())


# == describe 'Concurrent Connections'


def test_multiple_connectors_and_clients_concurrently(hub: Hub) -> None:
    """
    'should handle multiple connectors and clients concurrently': with 3 connectors and 2
    clients open, connector-1's status reaches each client exactly once; the two silent
    connections are listeners and receive it once too; connector-1 receives nothing.
    """
    status = ns("connector-1", 0)

    async def scenario() -> None:
        async with clients(hub) as c:
            connectors = [await c.open() for _ in range(3)]
            client1 = await c.dashboard(client_connect("client1"))
            client2 = await c.dashboard(ex.CLIENT_CONNECT_BARE)
            await connectors[0].send(dumps(status))
            for receiver in (client1, client2, connectors[1], connectors[2]):
                assert_relayed(await recv(receiver), status)
            await assert_quiet(*connectors, client1, client2)

    run(scenario())


def test_many_connectors_and_clients_at_once_lose_and_add_nothing(hub: Hub) -> None:
    """
    5 connectors sending 100 messages each (a NODE_STATUS, then 99 at the same time as the
    others) reach 3 dashboards and a listener: each dashboard gets its replay and then
    exactly the 500 messages, the listener exactly the 500, every connector's in its order,
    all in one order, nothing more.
    """
    cached = ns("connector-0")
    streams: dict[str, list[Json]] = {}
    for i in range(1, 6):
        node = f"connector-{i}"
        stream = [ns(node)]
        for n in range(33):
            stream += [
                ex.packet_received(node, n),
                ex.route_lookup(node, None if n % 5 == 0 else "connectorC"),
                ex.packet_sent(node, n),
            ]
        streams[node] = stream
    assert all(len(stream) == 100 for stream in streams.values())

    async def pump(ws: ClientConnection, messages: list[Json]) -> None:
        for message in messages:
            await ws.send(dumps(message))
            await asyncio.sleep(0)  # let the other connectors send in between

    async def scenario() -> None:
        async with clients(hub) as c:
            early = await c.connector(cached)
            dashboards = [
                await c.dashboard(ex.CLIENT_CONNECT_DASHBOARD),
                await c.dashboard(ex.CLIENT_CONNECT_BARE),
                await c.dashboard(client_connect("client3")),
            ]
            listener = await c.open()
            for dashboard in dashboards:
                assert_replayed(await recv(dashboard), cached, online=True)
            # each binds to its node at once (a connection that has sent nothing listens),
            # then all send the rest of their streams at the same time
            connectors = {node: await c.connector(streams[node][0]) for node in streams}
            await asyncio.gather(*(pump(connectors[n], streams[n][1:]) for n in streams))
            receivers = [*dashboards, listener]
            received = await asyncio.gather(*(recv_n(r, 500) for r in receivers))
            await assert_quiet(*receivers, early, *connectors.values())
            # connectors going offline send nothing to clients that did not ask for presence
            await asyncio.gather(*(ws.close() for ws in connectors.values()))
            await assert_quiet(*receivers)

        orders = [[m["seq"] for m in messages] for messages in received]
        assert all(order == orders[0] for order in orders)
        assert orders[0] == sorted(set(orders[0]))
        for messages in received:
            for node, stream in streams.items():
                mine = [m for m in messages if m["nodeId"] == node]
                assert len(mine) == len(stream)
                for got, sent in zip(mine, stream, strict=True):
                    assert_relayed(got, sent)

    run(scenario())


# == describe 'NODE_STATUS Caching and Replay (AC 6, 7)'


def test_node_status_is_cached_for_replay(hub: Hub) -> None:
    """
    'should cache NODE_STATUS messages in lastNodeStatus map': a dashboard that connects
    later is replayed the status, as sent, once.
    """
    status = ns(
        "connector-test", 1000, routes=[{"prefix": "g.test", "nextHop": "peer1", "priority": 1}]
    )

    async def scenario() -> None:
        async with clients(hub) as c:
            connector = await c.connector(status)
            dashboard = await c.dashboard(client_connect())
            assert_replayed(await recv(dashboard), status, online=True)
            await assert_quiet(dashboard, connector)

    run(scenario())


def test_latest_node_status_of_a_node_replaces_the_cached_one(hub: Hub) -> None:
    """
    'should update cache when multiple NODE_STATUS messages from same node': only the latest
    status is replayed, with the seq it was broadcast with.
    """
    first = ns("connector-test", 100)
    second = ns(
        "connector-test", 200, routes=[{"prefix": "g.updated", "nextHop": "peer2", "priority": 2}]
    )

    async def scenario() -> None:
        async with clients(hub) as c:
            listener = await c.open()
            connector = await c.connector(first, second)
            live = await recv_n(listener, 2)
            dashboard = await c.dashboard(client_connect())
            replayed = await recv(dashboard)
            assert_replayed(replayed, second, online=True)
            assert replayed["seq"] == live[1]["seq"] > live[0]["seq"]
            await assert_quiet(dashboard, listener, connector)

    run(scenario())


@pytest.mark.parametrize("form", CONNECT_FORMS)
def test_replayed_node_status_is_the_first_frame_after_client_connect(hub: Hub, form: str) -> None:
    """
    'should send cached messages in correct JSON format': the first frame after
    CLIENT_CONNECT is the cached NODE_STATUS envelope (no hello or ack before it); before
    CLIENT_CONNECT the silent connection heard the live status once, as a listener.
    """
    status = ns("connector-test", 500)

    async def scenario() -> None:
        async with clients(hub) as c:
            client = await c.open()
            connector = await c.connector(status)
            assert_relayed(await recv(client), status)
            await assert_quiet(client)
            await client.send(dumps(CONNECT_FORMS[form]))
            first = await recv(client)
            assert first["type"] == "NODE_STATUS"
            assert first["nodeId"] == "connector-test"
            assert "timestamp" in first
            assert "data" in first
            assert_replayed(first, status, online=True)
            await assert_quiet(client, connector)

    run(scenario())


def test_non_telemetry_message_is_refused_and_not_cached(shared_hub: Hub) -> None:
    """
    'should ignore non-telemetry messages and not cache them': an unknown type gets one
    UNKNOWN_TYPE error frame, the sender stays open and is not bound to its nodeId, nothing
    reaches a dashboard, and nothing is replayed.
    """
    invalid = {"type": "INVALID_TYPE", "nodeId": "connector-test", "timestamp": iso(), "data": {}}
    packet = ex.packet_sent("connector-other")

    async def scenario() -> None:
        async with clients(shared_hub) as c:
            dashboard = await c.dashboard(client_connect())
            sender = await c.connector(invalid)
            error = await recv(sender)
            assert (error["type"], error["reason"]) == ("ERROR", "UNKNOWN_TYPE")
            later = await c.dashboard(client_connect())
            await assert_quiet(sender, dashboard, later)
            # not registered as connector-test: it may still speak for another node
            await sender.send(dumps(packet))
            assert_relayed(await recv(dashboard), packet)
            assert_relayed(await recv(later), packet)
            await assert_quiet(sender, dashboard, later)

    run(scenario())


def test_cache_persists_across_multiple_client_connections(hub: Hub) -> None:
    """
    'should persist cache across multiple client connections': a second dashboard, after
    the first closed, is replayed the same status once.
    """
    status = ns("connector-cache-test", 300)

    async def scenario() -> None:
        async with clients(hub) as c:
            connector = await c.connector(status)
            client1 = await c.dashboard(client_connect("client1"))
            first = await recv(client1)
            assert_replayed(first, status, online=True)
            await assert_quiet(client1)
            await client1.close()
            client2 = await c.dashboard(client_connect("client2"))
            second = await recv(client2)
            assert second == first
            await assert_quiet(client2, connector)

    run(scenario())


def test_client_connect_replays_every_cached_node_status(hub: Hub) -> None:
    """
    'CLIENT_CONNECT message triggers replay of all cached NODE_STATUS (AC 7)': the statuses
    of connector-1, -2 and -3 are replayed, one frame each, in the order they first reported.
    """
    statuses = [ns(f"connector-{i}", 100) for i in (1, 2, 3)]

    async def scenario() -> None:
        async with clients(hub) as c:
            connectors = [await c.connector(status) for status in statuses]
            dashboard = await c.dashboard(client_connect())
            for status in statuses:
                assert_replayed(await recv(dashboard), status, online=True)
            await assert_quiet(dashboard, *connectors)

    run(scenario())


def test_new_client_receives_one_frame_per_cached_node(hub: Hub) -> None:
    """
    'new client receives N cached messages where N = number of cached nodes': two nodes, one
    of which reported twice, are replayed in exactly two frames.
    """
    a_first, a_latest, b = ns("connector-A"), ns("connector-A", 200), ns("connector-B")

    async def scenario() -> None:
        async with clients(hub) as c:
            connector_a = await c.connector(a_first)
            connector_b = await c.connector(b)
            await connector_a.send(dumps(a_latest))
            await handled(connector_a)
            dashboard = await c.dashboard(client_connect())
            assert_replayed(await recv(dashboard), a_latest, online=True)
            assert_replayed(await recv(dashboard), b, online=True)
            await assert_quiet(dashboard, connector_a, connector_b)

    run(scenario())


def test_multiple_clients_receive_independent_replays(hub: Hub) -> None:
    """
    'multiple clients receive independent replays without interference': each of two
    dashboards is replayed the status exactly once; the second's CLIENT_CONNECT sends
    nothing to the first.
    """
    status = ns("connector-independent", 100)

    async def scenario() -> None:
        async with clients(hub) as c:
            connector = await c.connector(status)
            client1 = await c.open()
            client2 = await c.open()
            await asyncio.gather(
                client1.send(dumps(client_connect("client1"))),
                client2.send(dumps(client_connect("client2"))),
            )
            for client in (client1, client2):
                assert_replayed(await recv(client), status, online=True)
            await assert_quiet(client1, client2, connector)

    run(scenario())


# == describe 'Payment Channel Telemetry (Story 8.10)': the original read its memory
# (getAllActiveChannels); here its HTTP API, GET /api/channels, says the same.

#: a key absent from the object, as JSON.stringify leaves out an undefined property
ABSENT = object()


def channel_opened(
    channel_id: str,
    peer_id: str = "connector-b",
    token_address: str = "0xToken",
    token_symbol: str = "USDC",
    deposits: Json | None = None,
) -> Json:
    return {
        "type": "PAYMENT_CHANNEL_OPENED",
        "timestamp": "2026-01-09T12:00:00.000Z",
        "nodeId": "connector-a",
        "channelId": channel_id,
        "participants": ["0xAddress1", "0xAddress2"],
        "peerId": peer_id,
        "tokenAddress": token_address,
        "tokenSymbol": token_symbol,
        "settlementTimeout": 86400,
        "initialDeposits": (
            deposits
            if deposits is not None
            else {"0xAddress1": "1000000000000000000", "0xAddress2": "0"}
        ),
    }


def opened_channel_state(event: Json) -> Json:
    """The original's DashboardChannelState for a PAYMENT_CHANNEL_OPENED, as JSON."""
    state = {
        "channelId": event["channelId"],
        "nodeId": event["nodeId"],
        "peerId": event.get("peerId", ABSENT),
        "participants": event.get("participants", ABSENT),
        "tokenAddress": event.get("tokenAddress", ABSENT),
        "tokenSymbol": event.get("tokenSymbol", ABSENT),
        "settlementTimeout": event.get("settlementTimeout", ABSENT),
        "deposits": event.get("initialDeposits", ABSENT),
        "myNonce": 0,
        "theirNonce": 0,
        "myTransferred": "0",
        "theirTransferred": "0",
        "status": "active",
        "openedAt": event["timestamp"],
        "lastActivityAt": event["timestamp"],
    }
    return {k: v for k, v in state.items() if v is not ABSENT}


def assert_state(got: Json, expected: Json) -> None:
    assert got == expected
    assert list(got) == list(expected), "key order differs from the original's"


def test_payment_channel_opened_is_stored_in_channel_state(hub: Hub) -> None:
    """
    'should store PAYMENT_CHANNEL_OPENED event in channel state': one channel, active, with
    zero nonces and transfers and the original's fields.
    """
    opened = channel_opened("0x1234567890abcdef")

    async def scenario() -> None:
        assert await hub.api("/api/channels") == []
        async with clients(hub) as c:
            await c.connector(opened)
            channels = await hub.api("/api/channels")
        assert len(channels) == 1
        channel = channels[0]
        assert channel["channelId"] == "0x1234567890abcdef"
        assert channel["nodeId"] == "connector-a"
        assert channel["peerId"] == "connector-b"
        assert channel["tokenSymbol"] == "USDC"
        assert channel["status"] == "active"
        assert (channel["myNonce"], channel["theirNonce"]) == (0, 0)
        assert (channel["myTransferred"], channel["theirTransferred"]) == ("0", "0")
        assert_state(channel, opened_channel_state(opened))

    run(scenario())


def test_payment_channel_balance_update_updates_channel_state(hub: Hub) -> None:
    """
    'should update channel state on PAYMENT_CHANNEL_BALANCE_UPDATE event': nonces,
    transfers and lastActivityAt are the update's.
    """
    opened = channel_opened("0xabc123")
    update = {
        "type": "PAYMENT_CHANNEL_BALANCE_UPDATE",
        "timestamp": "2026-01-09T12:01:00.000Z",
        "nodeId": "connector-a",
        "channelId": "0xabc123",
        "myNonce": 5,
        "theirNonce": 3,
        "myTransferred": "5000000000000000000",
        "theirTransferred": "2000000000000000000",
    }

    async def scenario() -> None:
        async with clients(hub) as c:
            await c.connector(opened, update)
            channels = await hub.api("/api/channels")
        assert len(channels) == 1
        expected = {
            **opened_channel_state(opened),
            "myNonce": 5,
            "theirNonce": 3,
            "myTransferred": "5000000000000000000",
            "theirTransferred": "2000000000000000000",
            "lastActivityAt": "2026-01-09T12:01:00.000Z",
        }
        assert_state(channels[0], expected)

    run(scenario())


SETTLED = {
    "type": "PAYMENT_CHANNEL_SETTLED",
    "timestamp": "2026-01-09T14:00:00.000Z",
    "nodeId": "connector-a",
    "channelId": "0xdef456",
    "finalBalances": {"0xAddress1": "3000000000000000000", "0xAddress2": "2000000000000000000"},
    "settlementType": "cooperative",
}


def test_payment_channel_settled_updates_channel_status(hub: Hub) -> None:
    """
    'should update channel status on PAYMENT_CHANNEL_SETTLED event': the channel is still
    listed, settled, with settledAt the event's timestamp.
    """
    opened = channel_opened("0xdef456", token_symbol="DAI")

    async def scenario() -> None:
        async with clients(hub) as c:
            await c.connector(opened, SETTLED)
            channels = await hub.api("/api/channels")
        assert len(channels) == 1
        assert channels[0]["channelId"] == "0xdef456"
        assert channels[0]["status"] == "settled"
        assert channels[0]["settledAt"] == "2026-01-09T14:00:00.000Z"
        assert list(channels[0])[-1] == "settledAt"

    run(scenario())


def test_payment_channel_settled_leaves_last_activity_as_it_was(hub: Hub) -> None:
    """
    After PAYMENT_CHANNEL_SETTLED the channel's state is the opened one with only status
    and settledAt changed: the original did not touch lastActivityAt there (it did for XRP).
    """
    opened = channel_opened("0xdef456", token_symbol="DAI")

    async def scenario() -> None:
        async with clients(hub) as c:
            await c.connector(opened, SETTLED)
            channels = await hub.api("/api/channels")
        expected = {
            **opened_channel_state(opened),
            "status": "settled",
            "settledAt": "2026-01-09T14:00:00.000Z",
        }
        assert_state(channels[0], expected)

    run(scenario())


def test_payment_channel_events_are_broadcast_to_clients(shared_hub: Hub) -> None:
    """
    'should broadcast payment channel events to clients': the dashboard receives the flat
    PAYMENT_CHANNEL_OPENED exactly once, unchanged.
    """
    opened = channel_opened("0xbroadcast123")

    async def scenario() -> None:
        async with clients(shared_hub) as c:
            dashboard = await c.dashboard(client_connect("dashboard-client"))
            connector = await c.connector(opened)
            message = await recv(dashboard)
            assert message["type"] == "PAYMENT_CHANNEL_OPENED"
            assert message["channelId"] == "0xbroadcast123"
            assert message["peerId"] == "connector-b"
            assert_relayed(message, opened)
            await assert_quiet(dashboard, connector)

    run(scenario())


def test_balance_update_for_unknown_channel_creates_no_channel(hub: Hub) -> None:
    """
    'should handle unknown channel in balance update gracefully': no channel is created;
    the update is still broadcast, as the original did, and the sender gets no error.
    """
    update = {
        "type": "PAYMENT_CHANNEL_BALANCE_UPDATE",
        "timestamp": "2026-01-09T12:01:00.000Z",
        "nodeId": "connector-a",
        "channelId": "0xnonexistent",
        "myNonce": 1,
        "theirNonce": 0,
        "myTransferred": "100",
        "theirTransferred": "0",
    }

    async def scenario() -> None:
        async with clients(hub) as c:
            dashboard = await c.dashboard()
            connector = await c.connector(update)
            assert_relayed(await recv(dashboard), update)
            await assert_quiet(dashboard, connector)
            assert await hub.api("/api/channels") == []

    run(scenario())


def test_multiple_channels_are_tracked_simultaneously(hub: Hub) -> None:
    """
    'should handle multiple channels simultaneously': three channels opened back to back are
    listed, in the order they opened, each as opened.
    """
    opened = [
        channel_opened("0xchannel1", "connector-b", "0xToken1", "USDC", {}),
        channel_opened("0xchannel2", "connector-c", "0xToken2", "DAI", {}),
        channel_opened("0xchannel3", "connector-d", "0xToken3", "USDT", {}),
    ]

    async def scenario() -> None:
        async with clients(hub) as c:
            await c.connector(*opened)
            channels = await hub.api("/api/channels")
        assert len(channels) == 3
        assert sorted(ch["channelId"] for ch in channels) == [
            "0xchannel1",
            "0xchannel2",
            "0xchannel3",
        ]
        for got, event in zip(channels, opened, strict=True):
            assert_state(got, opened_channel_state(event))

    run(scenario())


def test_xrp_channel_lifecycle_in_channel_state(hub: Hub) -> None:
    """
    XRP_CHANNEL_OPENED, _CLAIMED and _CLOSED give the original's XRP DashboardChannelState:
    settlementMethod 'xrp', the xrp* fields, the claimed balance, then settled.
    """
    opened = ex.FLAT_EVENTS["XRP_CHANNEL_OPENED"]
    claimed = ex.FLAT_EVENTS["XRP_CHANNEL_CLAIMED"]
    closed = ex.FLAT_EVENTS["XRP_CHANNEL_CLOSED"]
    state = {
        "channelId": opened["channelId"],
        "nodeId": "connector-a",
        "peerId": "peer-bob",
        "settlementMethod": "xrp",
        "xrpAccount": opened["account"],
        "xrpDestination": opened["destination"],
        "xrpAmount": opened["amount"],
        "xrpBalance": "0",
        "xrpSettleDelay": opened["settleDelay"],
        "xrpPublicKey": opened["publicKey"],
        "participants": [opened["account"], opened["destination"]],
        "tokenAddress": "XRP",
        "tokenSymbol": "XRP",
        "settlementTimeout": opened["settleDelay"],
        "deposits": {},
        "myNonce": 0,
        "theirNonce": 0,
        "myTransferred": "0",
        "theirTransferred": "0",
        "status": "active",
        "openedAt": opened["timestamp"],
        "lastActivityAt": opened["timestamp"],
    }

    async def scenario() -> None:
        async with clients(hub) as c:
            connector = await c.connector(opened)
            assert_state((await hub.api("/api/channels"))[0], state)
            await connector.send(dumps(claimed))
            await handled(connector)
            state.update(xrpBalance=claimed["claimAmount"], lastActivityAt=claimed["timestamp"])
            assert_state((await hub.api("/api/channels"))[0], state)
            await connector.send(dumps(closed))
            await handled(connector)
            state.update(status="settled", settledAt=closed["timestamp"])
            state.update(lastActivityAt=closed["timestamp"])
            channels = await hub.api("/api/channels")
            assert len(channels) == 1
            assert_state(channels[0], state)

    run(scenario())


# == packages/dashboard/test/integration/channel-visualization.test.ts: older connectors
# (Unix ms timestamps, no peerId), a bare CLIENT_CONNECT. The state is read in the last
# original hub's shape (flat nonces, not currentBalances).


def legacy_opened(channel_id: str, node_id: str, token_symbol: str = "USDC") -> Json:
    return {
        "type": "PAYMENT_CHANNEL_OPENED",
        "timestamp": 1736424000000,
        "nodeId": node_id,
        "channelId": channel_id,
        "participants": ["0x742d35Cc6634C0532925a3b844Bc9e7595f0bEb", "0x1234"],
        "tokenAddress": "0xToken",
        "tokenSymbol": token_symbol,
        "settlementTimeout": 86400,
        "initialDeposits": {"0x742d35Cc6634C0532925a3b844Bc9e7595f0bEb": "1000000", "0x1234": "0"},
    }


def test_legacy_channel_opened_event_flow(hub: Hub) -> None:
    """
    'Channel opened event flow': a bare-CLIENT_CONNECT client receives the OPENED unchanged,
    and the channel is listed active with zero nonces.
    """
    opened = legacy_opened("0xlegacy1", "test-connector-a")

    async def scenario() -> None:
        async with clients(hub) as c:
            client = await c.dashboard(ex.CLIENT_CONNECT_BARE)
            connector = await c.connector(opened)
            message = await recv(client)
            assert message["participants"] == opened["participants"]
            assert_relayed(message, opened)
            await assert_quiet(client, connector)
            channels = await hub.api("/api/channels")
        assert len(channels) == 1
        assert channels[0]["status"] == "active"
        assert channels[0]["tokenSymbol"] == "USDC"
        assert (channels[0]["myNonce"], channels[0]["theirNonce"]) == (0, 0)

    run(scenario())


def test_legacy_channel_opened_without_peer_id_is_listed_without_one(hub: Hub) -> None:
    """
    A channel opened by an older connector (no peerId) is listed without a peerId key: the
    original's JSON.stringify left the undefined property out.
    """
    opened = legacy_opened("0xlegacy1", "test-connector-a")

    async def scenario() -> None:
        async with clients(hub) as c:
            await c.connector(opened)
            channels = await hub.api("/api/channels")
        assert_state(channels[0], opened_channel_state(opened))

    run(scenario())


def test_legacy_channel_balance_update_event_flow(hub: Hub) -> None:
    """
    'Channel balance update event flow': the client receives the update with its integer
    nonces unchanged, and the channel's nonces and transfers are the update's.
    """
    opened = legacy_opened("0xlegacy2", "test-connector-a")
    update = {**ex.FLAT_EVENTS["PAYMENT_CHANNEL_BALANCE_UPDATE"], "nodeId": "test-connector-a"}
    update["channelId"] = "0xlegacy2"

    async def scenario() -> None:
        async with clients(hub) as c:
            client = await c.dashboard(ex.CLIENT_CONNECT_BARE)
            connector = await c.connector(opened, update)
            assert_relayed(await recv(client), opened)
            message = await recv(client)
            assert (message["myNonce"], message["theirNonce"]) == (42, 38)
            assert_relayed(message, update)
            await assert_quiet(client, connector)
            channels = await hub.api("/api/channels")
        assert len(channels) == 1
        got = channels[0]
        assert (got["myNonce"], got["theirNonce"]) == (42, 38)
        assert (got["myTransferred"], got["theirTransferred"]) == ("250000000", "180000000")
        assert got["lastActivityAt"] == update["timestamp"]

    run(scenario())


def test_legacy_channel_settled_event_flow(hub: Hub) -> None:
    """
    'Channel settled event flow': the client receives the SETTLED with its settlementType,
    and the channel is listed settled with its settledAt.
    """
    opened = legacy_opened("0xlegacy3", "test-connector-a")
    settled = {
        "type": "PAYMENT_CHANNEL_SETTLED",
        "timestamp": 1736427600000,
        "nodeId": "test-connector-a",
        "channelId": "0xlegacy3",
        "finalBalances": {"0x742d": "750000000", "0x1234": "1250000000"},
        "settlementType": "cooperative",
    }

    async def scenario() -> None:
        async with clients(hub) as c:
            client = await c.dashboard(ex.CLIENT_CONNECT_BARE)
            connector = await c.connector(opened, settled)
            assert_relayed(await recv(client), opened)
            message = await recv(client)
            assert message["settlementType"] == "cooperative"
            assert_relayed(message, settled)
            await assert_quiet(client, connector)
            channels = await hub.api("/api/channels")
        assert len(channels) == 1
        assert channels[0]["status"] == "settled"
        assert channels[0]["settledAt"] == 1736427600000

    run(scenario())


def test_legacy_multiple_channels_tracked_correctly(hub: Hub) -> None:
    """
    'Multiple channels tracked correctly': three channels from two nodes, each received by
    the client, are listed once each: 2 USDC and 1 WETH, 2 of node a and 1 of node b.
    """
    a, b = "test-connector-a", "test-connector-b"
    opened = [
        legacy_opened("0xmulti1", a, "USDC"),
        legacy_opened("0xmulti2", a, "WETH"),
        legacy_opened("0xmulti3", b, "USDC"),
    ]

    async def scenario() -> None:
        async with clients(hub) as c:
            client = await c.dashboard(ex.CLIENT_CONNECT_BARE)
            connector_a = await c.connector(opened[0], opened[1])
            connector_b = await c.connector(opened[2])
            for event in opened:
                assert_relayed(await recv(client), event)
            await assert_quiet(client, connector_a, connector_b)
            channels = await hub.api("/api/channels")
        assert [ch["channelId"] for ch in channels] == ["0xmulti1", "0xmulti2", "0xmulti3"]
        assert [ch["tokenSymbol"] for ch in channels].count("USDC") == 2
        assert [ch["tokenSymbol"] for ch in channels].count("WETH") == 1
        assert [ch["nodeId"] for ch in channels] == [a, a, b]

    run(scenario())


def test_new_client_is_sent_no_channel_state_frame(hub: Hub) -> None:
    """
    'Initial channel state sent to new client', as the last original hub did it: a client
    connecting after a channel opened is replayed the NODE_STATUS only, and no
    INITIAL_CHANNEL_STATE; the channel is in GET /api/channels.
    """
    status = ns("test-connector-a")
    opened = legacy_opened("0xinitial", "test-connector-a")

    async def scenario() -> None:
        async with clients(hub) as c:
            connector = await c.connector(status, opened)
            client = await c.dashboard(ex.CLIENT_CONNECT_BARE)
            assert_replayed(await recv(client), status, online=True)
            await assert_quiet(client, connector)
            channels = await hub.api("/api/channels")
        assert [(ch["channelId"], ch["status"]) for ch in channels] == [("0xinitial", "active")]

    run(scenario())


# == the original's HTTP API: /api/balances and /api/settlements/recent

BALANCE_KEYS = [
    "peerId",
    "tokenId",
    "debitBalance",
    "creditBalance",
    "netBalance",
    "creditLimit",
    "settlementThreshold",
    "settlementState",
    "lastUpdated",
]


def balance_state(event: Json) -> Json:
    """The original's BalanceState for an ACCOUNT_BALANCE, as JSON, plus our nodeId."""
    state = {
        "peerId": event["peerId"],
        "tokenId": event["tokenId"],
        "debitBalance": event["debitBalance"],
        "creditBalance": event["creditBalance"],
        "netBalance": event["netBalance"],
        "creditLimit": event.get("creditLimit", ABSENT),
        "settlementThreshold": event.get("settlementThreshold", ABSENT),
        "settlementState": event["settlementState"],
        "lastUpdated": event["timestamp"],
        "nodeId": event["nodeId"],
    }
    return {k: v for k, v in state.items() if v is not ABSENT}


def test_api_balances_is_the_latest_balance_per_node_peer_and_token(hub: Hub) -> None:
    """
    GET /api/balances is a bare array of the original's BalanceState (plus nodeId), one per
    node, peer and token in the order first seen, the latest replacing the earlier whole:
    optional keys absent when not sent, extra event fields left out.
    """
    full = {**ex.FLAT_EVENTS["ACCOUNT_BALANCE"], "note": "not a BalanceState field"}
    partial = {
        "type": "ACCOUNT_BALANCE",
        "nodeId": "connector-a",
        "peerId": "peer-c",
        "tokenId": "ILP",
        "debitBalance": "5",
        "creditBalance": "0",
        "netBalance": "5",
        "settlementState": "IDLE",
        "timestamp": "2026-01-03T12:00:01.000Z",
    }
    update = {
        **partial,
        "peerId": "peer-b",
        "creditBalance": "6000",
        "netBalance": "-5995",
        "settlementState": "SETTLEMENT_PENDING",
        "timestamp": "2026-01-03T12:00:02.000Z",
    }
    other_node = {**full, "nodeId": "connector-b", "creditBalance": "7"}

    async def scenario() -> None:
        assert await hub.api("/api/balances") == []
        async with clients(hub) as c:
            await c.connector(full, partial)
            assert await hub.api("/api/balances") == [balance_state(full), balance_state(partial)]
            await c.connector(other_node)
            await c.connector(update)  # connector-a again, on a connection of its own
            balances = await hub.api("/api/balances")
        expected = [balance_state(update), balance_state(partial), balance_state(other_node)]
        assert balances == expected
        for got in balances:
            assert list(got) == [k for k in [*BALANCE_KEYS, "nodeId"] if k in got]
        optional = {"creditLimit", "settlementThreshold"}
        assert set(balances[0]) == {*BALANCE_KEYS, "nodeId"} - optional
        assert set(balances[2]) == {*BALANCE_KEYS, "nodeId"}

    run(scenario())


def test_api_settlements_recent_is_the_last_100_newest_first(hub: Hub) -> None:
    """
    GET /api/settlements/recent is a bare array of the last 100 SETTLEMENT_TRIGGERED and
    SETTLEMENT_COMPLETED events received, each as sent plus seq, newest first by the
    instant of their timestamp (ISO in any zone or Unix ms), ties in arrival order.
    """
    base_ms = 1767441600000  # 2026-01-03T12:00:00Z
    events: list[Json] = []
    instants: dict[str, int] = {}
    for i in range(105):
        # arrival order is not time order; 60 and 61 happened at the same instant
        ms = base_ms + (((60 if i == 61 else i) * 37) % 105) * 1000
        stamp: Any = iso(ms)
        if i % 11 == 0:
            stamp = ms
        elif i % 7 == 0:
            stamp = datetime.fromtimestamp(ms / 1000, PLUS_ONE).isoformat(timespec="milliseconds")
        template = "SETTLEMENT_TRIGGERED" if i % 2 else "SETTLEMENT_COMPLETED"
        events.append({**ex.FLAT_EVENTS[template], "peerId": f"peer-{i}", "timestamp": stamp})
        instants[f"peer-{i}"] = ms

    async def scenario() -> None:
        assert await hub.api("/api/settlements/recent") == []
        async with clients(hub) as c:
            await c.connector(*events)
            recent = await hub.api("/api/settlements/recent")
        kept = events[5:]
        expected = sorted(kept, key=lambda e: -instants[e["peerId"]])
        assert len(recent) == 100
        for got, sent in zip(recent, expected, strict=True):
            assert_relayed(got, sent)
        # seq follows arrival: the five oldest arrivals are the ones dropped
        by_seq = sorted(recent, key=lambda e: e["seq"])
        assert [e["peerId"] for e in by_seq] == [e["peerId"] for e in kept]

    run(scenario())


# == batches, as the connector's batching emitter sends them


def connector_batch(node_id: str, count: int) -> tuple[list[Json], str]:
    """
    A batch as TelemetryEmitter._flushBufferedEvents sends it: each buffered event as
    C{{type, nodeId, timestamp: new Date(event.timestamp).toISOString(), data}}, the frame
    C{JSON.stringify({batch: messages})}.
    """
    start_ms = 1767441600000
    messages = [
        {
            "type": "PACKET_RECEIVED",
            "nodeId": node_id,
            "timestamp": iso(start_ms + i // 10),
            "data": {
                "packetId": ex.packet_id(i),
                "packetType": "PREPARE",
                "source": "peer-b",
                "destination": f"g.connectorc.agent-{i:04d}.payments",
                "amount": str(1000 + i),
            },
        }
        for i in range(count)
    ]
    return messages, dumps({"batch": messages})


def test_full_default_batch_reaches_a_dashboard_event_by_event(shared_hub: Hub) -> None:
    """
    A full default batch (1,000 PACKET_RECEIVED, one ~270 KB text frame) reaches a dashboard
    and a listener as 1,000 frames, in the batch's order, each event as it was in the batch
    plus consecutive seqs; the connector is sent nothing.
    """
    messages, frame = connector_batch("connector-batch", 1000)
    assert 250_000 <= len(frame.encode()) <= 300_000

    async def scenario() -> None:
        async with clients(shared_hub) as c:
            dashboard = await c.dashboard()
            listener = await c.open()
            connector = await c.open()
            await connector.send(frame)
            for receiver in (dashboard, listener):
                received = await recv_n(receiver, 1000)
                for got, sent in zip(received, messages, strict=True):
                    assert_relayed(got, sent)
                seqs = [m["seq"] for m in received]
                assert seqs == list(range(seqs[0], seqs[0] + 1000))
            await assert_quiet(dashboard, listener, connector)

    run(scenario())


def test_batch_over_1000_events_is_refused_and_the_connection_stays_open(
    shared_hub: Hub,
) -> None:
    """
    A batch of 1,001 events is refused whole with one INVALID_BATCH error frame; nothing of
    it is broadcast, and the connection goes on sending.
    """
    _, frame = connector_batch("connector-big-batch", 1001)
    packet = ex.packet_sent("connector-big-batch")

    async def scenario() -> None:
        async with clients(shared_hub) as c:
            dashboard = await c.dashboard()
            connector = await c.open()
            await connector.send(frame)
            error = await recv(connector)
            assert (error["type"], error["reason"]) == ("ERROR", "INVALID_BATCH")
            assert "index" not in error
            await assert_quiet(connector, dashboard)
            await connector.send(dumps(packet))
            assert_relayed(await recv(dashboard), packet)
            await assert_quiet(connector, dashboard)

    run(scenario())


# == the connector's whole vocabulary


def test_every_type_of_the_vocabulary_is_relayed_unchanged(hub: Hub) -> None:
    """
    One connector of node connector-a sends every type of the vocabulary (each envelope
    type, each flat type, events without nodeId among them): a dashboard and a listener
    receive each once, unchanged, in order (an event without a nodeId of its own with a
    sourceNodeId added), and the connector gets no error frame.
    """
    envelopes = [
        ex.node_status("connector-a"),
        ex.packet_received("connector-a"),
        ex.route_lookup("connector-a"),
        ex.route_lookup("connector-a", None),
        ex.packet_sent("connector-a"),
        ex.log_event("connector-a"),
    ]
    flat = list(ex.FLAT_EVENTS.values())
    assert {e.get("nodeId", "connector-a") for e in flat} == {"connector-a"}
    assert any("nodeId" not in e for e in flat)
    sent = envelopes + flat
    vocabulary = {p.stem for p in shipped_schemas_dir().glob("*.json")} - {"CLIENT_CONNECT"}
    assert {m["type"] for m in sent} == vocabulary

    async def scenario() -> None:
        async with clients(hub) as c:
            dashboard = await c.dashboard()
            listener = await c.open()
            connector = await c.connector(*sent)
            for receiver in (dashboard, listener):
                for message in sent:
                    # an event naming no node says which connection's node sent it
                    added = () if "nodeId" in message else ("sourceNodeId",)
                    received = await recv(receiver)
                    assert_relayed(received, message, *added)
                    if added:
                        assert received["sourceNodeId"] == "connector-a"
            await assert_quiet(connector, dashboard, listener)

    run(scenario())


# == nodeId "unknown", as the settlement monitor sends it

#: the settlement monitor's frame when it was built without a nodeId (m2m notes 2.3)
UNKNOWN_NODE_FRAME = (
    '{"type":"SETTLEMENT_TRIGGERED","nodeId":"unknown","peerId":"peer-b","tokenId":"ILP",'
    '"currentBalance":"5500","threshold":"5000","exceedsBy":"500",'
    '"triggerReason":"THRESHOLD_EXCEEDED","timestamp":"2026-01-03T12:00:00.000Z"}'
)


def test_unknown_node_id_is_relayed_as_the_connections_own_node(hub: Hub) -> None:
    """
    The settlement monitor's SETTLEMENT_TRIGGERED with nodeId "unknown", on connector-a's
    connection, is accepted without an error frame and relayed with every field as sent
    plus sourceNodeId connector-a; no node "unknown" is ever replayed.
    """
    status = ex.node_status("connector-a")
    sent = json.loads(UNKNOWN_NODE_FRAME)

    async def scenario() -> None:
        async with clients(hub) as c:
            dashboard = await c.dashboard()
            connector = await c.connector(status)
            assert_relayed(await recv(dashboard), status)
            await connector.send(UNKNOWN_NODE_FRAME)
            relayed = await recv(dashboard)
            assert_relayed(relayed, sent, "sourceNodeId")
            assert relayed["nodeId"] == "unknown"
            assert relayed["sourceNodeId"] == "connector-a"
            await handled(connector)
            later = await c.dashboard()
            assert_replayed(await recv(later), status, online=True)
            await assert_quiet(connector, dashboard, later)
            assert await hub.api("/api/settlements/recent") == [relayed]

    run(scenario())


# == listen-only connections and the hub's own events


def test_listen_only_connection_gets_exactly_the_live_messages_and_no_replay(hub: Hub) -> None:
    """
    A connection that sends nothing is replayed nothing (though a node is cached) and then
    receives every live message exactly once, as sent, and no NODE_PRESENCE.
    """
    cached = ns("connector-a")
    live = [ns("connector-b"), ex.packet_received("connector-b"), ex.packet_sent("connector-b")]

    async def scenario() -> None:
        async with clients(hub) as c:
            connector_a = await c.connector(cached)
            listener = await c.open()
            await assert_quiet(listener)
            connector_b = await c.connector(*live)
            for message in live:
                assert_relayed(await recv(listener), message)
            await connector_b.close()
            await connector_a.close()
            await assert_quiet(listener)

    run(scenario())


@pytest.mark.parametrize("form", CONNECT_FORMS)
def test_plain_client_connect_never_receives_node_presence(hub: Hub, form: str) -> None:
    """
    A dashboard whose CLIENT_CONNECT asks for nothing more (bare or enveloped) gets the
    replay and the connectors' messages only: no NODE_PRESENCE when nodes come and go,
    while a dashboard that asked for them is sent all three.
    """
    cached = ns("connector-a")
    live = [ns("connector-b"), ex.packet_sent("connector-b")]

    async def scenario() -> None:
        async with clients(hub) as c:
            connector_a = await c.connector(cached)
            plain = await c.dashboard(CONNECT_FORMS[form])
            asked = await c.dashboard({"type": "CLIENT_CONNECT", "hubEvents": ["NODE_PRESENCE"]})
            for dashboard in (plain, asked):
                assert_replayed(await recv(dashboard), cached, online=True)
            connector_b = await c.connector(*live)
            await connector_b.close()
            await connector_a.close()
            for message in live:
                assert_relayed(await recv(plain), message)
            await assert_quiet(plain)
            heard = await extra_frames(asked)
        presence = ("NODE_PRESENCE", "connector-b", True), ("NODE_PRESENCE", "connector-b", False)
        assert [(m["type"], m["nodeId"], m.get("online")) for m in heard] == [
            presence[0],
            ("NODE_STATUS", "connector-b", None),
            ("PACKET_SENT", "connector-b", None),
            presence[1],
            ("NODE_PRESENCE", "connector-a", False),
        ]

    run(scenario())
