"""
What a dashboard is sent on its own, ahead of the live broadcast: the snapshot (each node's
latest status) and the messages a resuming dashboard missed. Each is made as the dashboard
reads it (the transport pulls the next payload only while the peer keeps up), never built
whole: what it holds counts against the peer's budget (C{held_bytes}).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Container

from telemetry_service.connections import HistoryLostError
from telemetry_service.history.memory import MessageStore, StoredMessage
from telemetry_service.replay import ReplayCache

#: messages read from the store at a time while a resume is sent: few, since each may be
#: up to --max-message-bytes and what a stream holds counts against its client's budget
_RESUME_CHUNK = 8
#: what a stream's own bookkeeping costs a client's budget, and a snapshot's per node
_STREAM_COST = 256
_SNAPSHOT_COST_PER_NODE = 8


class SnapshotStream:
    """
    Each node's status as of seq C{as_of}, in first-report order. A node whose status
    changed since comes later anyway, in the live stream behind the snapshot, so it is
    skipped here, as is a node evicted meanwhile.
    """

    def __init__(
        self,
        cache: ReplayCache,
        online: Container[str],
        node_ids: list[str],
        as_of: int,
    ) -> None:
        self._cache = cache
        self._online = online
        self._node_ids = node_ids
        self._index = 0
        self._as_of = as_of
        self.held_bytes = _STREAM_COST + _SNAPSHOT_COST_PER_NODE * len(node_ids)

    def next_payload(self) -> bytes | None:
        node_ids = self._node_ids
        while self._index < len(node_ids):
            node_id = node_ids[self._index]
            self._index += 1
            record = self._cache.get(node_id)
            if record is not None and record.seq <= self._as_of:
                return record.replay_payload(node_id in self._online)
        return None


class ResumeStream:
    """
    The messages after seq C{after} up to C{last} that the client wants, read from the
    store a few at a time.
    """

    def __init__(
        self,
        store: MessageStore,
        wants: Callable[[str, str | None], bool],
        after: int,
        last: int,
    ) -> None:
        self._store = store
        self._wants = wants
        self._epoch = store.epoch
        self._seq = after
        self._last = last
        self._chunk: deque[StoredMessage] = deque()
        self.held_bytes = _STREAM_COST

    def next_payload(self) -> bytes | None:
        chunk = self._chunk
        while True:
            if not chunk and not self._fill():
                return None
            stored = chunk.popleft()
            self.held_bytes -= len(stored.payload)
            if stored.seq > self._last:
                chunk.clear()
                self.held_bytes = _STREAM_COST
                return None
            if self._wants(stored.type, stored.node_id):
                return stored.payload

    def _fill(self) -> bool:
        if self._seq >= self._last:
            return False
        store = self._store
        messages = store.after(self._seq, _RESUME_CHUNK) if store.epoch == self._epoch else None
        if messages is None:
            raise HistoryLostError(f"the history no longer holds seq {self._seq + 1}")
        if not messages:
            return False
        self._chunk.extend(messages)
        self._seq = messages[-1].seq
        self.held_bytes += sum(len(m.payload) for m in messages)
        return True
