"""
The simulated network at work: what C{telemetry-sim} plays against a hub, and why.

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

It doubles as a load generator: L{Simulation.report} says what it sent and, with
C{--measure}, a dashboard connection reports the end-to-end latency it sees (see
L{telemetry_service.tools.sim.latency}).
"""

from __future__ import annotations

import hashlib
import random
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task

from telemetry_service.tools.sim.chatter import LogWriter
from telemetry_service.tools.sim.connector import SimulatedConnector
from telemetry_service.tools.sim.ledger import (
    DEFAULT_SETTLEMENT_SECONDS,
    DEFAULT_SETTLEMENT_THRESHOLD,
    Ledger,
)
from telemetry_service.tools.sim.topology import Topology
from telemetry_service.vocabulary import iso_millis

#: a tick or hop that fails is reported at once, later failures at most this often (seconds)
ERROR_REPORT_SECONDS = 10.0


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
            "timestamp": iso_millis(self.reactor.seconds()),
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
        stamp = iso_millis(self.reactor.seconds())
        self.connectors[node].send(
            self._event(
                node,
                "PACKET_SENT",
                {"packetId": packet_id, "nextHop": next_hop, "timestamp": stamp},
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
        stamp = iso_millis(self.reactor.seconds())
        return {"type": kind, "nodeId": node, "timestamp": stamp, "data": data}

    def report(self) -> dict[str, Any]:
        """
        What it did so far, for the progress lines and the final report: packets started,
        messages sent by type, those dropped while a connection was down, reconnects and,
        where there were any, the ticks and hops that raised.
        """
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
