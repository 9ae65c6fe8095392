"""
The simulator's LOG lines, account balances, settlements and payment channels: valid against
the shipped schemas, at the rates a dashboard expects, consistent with the packets, and
what the hub's HTTP API then shows; and the simulator carrying on when the hub closes one
of its connections.
"""

from __future__ import annotations

import json
from collections import Counter
from itertools import pairwise
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.web.client import Agent, readBody

from telemetry_service.schemas import SchemaCatalog
from telemetry_service.tools.sim.chatter import RECENT_FACTS
from telemetry_service.tools.sim.cli import parse
from telemetry_service.tools.sim.ledger import BALANCE_EVERY, DEFAULT_SETTLEMENT_THRESHOLD, TOKEN
from telemetry_service.tools.sim.simulation import Simulation
from telemetry_service.tools.sim.topology import Topology

from .wsclient import RunningHub

PACKET_TYPES = {"NODE_STATUS", "PACKET_RECEIVED", "ROUTE_LOOKUP", "PACKET_SENT"}
NEW_TYPES = {
    "LOG",
    "ACCOUNT_BALANCE",
    "SETTLEMENT_TRIGGERED",
    "SETTLEMENT_COMPLETED",
    "PAYMENT_CHANNEL_OPENED",
    "PAYMENT_CHANNEL_BALANCE_UPDATE",
    "PAYMENT_CHANNEL_SETTLED",
    "XRP_CHANNEL_OPENED",
    "XRP_CHANNEL_CLAIMED",
}
LEVELS = {"debug", "info", "warn", "error"}


def run(
    seconds: float,
    kind: str = "linear",
    nodes: int = 5,
    rate: float = 5.0,
    seed: int = 3,
    **options: Any,
) -> tuple[Simulation, list[dict[str, Any]]]:
    """Run a simulation on a fake clock for C{seconds}; every event it sent, in order."""
    clock = Clock()
    sim = Simulation(
        clock, "ws://127.0.0.1:1/", Topology.build(kind, nodes), rate=rate, seed=seed, **options
    )
    events: list[dict[str, Any]] = []
    for connector in sim.connectors.values():
        connector.send = events.append  # type: ignore[method-assign]
    sim._loop.start(0.01, now=False)
    for _ in range(round(seconds * 100)):
        clock.advance(0.01)
    sim._loop.stop()
    return sim, events


def of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


def without_sent_at(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # sentAt is wall-clock time for --measure, the one thing a seed does not fix
    return [
        {**e, "data": {k: v for k, v in e["data"].items() if k != "sentAt"}} if "data" in e else e
        for e in events
    ]


# -- (a) every new message is valid


def test_the_whole_vocabulary_goes_out_and_all_of_it_is_valid(catalog: SchemaCatalog) -> None:
    # a low threshold: many settlements, channels spent and renewed, some failures
    sim, events = run(60, rate=20, settlement_threshold=200_000, settlement_seconds=0.5)
    for node in sim.connectors.values():
        events.append(node.status)
    counts = Counter(e["type"] for e in events)
    assert set(counts) == PACKET_TYPES | NEW_TYPES | {"XRP_CHANNEL_CLOSED"}
    for event in events:
        assert catalog.validate(event) == event["type"]
    completed = of(events, "SETTLEMENT_COMPLETED")
    assert {e["success"] for e in completed} == {True, False}
    assert all("errorMessage" in e for e in completed if not e["success"])
    assert {e["settlementType"] for e in completed} == {"EVM", "XRP"}


def test_a_seed_gives_the_same_events_and_the_same_packets_as_before() -> None:
    _, first = run(20, seed=9)
    _, again = run(20, seed=9)
    assert without_sent_at(first) == without_sent_at(again)
    # the rest of the vocabulary draws from a stream of its own: same seed, same packets
    _, packets_only = run(20, seed=9, packets_only=True)
    assert {e["type"] for e in packets_only} == PACKET_TYPES - {"NODE_STATUS"}
    assert without_sent_at(packets_only) == without_sent_at(
        [e for e in first if e["type"] in PACKET_TYPES]
    )


# -- rates at the default settings


def test_rates_at_the_default_settings() -> None:
    minutes = 5
    sim, events = run(60 * minutes)  # 5 nodes in a line at 5 packets/s, as telemetry-sim
    counts = Counter(e["type"] for e in events)
    assert 1.0 <= counts["LOG"] / 5 / (60 * minutes) <= 2.0  # per node per second
    levels = Counter(e["data"]["level"] for e in of(events, "LOG"))
    total = sum(levels.values())
    assert set(levels) == LEVELS
    assert levels["info"] > 0.7 * total
    assert 0.02 * total < levels["warn"] < 0.12 * total
    assert 0 < levels["error"] < 0.03 * total
    assert 2 <= counts["SETTLEMENT_TRIGGERED"] / minutes <= 10  # a few a minute
    assert counts["SETTLEMENT_COMPLETED"] >= counts["SETTLEMENT_TRIGGERED"] - 8
    assert counts["PAYMENT_CHANNEL_BALANCE_UPDATE"] + counts["XRP_CHANNEL_CLAIMED"] > 0
    # a balance every few packets across an account: both ends of each hop forwarded
    assert counts["ACCOUNT_BALANCE"] >= 2 * counts["PACKET_SENT"] / BALANCE_EVERY
    # one channel per link, opened at start-up, all on the first tick
    opened = of(events, "PAYMENT_CHANNEL_OPENED")
    assert ledger(sim).links == list(pairwise(sim.topology.nodes))
    first = opened[: len(ledger(sim).links)]
    assert [(e["nodeId"], e["peerId"]) for e in first] == ledger(sim).links
    assert {e["timestamp"] for e in first} == {"1970-01-01T00:00:00.010Z"}
    assert len(of(events, "XRP_CHANNEL_OPENED")) >= 1
    # what it keeps stays bounded
    assert len(ledger(sim).channels) == len(ledger(sim).links)
    assert len(ledger(sim).debts) == 2 * len(ledger(sim).links)
    logs = sim.logs
    assert logs is not None
    assert len(logs.forwards) <= RECENT_FACTS and len(logs.failures) <= RECENT_FACTS


def ledger(sim: Simulation) -> Any:
    assert sim.ledger is not None
    return sim.ledger


def test_packets_only_sends_what_it_sent_before() -> None:
    sim, events = run(10, packets_only=True)
    assert {e["type"] for e in events} == PACKET_TYPES - {"NODE_STATUS"}
    assert sim.ledger is None and sim.logs is None
    assert parse(["--packets-only"]).packets_only
    assert parse([]).settlement_threshold == DEFAULT_SETTLEMENT_THRESHOLD
    assert parse(["--settlement-threshold", "1000"]).settlement_threshold == 1000


# -- (c) LOG events


def test_log_events_have_the_fields_of_the_real_connector() -> None:
    _, events = run(30, rate=10, settlement_threshold=300_000)
    logs = of(events, "LOG")
    assert logs
    forwarded = {
        (e["nodeId"], e["data"]["nextHop"], e["data"]["packetId"])
        for e in events
        if e["type"] == "PACKET_SENT"
    }
    no_route = {
        (e["nodeId"], e["data"]["destination"])
        for e in of(events, "ROUTE_LOOKUP")
        if e["data"]["selectedPeer"] is None
    }
    messages: list[str] = []
    for log in logs:
        assert set(log) == {"type", "nodeId", "timestamp", "data"}
        data = log["data"]
        assert data["level"] in LEVELS
        assert isinstance(data["message"], str) and data["message"]
        assert data["nodeId"] == log["nodeId"]
        assert data["timestamp"] == log["timestamp"]
        assert set(data) <= {"level", "timestamp", "nodeId", "message", "correlationId", "context"}
        assert isinstance(data.get("context", {}), dict)
        message = data["message"]
        messages.append(message)
        if message.startswith("Forwarded packet to peer "):
            # written from a packet this node really forwarded to that peer
            peer = message.removeprefix("Forwarded packet to peer ")
            assert (log["nodeId"], peer, data["correlationId"]) in forwarded
            assert data["context"]["packetId"] == data["correlationId"]
        if message.startswith("Route lookup failed for "):
            assert (log["nodeId"], data["context"]["destination"]) in no_route
        if message.startswith("Settlement threshold reached for peer "):
            assert data["context"]["tokenId"] == TOKEN
    for expected in (
        "Forwarded packet to peer ",
        "Route lookup failed for ",
        "Settlement threshold reached for peer ",
        "Settlement completed with peer ",
    ):
        assert any(m.startswith(expected) for m in messages), expected


# -- balances, settlements and channels follow the packets


def test_balances_settlements_and_channels_add_up() -> None:
    sim, events = run(60, rate=20, settlement_threshold=200_000, settlement_seconds=0.5)
    book = ledger(sim)
    threshold = book.threshold
    # replay the stream: what each node owes each peer, from the packets and settlements
    owed: dict[tuple[str, str], int] = {}
    amounts: dict[str, int] = {}
    settling: set[tuple[str, str]] = set()
    states: Counter[str] = Counter()
    current_channel: dict[tuple[str, str], str] = {}
    nonces: dict[str, tuple[int, int]] = {}
    for e in events:
        kind, node = e["type"], e["nodeId"]
        if kind == "PACKET_RECEIVED":
            amounts[e["data"]["packetId"]] = int(e["data"]["amount"])
        elif kind == "PACKET_SENT":
            owed[(node, e["data"]["nextHop"])] += amounts[e["data"]["packetId"]]
        elif kind == "ACCOUNT_BALANCE":
            peer = e["peerId"]
            if (node, peer) not in owed:  # the opening balances, before any packet
                owed[(node, peer)] = int(e["creditBalance"])
                owed.setdefault((peer, node), int(e["debitBalance"]))
            assert e["tokenId"] == TOKEN
            assert int(e["creditBalance"]) == owed[(node, peer)]
            assert int(e["debitBalance"]) == owed[(peer, node)]
            assert int(e["netBalance"]) == int(e["debitBalance"]) - int(e["creditBalance"])
            assert e["settlementThreshold"] == str(threshold)
            state = e["settlementState"]
            states[state] += 1
            if (node, peer) in settling:
                assert state in ("SETTLEMENT_PENDING", "SETTLEMENT_IN_PROGRESS")
            else:
                assert state == "IDLE"
        elif kind == "SETTLEMENT_TRIGGERED":
            key = (node, e["peerId"])
            assert key not in settling  # one settlement at a time per account
            assert int(e["currentBalance"]) == owed[key] >= threshold
            assert int(e["exceedsBy"]) == owed[key] - threshold
            settling.add(key)
        elif kind == "SETTLEMENT_COMPLETED":
            key = (node, e["peerId"])
            settling.remove(key)
            assert int(e["previousBalance"]) == owed[key]
            settled = int(e["settledAmount"])
            if e["success"]:
                assert settled >= threshold
                owed[key] -= settled
            else:
                assert settled == 0
            assert int(e["newBalance"]) == owed[key]
        elif kind == "PAYMENT_CHANNEL_OPENED":
            current_channel[(node, e["peerId"])] = e["channelId"]
            nonces[e["channelId"]] = (0, 0)
            assert set(e["initialDeposits"]) == set(e["participants"])
        elif kind == "PAYMENT_CHANNEL_BALANCE_UPDATE":
            # from the channel's owner, on the link's current channel, one proof at a time
            assert e["channelId"] in (v for (o, _), v in current_channel.items() if o == node)
            mine, theirs = nonces[e["channelId"]]
            assert (e["myNonce"], e["theirNonce"]) in ((mine + 1, theirs), (mine, theirs + 1))
            nonces[e["channelId"]] = (e["myNonce"], e["theirNonce"])
    assert states["SETTLEMENT_PENDING"] and states["SETTLEMENT_IN_PROGRESS"] and states["IDLE"]
    # the simulator's own books agree with the stream
    assert owed == {key: debt.owed for key, debt in book.debts.items()}
    # every settlement paid shows in a channel: EVM proofs and XRP claims add up to them
    paid = Counter[str]()
    for e in of(events, "SETTLEMENT_COMPLETED"):
        paid[e["settlementType"]] += int(e["settledAmount"])
    proofs = last_by(of(events, "PAYMENT_CHANNEL_BALANCE_UPDATE"), "channelId").values()
    assert paid["EVM"] == sum(int(e["myTransferred"]) + int(e["theirTransferred"]) for e in proofs)
    claims = last_by(of(events, "XRP_CHANNEL_CLAIMED"), "channelId").values()
    assert paid["XRP"] == sum(int(e["claimAmount"]) for e in claims) > 0
    # spent channels were settled on-chain and renewed; their deposits are all paid out
    deposits = {e["channelId"]: e["initialDeposits"] for e in of(events, "PAYMENT_CHANNEL_OPENED")}
    settled = of(events, "PAYMENT_CHANNEL_SETTLED")
    assert settled
    for e in settled:
        opened = deposits[e["channelId"]]
        assert set(e["finalBalances"]) == set(opened)
        assert sum(map(int, e["finalBalances"].values())) == sum(map(int, opened.values()))
    assert len(deposits) == len(book.links) + len(settled)


def last_by(events: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {e[key]: e for e in events}


def test_stopping_drops_the_settlements_under_way() -> None:
    sim, events = run(5, rate=20, settlement_threshold=100_000, settlement_seconds=30)
    assert of(events, "SETTLEMENT_TRIGGERED") and not of(events, "SETTLEMENT_COMPLETED")
    ledger(sim).stop()
    count = len(events)
    clock = sim.reactor
    clock.advance(60)
    assert len(events) == count


# -- (b) what the hub's HTTP API shows, against the real hub in this process


async def api(hub: RunningHub, path: str) -> Any:
    response = await Agent(reactor).request(
        b"GET", f"http://127.0.0.1:{hub.http_port}{path}".encode()
    )
    assert response.code == 200, path
    return json.loads(await readBody(response))


@pytest_twisted.ensureDeferred
async def test_the_hub_api_shows_the_simulated_balances_settlements_and_channels(
    start: Any, catalog: SchemaCatalog
) -> None:
    hub = start()
    sim = Simulation(
        reactor,
        f"ws://127.0.0.1:{hub.port}/",
        Topology.build("linear", 4),
        rate=60,
        seed=7,
        hop_seconds=0.001,
        settlement_threshold=500_000,
        settlement_seconds=0.2,
    )
    sent: list[dict[str, Any]] = []
    for connector in sim.connectors.values():
        send = connector.send

        def record(message: dict[str, Any], send: Any = send) -> None:
            sent.append(message)
            send(message)

        connector.send = record  # type: ignore[method-assign]
    sim.start()
    await deferLater(reactor, 2.0, lambda: None)
    await sim.stop()
    await deferLater(reactor, 0.1, lambda: None)
    report = sim.report()
    assert report["dropped_while_disconnected"] == 0
    for message in sent:
        assert catalog.validate(message) == message["type"]
    assert hub.hub.stats.rejected == 0
    book = ledger(sim)

    # balances: every account of every node, as its last ACCOUNT_BALANCE said
    balances = await api(hub, "/api/balances")
    last = {(e["nodeId"], e["peerId"], e["tokenId"]): e for e in of(sent, "ACCOUNT_BALANCE")}
    assert len(balances) == len(last) == len(book.debts) == 6
    for record in balances:
        event = last[(record["nodeId"], record["peerId"], record["tokenId"])]
        assert record == {
            **{k: event[k] for k in event if k not in ("type", "timestamp")},
            "lastUpdated": event["timestamp"],
        }
        assert int(record["netBalance"]) == (
            int(record["debitBalance"]) - int(record["creditBalance"])
        )

    # settlements: the triggered and completed events, as sent, newest first
    recent = await api(hub, "/api/settlements/recent")
    settlements = [e for e in sent if e["type"].startswith("SETTLEMENT_")]
    assert of(settlements, "SETTLEMENT_TRIGGERED") and of(settlements, "SETTLEMENT_COMPLETED")
    assert len(recent) == min(len(settlements), 100)
    as_sent = {json.dumps(e, sort_keys=True) for e in settlements}
    for event in recent:
        event.pop("seq", None)
        assert json.dumps(event, sort_keys=True) in as_sent
    stamps = [e["timestamp"] for e in recent]
    assert stamps == sorted(stamps, reverse=True)

    # channels: every one opened, active unless settled, with the last proofs and claims
    channels = {c["channelId"]: c for c in await api(hub, "/api/channels")}
    opened = of(sent, "PAYMENT_CHANNEL_OPENED") + of(sent, "XRP_CHANNEL_OPENED")
    assert set(channels) == {e["channelId"] for e in opened}
    assert len(of(sent, "PAYMENT_CHANNEL_OPENED")) >= len(book.links) == 3
    closed = {e["channelId"] for e in of(sent, "PAYMENT_CHANNEL_SETTLED")}
    proofs = last_by(of(sent, "PAYMENT_CHANNEL_BALANCE_UPDATE"), "channelId")
    claims = last_by(of(sent, "XRP_CHANNEL_CLAIMED"), "channelId")
    assert proofs
    for event in opened:
        channel = channels[event["channelId"]]
        assert channel["nodeId"] == event["nodeId"]
        assert channel["peerId"] == event["peerId"]
        assert channel["status"] == ("settled" if event["channelId"] in closed else "active")
        if event["type"] == "XRP_CHANNEL_OPENED":
            claim = claims.get(event["channelId"])
            assert channel["xrpBalance"] == (claim["claimAmount"] if claim else "0")
            continue
        assert channel["deposits"] == event["initialDeposits"]
        proof = proofs.get(event["channelId"])
        expected = (
            {k: proof[k] for k in ("myNonce", "theirNonce", "myTransferred", "theirTransferred")}
            if proof
            else {"myNonce": 0, "theirNonce": 0, "myTransferred": "0", "theirTransferred": "0"}
        )
        assert {k: channel[k] for k in expected} == expected
    # one open EVM channel per link, from the link's first node
    active = sorted(
        (c["nodeId"], c["peerId"])
        for c in channels.values()
        if c["status"] == "active" and c.get("settlementMethod") != "xrp"
    )
    assert active == sorted(book.links)


# -- (c) the hub closes one simulated connector's connection


async def until(done: Any, seconds: float = 5.0) -> None:
    for _ in range(round(seconds / 0.01)):
        if done():
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("timed out")


@pytest_twisted.ensureDeferred
async def test_a_connection_the_hub_closes_drops_its_messages_comes_back_and_the_rest_go_on(
    start: Any,
) -> None:
    hub = start()
    sim = Simulation(
        reactor,
        f"ws://127.0.0.1:{hub.port}/",
        Topology.build("linear", 3),
        rate=50,
        seed=5,
        hop_seconds=0.001,
    )
    # what the hub delivered, by node; what the simulation asked each connector to send
    delivered: Counter[str] = Counter()
    hub.hub.add_observer(lambda kind, message: delivered.update([message["nodeId"]]))
    asked: Counter[str] = Counter()
    for name, connector in sim.connectors.items():

        def count(message: dict[str, Any], send: Any = connector.send, name: str = name) -> None:
            asked[name] += 1
            send(message)

        connector.send = count  # type: ignore[method-assign]
    cut = sim.connectors["connector-b"]
    closes: list[float] = []
    closed = cut.closed

    def record_close(protocol: Any) -> None:
        closes.append(reactor.seconds())
        closed(protocol)

    cut.closed = record_close  # type: ignore[method-assign]
    await sim.start()
    await deferLater(reactor, 0.3, lambda: None)
    assert sim.report()["dropped_while_disconnected"] == 0

    # the hub cuts connector-b as a slow reader (4008); busy, it is slow to read the reply
    # and drop the TCP connection, so the connector sits in the closing state meanwhile
    client = await cut.service.whenConnected()
    port = client.transport.getHost().port
    (server,) = [p for p in hub.factory.connections if p.transport.getPeer().port == port]
    server.transport.pauseProducing()
    server.too_slow(1)
    await until(lambda: client.state == client.STATE_CLOSING)
    others = delivered["connector-a"] + delivered["connector-c"]
    await until(lambda: cut.opens == 2)
    reopened = reactor.seconds()
    # the others went on sending throughout
    assert delivered["connector-a"] + delivered["connector-c"] > others + 50
    assert sim._loop.running
    # it came back after the real connector's first backoff, 1 s after its connection went
    assert len(closes) == 1
    assert 0.9 <= reopened - closes[0] < 1.8
    before = delivered["connector-b"]
    await deferLater(reactor, 0.3, lambda: None)
    assert delivered["connector-b"] > before  # its messages reach the hub again
    await sim.stop()
    await deferLater(reactor, 0.1, lambda: None)

    report = sim.report()
    assert "errors" not in report and sim.errors == 0
    assert report["reconnects"] == 1
    # one drop per message not sent, and only connector-b's
    for name, connector in sim.connectors.items():
        assert asked[name] == sum(connector.sent.values()) + connector.dropped
    assert sim.connectors["connector-a"].dropped == sim.connectors["connector-c"].dropped == 0
    # closing (~1 s: autobahn drops the TCP connection itself), then down for 1 s
    assert cut.dropped > 50
    assert report["dropped_while_disconnected"] == cut.dropped
    # the hub got everything the others sent; of connector-b's, all but what was in flight
    # when it was cut (the hub read no further)
    for name in ("connector-a", "connector-c"):
        assert delivered[name] == sum(sim.connectors[name].sent.values())
    assert 0 < delivered["connector-b"] <= sum(cut.sent.values())
