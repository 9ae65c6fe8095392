"""
The simulated network's shape: which connectors peer with which, and the route each one
takes to every other (the next hop on a shortest path), for the four topologies of
C{telemetry-sim --topology}.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from itertools import pairwise

#: the network shapes L{Topology.build} knows
TOPOLOGIES = ("linear", "mesh", "hub", "sparse")
#: in a "sparse" network each node peers with this many of the nodes before it
SPARSE_LINKS = 2


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
        """
        A network of C{count} nodes named C{prefix-a}, C{prefix-b}, ... (C{prefix-0},
        C{prefix-1}, ... beyond 26), linked as C{kind} says.

        @param kind: one of L{TOPOLOGIES}.
        @raise ValueError: for fewer than 2 nodes or an unknown C{kind}.
        """
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
        """The nodes a packet crosses from C{source} to C{destination}, both included."""
        hops = [source]
        while hops[-1] != destination:
            hops.append(self.next_hop[hops[-1]][destination])
        return hops

    @staticmethod
    def address(node: str) -> str:
        """A node's ILP address (C{g.connectora} for C{connector-a})."""
        return f"g.{node.replace('-', '')}"
