"""
The simulated connectors' chatter: the C{LOG} lines they write, a steady trickle at a rate
that follows the packet rate, written from what the network just did.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime

from telemetry_service.tools.sim.topology import Topology
from telemetry_service.vocabulary import iso_millis

#: LOG lines per node per second: this many per packet/s, within the bounds below
LOGS_PER_PACKET = 0.3
LOGS_PER_NODE_MIN = 0.25
LOGS_PER_NODE_MAX = 20.0
#: how often each level is chosen for a LOG line (settlement outcomes add their own)
LOG_LEVELS = (("info", 0.80), ("debug", 0.12), ("warn", 0.07), ("error", 0.01))
#: facts the log lines are written from: the last packets forwarded, routes not found
RECENT_FACTS = 64

#: how the simulation's parts send a message as a node: C{send(nodeId, message)}
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
        """Send one C{LOG} line as C{node}, stamped now."""
        stamp = iso_millis(self._clock.seconds())
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
        """
        Write the lines due after C{elapsed} seconds at C{packet_rate} packets per second.
        """
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
