"""
C{telemetry-sim}: play a network of ILP connectors against a hub.

Each simulated connector has its own WebSocket connection and sends exactly what a real
connector sends, in the same order: C{NODE_STATUS} once at start-up (never again after a
reconnect), then per packet and hop C{PACKET_RECEIVED}, C{ROUTE_LOOKUP}, and, once the
downstream reply is back, C{PACKET_SENT} (the last hop sends no C{PACKET_SENT}); some
packets find no route (C{selectedPeer: null}). Connections come back with the real
connector's backoff (1, 2, 4, 8, 16 s).

Alongside the packets, unless C{--packets-only}, each connector sends the rest of what a
dashboard shows, in the real connector's shapes: C{LOG} lines (about 0.3 per node per
second for each packet/s, mostly info, a few warn, rare error); C{ACCOUNT_BALANCE} for a
node's account with a peer every few packets forwarded across it; C{SETTLEMENT_TRIGGERED}
then C{SETTLEMENT_COMPLETED} (one in ten fails and is retried) when a node owes a peer the
settlement threshold; per link an EVM payment channel (C{PAYMENT_CHANNEL_OPENED} at
start-up, C{PAYMENT_CHANNEL_BALANCE_UPDATE} per settlement, C{PAYMENT_CHANNEL_SETTLED} and
a new channel when it is spent), and one XRP channel (C{XRP_CHANNEL_OPENED},
C{XRP_CHANNEL_CLAIMED}, C{XRP_CHANNEL_CLOSED}). See L{Ledger} and L{LogWriter}.

It doubles as a load generator: it reports what it sent and, with C{--measure}, also
connects as a dashboard and reports the end-to-end latency that dashboard sees.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any
from urllib.parse import urlsplit

from autobahn.exception import Disconnected
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.application.internet import ClientService
from twisted.internet import defer, task
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IReactorTime

TOPOLOGIES = ("linear", "mesh", "hub", "sparse")
#: in a "sparse" network each node peers with this many of the nodes before it
SPARSE_LINKS = 2
#: the real connector's backoff between reconnects, in seconds: 1, 2, 4, 8, 16, then 16
BACKOFF_SECONDS = (1.0, 2.0, 4.0, 8.0, 16.0)
#: a tick or hop that fails is reported at once, later failures at most this often (seconds)
ERROR_REPORT_SECONDS = 10.0


def now_iso(clock: IReactorTime) -> str:
    moment = datetime.fromtimestamp(clock.seconds(), UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Topology:
    """
    Who peers with whom, and each node's next hop towards every other node.
    """

    nodes: list[str]
    peers: dict[str, list[str]]
    next_hop: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def build(cls, kind: str, count: int, prefix: str = "connector") -> Topology:
        if count < 2:
            raise ValueError("a network needs at least 2 nodes")
        nodes = [
            f"{prefix}-{chr(ord('a') + i)}" if count <= 26 else f"{prefix}-{i}"
            for i in range(count)
        ]
        peers: dict[str, list[str]] = {n: [] for n in nodes}

        def link(a: str, b: str) -> None:
            peers[a].append(b)
            peers[b].append(a)

        if kind == "linear":
            for a, b in pairwise(nodes):
                link(a, b)
        elif kind == "mesh":
            for i, a in enumerate(nodes):
                for b in nodes[i + 1 :]:
                    link(a, b)
        elif kind == "hub":
            for spoke in nodes[1:]:
                link(nodes[0], spoke)
        elif kind == "sparse":
            # grown a node at a time, as real networks are: each new connector peers with
            # SPARSE_LINKS that were there before it, picked at random (the same network
            # for the same size), so it is connected, a few early nodes gather many peers
            # and most have two or three
            pick = random.Random(f"sparse:{count}")
            for i, node in enumerate(nodes[1:], start=1):
                for other in pick.sample(nodes[:i], min(i, SPARSE_LINKS)):
                    link(node, other)
        else:
            raise ValueError(f"unknown topology {kind!r} (one of {', '.join(TOPOLOGIES)})")
        topology = cls(nodes, peers)
        for source in nodes:
            topology.next_hop[source] = topology._first_hops(source)
        return topology

    def _first_hops(self, source: str) -> dict[str, str]:
        """Breadth-first: the neighbour of C{source} on a shortest path to each node."""
        first: dict[str, str] = {}
        frontier = [(p, p) for p in self.peers[source]]
        seen = {source}
        while frontier:
            following: list[tuple[str, str]] = []
            for node, via in frontier:
                if node in seen:
                    continue
                seen.add(node)
                first[node] = via
                following.extend((p, via) for p in self.peers[node])
            frontier = following
        return first

    def path(self, source: str, destination: str) -> list[str]:
        hops = [source]
        while hops[-1] != destination:
            hops.append(self.next_hop[hops[-1]][destination])
        return hops

    @staticmethod
    def address(node: str) -> str:
        return f"g.{node.replace('-', '')}"


def _no_delay(protocol: WebSocketClientProtocol) -> None:
    # Autobahn never turns Nagle off itself (see websocket.py); without it, a hop's event
    # can wait ~40 ms for an ACK and arrive out of step with the other connectors'.
    set_no_delay = getattr(protocol.transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        set_no_delay(True)


class _ConnectorProtocol(WebSocketClientProtocol):
    def connectionMade(self) -> None:
        super().connectionMade()
        _no_delay(self)

    def onOpen(self) -> None:
        self.factory.connector.opened(self)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.connector.closed(self)


class SimulatedConnector:
    """
    One connector node: a connection that comes back with backoff, and what it sends.

    A message for a connection that is gone or closing (the hub sent its close frame, the
    TCP connection is not down yet) is dropped, as a real connector drops it, and counted
    in C{dropped}: one per message not sent. Sending never raises.
    """

    def __init__(
        self,
        node_id: str,
        url: str,
        reactor: Any,
        status: dict[str, Any],
        token: str | None = None,
    ) -> None:
        self.node_id = node_id
        self.status = status
        self.sent: dict[str, int] = {}
        self.dropped = 0
        #: how many times its WebSocket opened (1 + the reconnects)
        self.opens = 0
        self._protocol: _ConnectorProtocol | None = None
        self._announced = False
        self._retries = 0
        self._waiting_for_open: list[defer.Deferred[None]] = []
        # a connector token, as real connectors would send it: an Authorization header
        headers = {"Authorization": f"Bearer {token}"} if token else None
        factory = WebSocketClientFactory(url, headers=headers)
        factory.protocol = _ConnectorProtocol
        factory.connector = self  # type: ignore[attr-defined]
        parts = urlsplit(url)
        endpoint = clientFromString(reactor, f"tcp:{parts.hostname}:{parts.port or 80}")
        self.service = ClientService(endpoint, factory, retryPolicy=self._retry_delay)

    def _retry_delay(self, attempt: int) -> float:
        # ClientService counts attempts from its last TCP connection (and starts at 1 s * 2);
        # the real connector counts from its last open WebSocket: 1, 2, 4, 8, 16, 16, ... s
        self._retries += 1
        return BACKOFF_SECONDS[min(self._retries, len(BACKOFF_SECONDS)) - 1]

    def when_open(self) -> defer.Deferred[None]:
        """Fires once its WebSocket has opened (at once if it has before)."""
        if self.opens:
            return defer.succeed(None)
        waiting: defer.Deferred[None] = defer.Deferred()
        self._waiting_for_open.append(waiting)
        return waiting

    def opened(self, protocol: _ConnectorProtocol) -> None:
        self._protocol = protocol
        self.opens += 1
        self._retries = 0
        if not self._announced:
            # NODE_STATUS goes out once, at start-up, as soon as the WebSocket is open (so
            # that the hub stops treating the connection as a listener), not after a reconnect
            self._announced = True
            self.send(self.status)
        waiting, self._waiting_for_open = self._waiting_for_open, []
        for d in waiting:
            d.callback(None)

    def closed(self, protocol: _ConnectorProtocol) -> None:
        if self._protocol is protocol:
            self._protocol = None

    def send(self, message: dict[str, Any]) -> None:
        protocol = self._protocol
        # closing counts as gone: autobahn refuses to send once a close frame has come in,
        # and the connection comes back with the backoff once it is down (see closed)
        if protocol is None or protocol.state != WebSocketClientProtocol.STATE_OPEN:
            self.dropped += 1
            return
        try:
            protocol.sendMessage(json.dumps(message, separators=(",", ":")).encode())
        except Disconnected:
            self.dropped += 1
            return
        self.sent[message["type"]] = self.sent.get(message["type"], 0) + 1


# -- the rest of the vocabulary: logs, balances, settlements and payment channels

#: the asset every simulated peer account is kept in (amounts in its smallest unit)
TOKEN = "USDC"
#: settle with a peer once we owe it this much (5 USDC, 6 decimals): at the default rate
#: about five settlements a minute across a five-node line
DEFAULT_SETTLEMENT_THRESHOLD = 5_000_000
#: seconds from SETTLEMENT_TRIGGERED to SETTLEMENT_COMPLETED (on average; +-25%)
DEFAULT_SETTLEMENT_SECONDS = 2.0
#: share of settlements that fail (and are retried later)
SETTLEMENT_FAILURE = 0.1
#: an account's ACCOUNT_BALANCE goes out after this many packets changed it
BALANCE_EVERY = 3
#: LOG lines per node per second: this many per packet/s, within the bounds below
LOGS_PER_PACKET = 0.3
LOGS_PER_NODE_MIN = 0.25
LOGS_PER_NODE_MAX = 20.0
#: how often each level is chosen for a LOG line (settlement outcomes add their own)
LOG_LEVELS = (("info", 0.80), ("debug", 0.12), ("warn", 0.07), ("error", 0.01))
#: facts the log lines are written from: the last packets forwarded, routes not found
RECENT_FACTS = 64
SETTLEMENT_ERRORS = (
    "TigerBeetle transfer failed: insufficient balance",
    "EVM transaction reverted: nonce too low",
    "RPC request timed out after 30000 ms",
)
_XRP_ALPHABET = "rpshnaf39wBUDNEGHJKLM4PQRST7VWXYZ2bcdeCg65jkm8oFqi1tuvAxyz"


def _digest(*parts: object) -> bytes:
    return hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()


def evm_address(node: str) -> str:
    """A node's (made-up, stable) EVM account."""
    return "0x" + _digest("evm", node).hex()[:40]


def xrp_address(node: str) -> str:
    """A node's (made-up, stable) XRP Ledger account, in the ledger's base58 alphabet."""
    return "r" + "".join(_XRP_ALPHABET[b % 58] for b in _digest("xrp", node)[:32])


def _short(channel_id: str) -> str:
    return f"{channel_id[:10]}..."


Send = Callable[[str, dict[str, Any]], None]


class LogWriter:
    """
    A connector's LOG lines: a steady trickle, mostly info, written from what the network
    just did (packets forwarded, routes not found), plus the settlement outcomes.
    """

    def __init__(
        self, send: Send, clock: IReactorTime, rng: random.Random, topology: Topology
    ) -> None:
        self._send = send
        self._clock = clock
        self._random = rng
        self._topology = topology
        self._credit = 0.0
        #: (node, peer, packetId, destination, amount) of the last packets forwarded
        self.forwards: deque[tuple[str, str, str, str, str]] = deque(maxlen=RECENT_FACTS)
        #: (node, destination) of the last packets that found no route
        self.failures: deque[tuple[str, str]] = deque(maxlen=RECENT_FACTS)

    def log(
        self,
        node: str,
        level: str,
        message: str,
        context: dict[str, Any] | None = None,
        correlation_id: str | None = None,
    ) -> None:
        stamp = now_iso(self._clock)
        data: dict[str, Any] = {
            "level": level,
            "timestamp": stamp,
            "nodeId": node,
            "message": message,
        }
        if correlation_id is not None:
            data["correlationId"] = correlation_id
        if context:
            data["context"] = context
        self._send(node, {"type": "LOG", "nodeId": node, "timestamp": stamp, "data": data})

    def tick(self, elapsed: float, packet_rate: float) -> None:
        per_node = min(max(LOGS_PER_PACKET * packet_rate, LOGS_PER_NODE_MIN), LOGS_PER_NODE_MAX)
        rate = per_node * len(self._topology.nodes)
        self._credit = min(self._credit + elapsed * rate, max(rate, 1.0))
        while self._credit >= 1.0:
            self._credit -= 1.0
            self._chatter()

    def _level(self) -> str:
        pick = self._random.random()
        for level, share in LOG_LEVELS:
            if pick < share:
                return level
            pick -= share
        return "info"

    def _chatter(self) -> None:
        rng = self._random
        node = rng.choice(self._topology.nodes)
        peer = rng.choice(self._topology.peers[node])
        level = self._level()
        # each fact is written up once at most
        forward = next((f for f in reversed(self.forwards) if f[0] == node), None)
        if level == "info":
            if forward is not None and rng.random() < 0.7:
                self.forwards.remove(forward)
                _, peer, packet_id, destination, amount = forward
                self.log(
                    node,
                    "info",
                    f"Forwarded packet to peer {peer}",
                    {"packetId": packet_id, "destination": destination, "amount": amount},
                    packet_id,
                )
            elif rng.random() < 0.5:
                rtt = rng.randint(1, 40)
                self.log(
                    node, "info", f"Peer {peer} connection healthy", {"peerId": peer, "rttMs": rtt}
                )
            else:
                routes = len(self._topology.next_hop[node])
                peers = len(self._topology.peers[node])
                self.log(
                    node,
                    "info",
                    f"Routing table refreshed: {routes} routes via {peers} peers",
                    {"routes": routes, "peers": peers},
                )
        elif level == "debug":
            if forward is not None:
                self.forwards.remove(forward)
                _, peer, packet_id, destination, _ = forward
                self.log(
                    node,
                    "debug",
                    f"Route lookup for {destination}: next hop {peer}",
                    {"destination": destination, "nextHop": peer},
                    packet_id,
                )
            else:
                self.log(node, "debug", f"BTP keep-alive sent to peer {peer}", {"peerId": peer})
        elif level == "warn":
            failure = next((f for f in reversed(self.failures) if f[0] == node), None)
            if failure is not None and rng.random() < 0.6:
                self.failures.remove(failure)
                destination = failure[1]
                self.log(
                    node,
                    "warn",
                    f"Route lookup failed for {destination}",
                    {"destination": destination, "code": "F02"},
                )
            else:
                elapsed_ms = rng.randint(800, 4000)
                self.log(
                    node,
                    "warn",
                    f"Slow fulfill from peer {peer}: {elapsed_ms} ms",
                    {"peerId": peer, "durationMs": elapsed_ms},
                )
        else:
            self.log(
                node,
                "error",
                f"Packet rejected by peer {peer}: T04 Insufficient liquidity",
                {"peerId": peer, "code": "T04"},
            )


@dataclass
class _Debt:
    """What one node owes one peer, and where that node's settlement of it stands."""

    owed: int
    state: str = "IDLE"
    retry_at: float = 0.0
    pending: Any = None  # the DelayedCall of the settlement's next step


@dataclass
class _Channel:
    """An EVM payment channel, as its owner (the opener) sees it."""

    channel_id: str
    owner: str
    peer: str
    deposit: int
    my_nonce: int = 0
    their_nonce: int = 0
    my_transferred: int = 0
    their_transferred: int = 0


@dataclass
class _XrpChannel:
    channel_id: str
    owner: str
    peer: str
    amount: int
    claimed: int = 0


class Ledger:
    """
    The peer accounts of every node and how they settle.

    Each pair of peers has two debts: what each owes the other for the packets it forwarded
    to it. A node's account with a peer (C{ACCOUNT_BALANCE}) shows both: the peer's debt as
    C{debitBalance}, its own as C{creditBalance}. When a node owes a peer its settlement
    threshold it settles: C{SETTLEMENT_TRIGGERED}, then (after C{settlement_seconds})
    C{SETTLEMENT_COMPLETED}, which sometimes fails and is retried later. Each link has an EVM
    payment channel, opened and owned by the link's first node, whose balance proofs
    (C{PAYMENT_CHANNEL_BALANCE_UPDATE}) follow the settlements both ways; a channel that
    cannot carry the next settlement is settled (C{PAYMENT_CHANNEL_SETTLED}) and a new one
    opened. The first node pays its first peer over an XRP channel instead
    (C{XRP_CHANNEL_OPENED}, C{XRP_CHANNEL_CLAIMED}, C{XRP_CHANNEL_CLOSED} when spent).

    Everything it keeps is bounded by the topology: two debts and one channel per link.
    """

    def __init__(
        self,
        send: Send,
        clock: Any,
        rng: random.Random,
        topology: Topology,
        logs: LogWriter,
        threshold: int = DEFAULT_SETTLEMENT_THRESHOLD,
        settlement_seconds: float = DEFAULT_SETTLEMENT_SECONDS,
    ) -> None:
        if threshold < 1:
            raise ValueError("the settlement threshold must be at least 1")
        self._send = send
        self._clock = clock
        self._random = rng
        self._logs = logs
        self.topology = topology
        self.threshold = threshold
        self.settlement_seconds = settlement_seconds
        self.credit_limit = 3 * threshold
        nodes = topology.nodes
        order = {n: i for i, n in enumerate(nodes)}
        #: (owner, peer) of every link, the owner being the node listed first
        self.links = [(a, b) for a in nodes for b in topology.peers[a] if order[a] < order[b]]
        self.debts = {
            (a, b): _Debt(rng.randrange(threshold)) for a in nodes for b in topology.peers[a]
        }
        self.channels: dict[tuple[str, str], _Channel] = {}
        self.xrp: _XrpChannel | None = None
        #: the debt the first node settles over XRP
        self.xrp_debt = (nodes[0], topology.peers[nodes[0]][0])
        self._started = False
        self._updates: dict[tuple[str, str], int] = {}
        self._dirty: dict[tuple[str, str], None] = {}
        self._due: dict[tuple[str, str], None] = {}

    # -- what the simulation tells it

    def forwarded(self, node: str, peer: str, amount: int) -> None:
        """C{node} forwarded a packet of C{amount} to C{peer}, who fulfilled it."""
        debt = self.debts.get((node, peer))
        if debt is None:
            return
        debt.owed += amount
        for account in ((node, peer), (peer, node)):
            count = self._updates.get(account, 0) + 1
            if count >= BALANCE_EVERY:
                count = 0
                self._dirty[account] = None
            self._updates[account] = count
        if debt.owed >= self.threshold and debt.state == "IDLE":
            self._due[(node, peer)] = None

    def tick(self) -> None:
        if not self._started:
            self._started = True
            self._open()
        dirty, self._dirty = self._dirty, {}
        for node, peer in dirty:
            self._balance(node, peer)
        due, self._due = self._due, {}
        now = self._clock.seconds()
        for payer, payee in due:
            debt = self.debts[(payer, payee)]
            if debt.state == "IDLE" and debt.owed >= self.threshold and now >= debt.retry_at:
                self._trigger(payer, payee)

    def stop(self) -> None:
        """Drop the settlements still under way: nothing more is sent."""
        for debt in self.debts.values():
            if debt.pending is not None and debt.pending.active():
                debt.pending.cancel()
            debt.pending = None

    # -- events

    def _flat(self, node: str, kind: str, **fields: Any) -> None:
        # the connector's flat events: every field at the top level, no data
        self._send(
            node, {"type": kind, "nodeId": node, **fields, "timestamp": now_iso(self._clock)}
        )

    def _balance(self, node: str, peer: str) -> None:
        self._updates[(node, peer)] = 0
        self._dirty.pop((node, peer), None)
        debit, credit = self.debts[(peer, node)], self.debts[(node, peer)]
        self._flat(
            node,
            "ACCOUNT_BALANCE",
            peerId=peer,
            tokenId=TOKEN,
            debitBalance=str(debit.owed),
            creditBalance=str(credit.owed),
            netBalance=str(debit.owed - credit.owed),
            creditLimit=str(self.credit_limit),
            settlementThreshold=str(self.threshold),
            settlementState=credit.state,
        )

    def _open(self) -> None:
        """At start-up: a channel on every link, and every account's balance."""
        for owner, peer in self.links:
            self._open_channel(owner, peer, 3 * self.threshold)
        self._open_xrp(20 * self.threshold)
        for node, peer in self.debts:
            self._balance(node, peer)

    def _open_channel(self, owner: str, peer: str, deposit: int) -> _Channel:
        salt = self._random.getrandbits(64)
        channel = _Channel("0x" + _digest("channel", owner, peer, salt).hex(), owner, peer, deposit)
        self.channels[(owner, peer)] = channel
        mine, theirs = evm_address(owner), evm_address(peer)
        self._flat(
            owner,
            "PAYMENT_CHANNEL_OPENED",
            channelId=channel.channel_id,
            participants=[mine, theirs],
            peerId=peer,
            tokenAddress=evm_address(f"token:{TOKEN}"),
            tokenSymbol=TOKEN,
            settlementTimeout=86400,
            initialDeposits={mine: str(deposit), theirs: str(deposit)},
        )
        self._logs.log(
            owner,
            "info",
            f"Payment channel {_short(channel.channel_id)} opened with peer {peer}",
            {"channelId": channel.channel_id, "peerId": peer, "deposit": str(deposit)},
        )
        return channel

    def _open_xrp(self, amount: int) -> _XrpChannel:
        owner, peer = self.xrp_debt
        salt = self._random.getrandbits(64)
        channel = _XrpChannel(
            _digest("xrp-channel", owner, peer, salt).hex().upper(), owner, peer, amount
        )
        self.xrp = channel
        self._flat(
            owner,
            "XRP_CHANNEL_OPENED",
            channelId=channel.channel_id,
            account=xrp_address(owner),
            destination=xrp_address(peer),
            amount=str(amount),
            settleDelay=86400,
            publicKey="ED" + _digest("xrp-key", owner).hex().upper(),
            peerId=peer,
        )
        self._logs.log(
            owner,
            "info",
            f"XRP payment channel {_short(channel.channel_id)} opened with peer {peer}",
            {"channelId": channel.channel_id, "peerId": peer, "amount": str(amount)},
        )
        return channel

    # -- a settlement, step by step

    def _delay(self) -> float:
        return self.settlement_seconds * self._random.uniform(0.75, 1.25)

    def _trigger(self, payer: str, payee: str) -> None:
        debt = self.debts[(payer, payee)]
        amount = debt.owed
        debt.state = "SETTLEMENT_PENDING"
        self._flat(
            payer,
            "SETTLEMENT_TRIGGERED",
            peerId=payee,
            tokenId=TOKEN,
            currentBalance=str(amount),
            threshold=str(self.threshold),
            exceedsBy=str(amount - self.threshold),
            triggerReason="THRESHOLD_EXCEEDED",
        )
        self._balance(payer, payee)
        self._logs.log(
            payer,
            "info",
            f"Settlement threshold reached for peer {payee}",
            {"peerId": payee, "tokenId": TOKEN, "balance": str(amount)},
        )
        total = self._delay()
        debt.pending = self._clock.callLater(
            total / 4, self._in_progress, payer, payee, amount, total * 3 / 4
        )

    def _in_progress(self, payer: str, payee: str, amount: int, remaining: float) -> None:
        debt = self.debts[(payer, payee)]
        debt.state = "SETTLEMENT_IN_PROGRESS"
        self._balance(payer, payee)
        method = self._method(payer, payee)
        self._logs.log(
            payer,
            "debug",
            f"Submitting {method} settlement of {amount} {TOKEN} to peer {payee}",
            {"peerId": payee, "amount": str(amount), "method": method},
        )
        debt.pending = self._clock.callLater(remaining, self._complete, payer, payee, amount)

    def _method(self, payer: str, payee: str) -> str:
        return "XRP" if (payer, payee) == self.xrp_debt else "EVM"

    def _complete(self, payer: str, payee: str, amount: int) -> None:
        debt = self.debts[(payer, payee)]
        debt.pending = None
        method = self._method(payer, payee)
        previous = debt.owed
        success = self._random.random() >= SETTLEMENT_FAILURE
        fields: dict[str, Any] = {}
        if success:
            debt.owed -= amount
        else:
            amount = 0
            fields["errorMessage"] = self._random.choice(SETTLEMENT_ERRORS)
            debt.retry_at = self._clock.seconds() + 5 * self.settlement_seconds
        debt.state = "IDLE"
        self._flat(
            payer,
            "SETTLEMENT_COMPLETED",
            peerId=payee,
            tokenId=TOKEN,
            previousBalance=str(previous),
            newBalance=str(debt.owed),
            settledAmount=str(amount),
            settlementType=method,
            success=success,
            **fields,
        )
        self._balance(payer, payee)
        self._balance(payee, payer)
        if not success:
            self._logs.log(
                payer,
                "error",
                f"Settlement with peer {payee} failed: {fields['errorMessage']}",
                {"peerId": payee, "tokenId": TOKEN, "balance": str(previous)},
            )
            return
        if method == "XRP":
            channel_id = self._claim_xrp(amount)
        else:
            channel_id = self._transfer(payer, payee, amount)
        self._logs.log(
            payer,
            "info",
            f"Settlement completed with peer {payee}: {amount} {TOKEN} over {method}",
            {"peerId": payee, "amount": str(amount), "channelId": channel_id},
        )
        if debt.owed >= self.threshold:
            self._due[(payer, payee)] = None

    def _transfer(self, payer: str, payee: str, amount: int) -> str:
        """A balance proof for C{amount} from C{payer} on the link's channel."""
        owner, peer = (payer, payee) if (payer, payee) in self.channels else (payee, payer)
        channel = self.channels[(owner, peer)]
        sent = channel.my_transferred if payer == owner else channel.their_transferred
        if sent + amount > channel.deposit:
            # spent: settle it on-chain and open the next one
            self._flat(
                owner,
                "PAYMENT_CHANNEL_SETTLED",
                channelId=channel.channel_id,
                finalBalances={
                    evm_address(owner): str(
                        channel.deposit - channel.my_transferred + channel.their_transferred
                    ),
                    evm_address(peer): str(
                        channel.deposit - channel.their_transferred + channel.my_transferred
                    ),
                },
                settlementType="cooperative",
            )
            self._logs.log(
                owner,
                "info",
                f"Payment channel {_short(channel.channel_id)} with peer {peer} settled",
                {"channelId": channel.channel_id, "peerId": peer},
            )
            channel = self._open_channel(owner, peer, max(3 * self.threshold, 2 * amount))
        if payer == owner:
            channel.my_nonce += 1
            channel.my_transferred += amount
        else:
            channel.their_nonce += 1
            channel.their_transferred += amount
        self._flat(
            owner,
            "PAYMENT_CHANNEL_BALANCE_UPDATE",
            channelId=channel.channel_id,
            myNonce=channel.my_nonce,
            theirNonce=channel.their_nonce,
            myTransferred=str(channel.my_transferred),
            theirTransferred=str(channel.their_transferred),
        )
        return channel.channel_id

    def _claim_xrp(self, amount: int) -> str:
        channel = self.xrp
        assert channel is not None
        if channel.claimed + amount > channel.amount:
            self._flat(
                channel.owner,
                "XRP_CHANNEL_CLOSED",
                channelId=channel.channel_id,
                finalBalance=str(channel.claimed),
                closeType="cooperative",
                peerId=channel.peer,
            )
            channel = self._open_xrp(max(20 * self.threshold, 2 * amount))
        channel.claimed += amount
        self._flat(
            channel.owner,
            "XRP_CHANNEL_CLAIMED",
            channelId=channel.channel_id,
            claimAmount=str(channel.claimed),
            remainingBalance=str(channel.amount - channel.claimed),
            peerId=channel.peer,
        )
        return channel.channel_id


class Simulation:
    """
    A network of simulated connectors, sending packets at a chosen rate, and (unless
    C{packets_only}) the LOG lines, account balances, settlements and payment channels that
    go with them.

    The packets' randomness comes from C{seed}; the rest has a stream of its own, derived
    from the same seed, so a seed gives the same packets either way.
    """

    def __init__(
        self,
        reactor: Any,
        url: str,
        topology: Topology,
        rate: float,
        no_route: float = 0.1,
        seed: int | None = None,
        hop_seconds: float = 0.002,
        token: str | None = None,
        packets_only: bool = False,
        settlement_threshold: int = DEFAULT_SETTLEMENT_THRESHOLD,
        settlement_seconds: float = DEFAULT_SETTLEMENT_SECONDS,
    ) -> None:
        self.reactor = reactor
        self.topology = topology
        self.rate = rate
        self.hop_seconds = hop_seconds
        self.no_route = no_route
        self.random = random.Random(seed)
        self.packets = 0
        #: ticks and packet hops that raised (reported on stderr, then carried on)
        self.errors = 0
        self._errors_reported = 0
        self._error_reported_at: float | None = None
        self._stopped = False
        self._credit = 0.0
        self._last = reactor.seconds()
        self.connectors = {
            node: SimulatedConnector(node, url, reactor, self._status(node), token)
            for node in topology.nodes
        }
        self._loop = task.LoopingCall(self._safely, self._tick)
        self._loop.clock = reactor
        self.logs: LogWriter | None = None
        self.ledger: Ledger | None = None
        if not packets_only:
            side = random.Random(None if seed is None else f"{seed}:ledger")
            self.logs = LogWriter(self._send, reactor, side, topology)
            self.ledger = Ledger(
                self._send,
                reactor,
                side,
                topology,
                self.logs,
                settlement_threshold,
                settlement_seconds,
            )

    def _send(self, node: str, message: dict[str, Any]) -> None:
        self.connectors[node].send(message)

    def _status(self, node: str) -> dict[str, Any]:
        peers = self.topology.peers[node]
        routes = [
            {"prefix": Topology.address(dest), "nextHop": hop}
            for dest, hop in sorted(self.topology.next_hop[node].items())
        ]
        return {
            "type": "NODE_STATUS",
            "nodeId": node,
            "timestamp": now_iso(self.reactor),
            "data": {
                "routes": routes,
                "peers": [{"id": p, "url": f"ws://{p}:3000", "connected": True} for p in peers],
                "health": "healthy",
                "uptime": 0,
                "peersConnected": len(peers),
                "totalPeers": len(peers),
            },
        }

    def start(self) -> defer.Deferred[Any]:
        """
        Connect every connector; packets start flowing once all of them are connected (their
        WebSockets open, not just their TCP connections: what goes out at the first tick,
        a channel per link and every account's balance, would be dropped otherwise).
        """
        for connector in self.connectors.values():
            connector.service.startService()
        connected = defer.DeferredList([c.when_open() for c in self.connectors.values()])

        def begin(_: object) -> None:
            if not self._stopped and not self._loop.running:
                self._last = self.reactor.seconds()
                self._loop.start(0.01, now=False)

        connected.addCallback(begin)
        return connected

    async def stop(self) -> None:
        """
        Stop sending new packets, let those in flight finish their hops, disconnect.
        """
        self._stopped = True
        if self._loop.running:
            self._loop.stop()
        if self.ledger is not None:
            self.ledger.stop()
        in_flight = 2 * len(self.topology.nodes) * self.hop_seconds + 0.05
        await task.deferLater(self.reactor, in_flight, lambda: None)
        await defer.DeferredList(
            [defer.maybeDeferred(c.service.stopService) for c in self.connectors.values()]
        )

    def _safely(self, step: Callable[..., None], *args: Any) -> None:
        # one tick or hop that raises must not stop the LoopingCall, and with it the run
        try:
            step(*args)
        except Exception:
            self._failed()

    def _failed(self) -> None:
        self.errors += 1
        now = self.reactor.seconds()
        last = self._error_reported_at
        if last is not None and now - last < ERROR_REPORT_SECONDS:
            return
        self._error_reported_at = now
        if last is None:
            what = f"sending failed; carrying on:\n{traceback.format_exc().rstrip()}"
        else:
            failed = self.errors - self._errors_reported
            what = f"sending failed {failed} more times, the last with {sys.exc_info()[1]!r}"
        self._errors_reported = self.errors
        print(f"telemetry-sim: {what}", file=sys.stderr, flush=True)

    def _tick(self) -> None:
        now = self.reactor.seconds()
        elapsed = now - self._last
        self._credit = min(self._credit + elapsed * self.rate, max(self.rate, 1.0))
        self._last = now
        while self._credit >= 1.0:
            self._credit -= 1.0
            self.send_packet()
        # the rest of the vocabulary goes out from here, never from a packet's own events
        if self.ledger is not None and self.logs is not None:
            self.ledger.tick()
            self.logs.tick(elapsed, self.rate)

    def send_packet(self) -> None:
        """One packet through the network, every hop's events in the real order."""
        self.packets += 1
        nodes = self.topology.nodes
        source, destination = self.random.sample(nodes, 2)
        packet_id = hashlib.sha256(f"{self.packets}-{self.random.random()}".encode()).hexdigest()
        amount = str(self.random.randint(1, 100_000))
        if self.random.random() < self.no_route:
            target = f"g.unknown{self.random.randint(1, 99)}.dest"
            self._hop(source, packet_id, "sender", target, amount, None, "no route found")
            if self.logs is not None:
                self.logs.failures.append((source, target))
            return
        target = f"{Topology.address(destination)}.dest"
        path = self.topology.path(source, destination)
        later = self.reactor.callLater
        # hop i forwards after i hop delays; the replies come back in reverse order and each
        # hop but the last sends PACKET_SENT once its downstream reply is back
        for i, hop in enumerate(path):
            following = path[i + 1] if i + 1 < len(path) else None
            reason = "longest prefix match" if following else "local delivery"
            previous = path[i - 1] if i else "sender"
            later(
                i * self.hop_seconds,
                self._safely,
                self._hop,
                hop,
                packet_id,
                previous,
                target,
                amount,
                following or hop,
                reason,
            )
        turnaround = 2 * (len(path) - 1)
        for i in range(len(path) - 1):
            later(
                (turnaround - i) * self.hop_seconds,
                self._safely,
                self._sent,
                path[i],
                packet_id,
                path[i + 1],
                target,
                amount,
            )

    def _sent(
        self, node: str, packet_id: str, next_hop: str, destination: str, amount: str
    ) -> None:
        self.connectors[node].send(
            self._event(
                node,
                "PACKET_SENT",
                {"packetId": packet_id, "nextHop": next_hop, "timestamp": now_iso(self.reactor)},
            )
        )
        # fulfilled: this node now owes its next hop the amount
        if self.ledger is not None and self.logs is not None:
            self.ledger.forwarded(node, next_hop, int(amount))
            self.logs.forwards.append((node, next_hop, packet_id, destination, amount))

    def _hop(
        self,
        node: str,
        packet_id: str,
        source: str,
        destination: str,
        amount: str,
        selected: str | None,
        reason: str,
    ) -> None:
        connector = self.connectors[node]
        connector.send(
            self._event(
                node,
                "PACKET_RECEIVED",
                {
                    "packetId": packet_id,
                    "packetType": "PREPARE",
                    "source": source,
                    "destination": destination,
                    "amount": amount,
                },
            )
        )
        connector.send(
            self._event(
                node,
                "ROUTE_LOOKUP",
                {"destination": destination, "selectedPeer": selected, "reason": reason},
            )
        )

    def _event(self, node: str, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        # sentAt (epoch ms) is an extra field the hub passes through; --measure reads it
        data["sentAt"] = round(time.time() * 1000, 3)
        return {"type": kind, "nodeId": node, "timestamp": now_iso(self.reactor), "data": data}

    def report(self) -> dict[str, Any]:
        sent: dict[str, int] = {}
        for connector in self.connectors.values():
            for kind, count in connector.sent.items():
                sent[kind] = sent.get(kind, 0) + count
        report: dict[str, Any] = {
            "packets": self.packets,
            "sent": sent,
            "dropped_while_disconnected": sum(c.dropped for c in self.connectors.values()),
            "reconnects": sum(max(c.opens - 1, 0) for c in self.connectors.values()),
        }
        if self.errors:
            report["errors"] = self.errors
        return report


class _MeasuringProtocol(WebSocketClientProtocol):
    def connectionMade(self) -> None:
        super().connectionMade()
        _no_delay(self)

    def onOpen(self) -> None:
        self.sendMessage(b'{"type":"CLIENT_CONNECT"}')

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.latency.observe(payload)


class LatencyMeter:
    """Latency from a simulated connector's send to a dashboard's receipt, in ms."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def observe(self, payload: bytes) -> None:
        try:
            sent_at = json.loads(payload)["data"]["sentAt"]
        except (ValueError, KeyError, TypeError):
            return
        if isinstance(sent_at, (int, float)):
            self.samples.append(time.time() * 1000 - sent_at)

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {"messages": 0}
        ordered = sorted(self.samples)

        def pct(p: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 3)

        return {
            "messages": len(ordered),
            "p50_ms": pct(0.5),
            "p99_ms": pct(0.99),
            "max_ms": round(ordered[-1], 3),
        }


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="telemetry-sim", description=__doc__.split("\n\n")[0].strip()
    )
    parser.add_argument("--url", default="ws://127.0.0.1:9000/", help="the hub's WebSocket URL")
    parser.add_argument(
        "--token",
        default=os.environ.get("TELEMETRY_TOKEN"),
        help="a connector token for every simulated node (env TELEMETRY_TOKEN)",
    )
    parser.add_argument(
        "--viewer-token",
        default=os.environ.get("TELEMETRY_VIEWER_TOKEN"),
        help="a viewer token for --measure (env TELEMETRY_VIEWER_TOKEN)",
    )
    parser.add_argument("--nodes", type=int, default=5, help="number of connectors (default 5)")
    parser.add_argument(
        "--topology",
        choices=TOPOLOGIES,
        default="linear",
        help="linear, mesh (every pair), hub (hub-and-spoke) or sparse (each node peers "
        "with 2 earlier ones at random); default linear",
    )
    parser.add_argument("--rate", type=float, default=5.0, help="packets per second (default 5)")
    parser.add_argument(
        "--no-route", type=float, default=0.1, help="share of packets with no route (default 0.1)"
    )
    parser.add_argument(
        "--duration", type=float, default=0.0, help="seconds to run; 0 = until stopped"
    )
    parser.add_argument(
        "--prefix", default="connector", help="node name prefix (default connector)"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed, for repeatable runs")
    parser.add_argument(
        "--hop-ms",
        type=float,
        default=2.0,
        help="milliseconds each hop takes to forward a packet (default 2)",
    )
    parser.add_argument(
        "--packets-only",
        action="store_true",
        help="send only NODE_STATUS and the packet events: no LOG, balances, settlements or "
        "payment channels",
    )
    parser.add_argument(
        "--settlement-threshold",
        type=int,
        default=DEFAULT_SETTLEMENT_THRESHOLD,
        help="settle with a peer once a node owes it this much "
        f"(default {DEFAULT_SETTLEMENT_THRESHOLD}, in {TOKEN}'s smallest unit)",
    )
    parser.add_argument(
        "--measure",
        action="store_true",
        help="also connect as a dashboard and report end-to-end latency",
    )
    parser.add_argument(
        "--report-every",
        type=float,
        default=10.0,
        help="seconds between progress lines on stderr (0: none)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        topology = Topology.build(args.topology, args.nodes, args.prefix)
        if args.settlement_threshold < 1:
            raise ValueError("--settlement-threshold must be at least 1")
    except ValueError as e:
        raise SystemExit(f"telemetry-sim: {e}") from None
    task.react(_run, (args, topology))


async def _run(reactor: Any, args: argparse.Namespace, topology: Topology) -> None:
    simulation = Simulation(
        reactor,
        args.url,
        topology,
        args.rate,
        args.no_route,
        args.seed,
        args.hop_ms / 1000,
        args.token,
        packets_only=args.packets_only,
        settlement_threshold=args.settlement_threshold,
    )
    meter = LatencyMeter()
    measuring = None
    if args.measure:
        viewer = args.viewer_token
        headers = {"Authorization": f"Bearer {viewer}"} if viewer else None
        factory = WebSocketClientFactory(args.url, headers=headers)
        factory.protocol = _MeasuringProtocol
        factory.latency = meter  # type: ignore[attr-defined]
        parts = urlsplit(args.url)
        endpoint = clientFromString(reactor, f"tcp:{parts.hostname}:{parts.port or 80}")
        measuring = ClientService(endpoint, factory)
        measuring.startService()
        await task.deferLater(reactor, 0.3, lambda: None)
    simulation.start()
    print(
        f"telemetry-sim: {len(topology.nodes)} connectors ({args.topology}) -> {args.url} "
        f"at {args.rate:g} packets/s",
        file=sys.stderr,
        flush=True,
    )
    progress = None
    if args.report_every > 0:
        progress = task.LoopingCall(
            lambda: print(json.dumps(simulation.report()), file=sys.stderr, flush=True)
        )
        progress.clock = reactor
        progress.start(args.report_every, now=False)
    done: defer.Deferred[None] = defer.Deferred()
    finished: defer.Deferred[None] = defer.Deferred()
    if args.duration > 0:
        reactor.callLater(args.duration, lambda: None if done.called else done.callback(None))

    def on_shutdown() -> defer.Deferred[None]:
        # Ctrl-C or SIGTERM: stop sending, disconnect, print the report, then exit
        if not done.called:
            done.callback(None)
        return finished

    reactor.addSystemEventTrigger("before", "shutdown", on_shutdown)
    await done
    if progress is not None and progress.running:
        progress.stop()
    await simulation.stop()
    if measuring is not None:
        await task.deferLater(reactor, 0.3, lambda: None)
        await measuring.stopService()
    result = simulation.report()
    if args.measure:
        result["latency"] = meter.summary()
    print(json.dumps(result), flush=True)
    finished.callback(None)


if __name__ == "__main__":
    main()
