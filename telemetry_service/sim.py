"""
C{telemetry-sim}: play a network of ILP connectors against a hub.

Each simulated connector has its own WebSocket connection and sends exactly what a real
connector sends, in the same order: C{NODE_STATUS} once at start-up (never again after a
reconnect), then per packet and hop C{PACKET_RECEIVED}, C{ROUTE_LOOKUP}, and, once the
downstream reply is back, C{PACKET_SENT} (the last hop sends no C{PACKET_SENT}); some
packets find no route (C{selectedPeer: null}). Connections come back with the real
connector's backoff (1, 2, 4, 8, 16 s).

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, task
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IReactorTime

TOPOLOGIES = ("linear", "mesh", "hub")


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
        self._protocol: _ConnectorProtocol | None = None
        self._announced = False
        # a connector token, as real connectors would send it: an Authorization header
        headers = {"Authorization": f"Bearer {token}"} if token else None
        factory = WebSocketClientFactory(url, headers=headers)
        factory.protocol = _ConnectorProtocol
        factory.connector = self  # type: ignore[attr-defined]
        parts = urlsplit(url)
        endpoint = clientFromString(reactor, f"tcp:{parts.hostname}:{parts.port or 80}")
        # the real connector's backoff: 1, 2, 4, 8, 16 s, then 16 s forever
        self.service = ClientService(
            endpoint, factory, retryPolicy=backoffPolicy(1.0, 16.0, 2.0, jitter=lambda: 0.0)
        )

    def opened(self, protocol: _ConnectorProtocol) -> None:
        self._protocol = protocol
        if not self._announced:
            # NODE_STATUS goes out once, at start-up, and not again after a reconnect
            self._announced = True
            self.send(self.status)

    def closed(self, protocol: _ConnectorProtocol) -> None:
        if self._protocol is protocol:
            self._protocol = None

    def send(self, message: dict[str, Any]) -> None:
        protocol = self._protocol
        if protocol is None:
            self.dropped += 1
            return
        protocol.sendMessage(json.dumps(message, separators=(",", ":")).encode())
        self.sent[message["type"]] = self.sent.get(message["type"], 0) + 1


class Simulation:
    """
    A network of simulated connectors, sending packets at a chosen rate.
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
    ) -> None:
        self.reactor = reactor
        self.topology = topology
        self.rate = rate
        self.hop_seconds = hop_seconds
        self.no_route = no_route
        self.random = random.Random(seed)
        self.packets = 0
        self._credit = 0.0
        self._last = reactor.seconds()
        self.connectors = {
            node: SimulatedConnector(node, url, reactor, self._status(node), token)
            for node in topology.nodes
        }
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = reactor

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
        Connect every connector; packets start flowing once all of them are connected.
        """
        for connector in self.connectors.values():
            connector.service.startService()
        connected = defer.DeferredList(
            [c.service.whenConnected() for c in self.connectors.values()]
        )
        connected.addCallback(lambda _: self._loop.start(0.01, now=False))
        return connected

    async def stop(self) -> None:
        """
        Stop sending new packets, let those in flight finish their hops, disconnect.
        """
        if self._loop.running:
            self._loop.stop()
        in_flight = 2 * len(self.topology.nodes) * self.hop_seconds + 0.05
        await task.deferLater(self.reactor, in_flight, lambda: None)
        await defer.DeferredList(
            [defer.maybeDeferred(c.service.stopService) for c in self.connectors.values()]
        )

    def _tick(self) -> None:
        now = self.reactor.seconds()
        self._credit = min(self._credit + (now - self._last) * self.rate, max(self.rate, 1.0))
        self._last = now
        while self._credit >= 1.0:
            self._credit -= 1.0
            self.send_packet()

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
                self._sent,
                path[i],
                packet_id,
                path[i + 1],
            )

    def _sent(self, node: str, packet_id: str, next_hop: str) -> None:
        self.connectors[node].send(
            self._event(
                node,
                "PACKET_SENT",
                {"packetId": packet_id, "nextHop": next_hop, "timestamp": now_iso(self.reactor)},
            )
        )

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
        return {
            "packets": self.packets,
            "sent": sent,
            "dropped_while_disconnected": sum(c.dropped for c in self.connectors.values()),
        }


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
        help="linear, mesh or hub (hub-and-spoke); default linear",
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
