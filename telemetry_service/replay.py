"""
The replay cache: the latest NODE_STATUS of every node, in the order the nodes first
reported, bounded by count and by bytes.

Real connectors send NODE_STATUS once, at start-up, so this cache is the only way a
dashboard that connects later learns the network. When it is full, the offline node whose
status is oldest goes first; a node with a live connector is never evicted, so inventing
nodeIds cannot push real nodes out. Eviction takes O(log n): offline nodes wait in a heap
ordered by the age of their status.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from telemetry_service.codec import decode, encode


@dataclass(eq=False, slots=True)
class NodeRecord:
    """
    The latest NODE_STATUS of one node, as it was broadcast (with its C{seq}).
    """

    payload: bytes
    seq: int
    #: when it last changed, in the order of all status changes (eviction: oldest first)
    version: int

    def replay_payload(self, online: bool) -> bytes:
        """
        The status with a top-level C{online} flag added at the end.
        """
        if b'"online"' in self.payload:  # the connector sent a field of that name: replace it
            return encode({**decode(self.payload, 10_000), "online": online})
        return self.payload[:-1] + (b',"online":true}' if online else b',"online":false}')


class ReplayCache:
    """
    nodeId -> its latest status; iteration is first-report order.
    """

    def __init__(
        self,
        max_nodes: int,
        max_bytes: int,
        is_online: Callable[[str], bool],
        on_change: Callable[[str, int, bytes | None], None] | None = None,
    ) -> None:
        """
        @param is_online: whether a node has a live connector now (such a node is never
            evicted).
        @param on_change: told of every node's new status, and of every node forgotten
            (C{None}), so that a durable store can keep the cache.
        """
        self._max_nodes = max_nodes
        self._max_bytes = max_bytes
        self._is_online = is_online
        self._on_change = on_change or _ignore
        self._records: dict[str, NodeRecord] = {}
        self._bytes = 0
        self._version = 0
        # (version, nodeId) of nodes that went offline: the eviction order. Entries go stale
        # when the node comes back, changes or leaves; they are skipped when popped.
        self._offline: list[tuple[int, str]] = []

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def get(self, node_id: str) -> NodeRecord | None:
        return self._records.get(node_id)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def remember(self, node_id: str, payload: bytes, seq: int) -> list[str] | None:
        """
        Keep C{payload} (broadcast as C{seq}) as C{node_id}'s latest status, in place if
        the node is known, evicting offline nodes to make room.

        @return: the nodes evicted, or None if there was no room (only live nodes are left
            to evict): then the node is not cached at all, since an older status of it
            would be out of date (offline nodes may have been evicted all the same).
        """
        records = self._records
        self._version += 1
        record = records.get(node_id)
        if record is not None:
            self._bytes -= len(record.payload)
        evicted, fits = self._make_room(len(payload), len(records) + (record is None), node_id)
        for victim in evicted:
            self._on_change(victim, 0, None)
        if not fits:
            if record is not None:
                del records[node_id]
                self._on_change(node_id, seq, None)
            return None
        self._bytes += len(payload)
        if record is None:
            records[node_id] = NodeRecord(payload, seq, self._version)
        else:  # in place: the node keeps its first-report position
            record.payload, record.seq, record.version = payload, seq, self._version
        self._on_change(node_id, seq, payload)
        return evicted

    def restore(self, node_id: str, payload: bytes, seq: int) -> None:
        """
        Take back a status kept from before a restart, after the others restored; its node
        is offline until its connector is back.
        """
        self._version += 1
        self._records[node_id] = NodeRecord(payload, seq, self._version)
        self._bytes += len(payload)
        heapq.heappush(self._offline, (self._version, node_id))

    def went_offline(self, node_id: str) -> None:
        """
        The node's last connector left: from now on it may be evicted.
        """
        record = self._records.get(node_id)
        if record is None:
            return
        heapq.heappush(self._offline, (record.version, node_id))
        if len(self._offline) > 2 * len(self._records) + 64:
            self._offline = [
                (r.version, n) for n, r in self._records.items() if not self._is_online(n)
            ]
            heapq.heapify(self._offline)

    def _make_room(self, size: int, count: int, keep: str) -> tuple[list[str], bool]:
        """
        Evict offline nodes, oldest status first, until C{count} nodes and C{size} more
        bytes fit; say which went, and whether it fits now.
        """
        evicted: list[str] = []
        while count > self._max_nodes or self._bytes + size > self._max_bytes:
            victim = self._pop_offline(keep)
            if victim is None:
                return evicted, False
            self._bytes -= len(self._records.pop(victim).payload)
            evicted.append(victim)
            count -= 1
        return evicted, True

    def _pop_offline(self, keep: str) -> str | None:
        heap = self._offline
        while heap:
            version, node_id = heapq.heappop(heap)
            record = self._records.get(node_id)
            if (
                record is not None
                and record.version == version
                and node_id != keep
                and not self._is_online(node_id)
            ):
                return node_id
        return None


def _ignore(node_id: str, seq: int, payload: bytes | None) -> None:
    pass
