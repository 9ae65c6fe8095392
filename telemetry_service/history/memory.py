"""
The hub's recent history: every accepted message with its sequence number, so that a
dashboard that reconnects can be sent exactly what it missed; and what a durable store also
keeps for the replay cache.

The hub talks to its store through the narrow L{MessageStore} interface, so that a durable
(L{telemetry_service.history.sqlite}) or shared store can stand in for the in-memory one.
"""

from __future__ import annotations

import mmap
import secrets
from collections.abc import Sequence
from typing import NamedTuple, Protocol

from twisted.internet.defer import Deferred, succeed


def new_epoch() -> str:
    return secrets.token_hex(8)


class StoredMessage(NamedTuple):
    """
    One message of the history. A named tuple rather than a frozen dataclass: one is made
    per accepted message and per message loaded at start-up, and a tuple is made in a
    fraction of the time.
    """

    #: position in the hub's history: 1, 2, 3, ... without gaps within an epoch
    seq: int
    #: message type, for filters
    type: str
    #: the node it concerns, for filters (None for events without a nodeId)
    node_id: str | None
    #: the message as broadcast (UTF-8 JSON, with its seq)
    payload: bytes


class MessageStore(Protocol):
    """
    What the hub needs from a history store.
    """

    @property
    def degraded(self) -> str | None:
        """
        Why the store no longer keeps what it is given beyond memory (its files cannot be
        written), "closed" once closed, or None while it does its work.
        """

    @property
    def epoch(self) -> str:
        """
        Identifies one unbroken history; it changes whenever history is lost (e.g. the
        restart of an in-memory store), so a seq from another epoch means nothing here.
        """

    @property
    def last_seq(self) -> int:
        """
        The seq of the newest message, 0 before the first.
        """

    def __len__(self) -> int:
        """
        How many messages are held.
        """

    @property
    def size_bytes(self) -> int:
        """
        The bytes of the messages held.
        """

    def append(self, message: StoredMessage) -> None:
        """
        Add the next message; its seq must be C{last_seq + 1}.
        """

    def after(self, seq: int, limit: int) -> Sequence[StoredMessage] | None:
        """
        The first C{limit} messages newer than C{seq}, oldest first; C{None} if the store no
        longer holds all the messages after C{seq} (or never did: C{seq} is ahead of
        C{last_seq}). An empty sequence means C{seq} is the newest.
        """

    def commit(self) -> None:
        """
        Make everything appended so far as durable as the store can. Called before any
        frame leaves the hub, so that no client is ever sent a C{seq} the store could later
        give to another message; cheap when there is nothing new.
        """

    def node_statuses(self) -> Sequence[tuple[str, int, bytes]]:
        """
        The replay cache as it was kept: (nodeId, seq, status as broadcast), in the order
        the nodes first reported. Read once, at start-up.
        """

    def node_status_changed(self, node_id: str, seq: int, payload: bytes | None) -> None:
        """
        Keep C{payload} as the node's latest status (C{None}: the node was forgotten).
        """

    def close(self) -> Deferred[None]:
        """
        Make everything durable and let go of the store: the hub has stopped.
        """


Entry = tuple[int, int, str, str | None]


class MemoryStore:
    """
    The newest messages in memory, bounded by count and by payload bytes.

    Payloads live in one ring buffer of C{max_bytes} (anonymous memory, so pages are only
    backed as they fill) rather than as one object each: a long FIFO of objects interleaved
    with the hub's short-lived allocations fragments the heap, which cost several times the
    history's size in resident memory. Entries are C{(offset, length, type, node_id)} in a
    circular list that grows (by doubling) up to C{max_messages}, so that the entry of any
    seq is found at once; their seqs are contiguous, so an entry's seq is its position plus
    the oldest seq.
    """

    #: memory is all it keeps, and all it promises
    degraded: str | None = None

    def __init__(
        self, max_messages: int, max_bytes: int, epoch: str | None = None, last_seq: int = 0
    ) -> None:
        """
        @param epoch: the epoch to continue (a new one if None).
        @param last_seq: the seq to continue after.
        """
        self._max_messages = max_messages
        self._capacity = max_bytes
        self._ring = mmap.mmap(-1, max_bytes)
        self._tail = 0
        self._slots: list[Entry | None] = [None] * min(max_messages, 1024)
        self._start = 0  # slot of the oldest entry
        self._count = 0
        self._newest_start = 0  # ring offset of the newest entry
        self._bytes = 0
        self._last_seq = last_seq
        self._epoch = epoch or new_epoch()

    @property
    def epoch(self) -> str:
        return self._epoch

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def first_seq(self) -> int:
        """
        The oldest seq still held (C{last_seq + 1} when empty).
        """
        return self._last_seq - self._count + 1

    def __len__(self) -> int:
        return self._count

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def _entry(self, index: int) -> Entry:
        """
        The C{index}th entry held, 0 being the oldest.
        """
        slots = self._slots
        entry = slots[(self._start + index) % len(slots)]
        assert entry is not None
        return entry

    def _pop_oldest(self) -> None:
        slots = self._slots
        entry = slots[self._start]
        assert entry is not None
        slots[self._start] = None
        self._start = (self._start + 1) % len(slots)
        self._count -= 1
        self._bytes -= entry[1]

    def _clear(self) -> None:
        while self._count:
            self._pop_oldest()

    def append(self, message: StoredMessage) -> None:
        seq = message.seq
        if seq != self._last_seq + 1:
            raise ValueError(f"seq {seq} does not follow {self._last_seq}")
        self._last_seq = seq
        payload = message.payload
        length = len(payload)
        # an empty payload still takes one byte, so that every entry has its own offset
        room = length or 1
        capacity = self._capacity
        if room > capacity:
            # cannot be held: the history now starts after it
            self._clear()
            return
        # Evict the oldest entries until the payload fits (this runs for every message
        # once the history is full, so it is written out here rather than in calls). Held
        # bytes run from the oldest entry's offset (the head) to the tail, wrapping past
        # the end of the ring at most once; a write that would not fit before the end
        # starts again at 0, leaving the end unused.
        slots, oldest, count = self._slots, self._start, self._count
        size, tail, newest = len(slots), self._tail, self._newest_start
        freed = 0
        while True:
            if not count:
                at = tail if tail + room <= capacity else 0
                break
            head = slots[oldest][0]  # type: ignore[index]
            if newest >= head:  # no wrap: free space is [tail, end) and [0, head)
                if tail + room <= capacity:
                    at = tail
                    break
                if room <= head:
                    at = 0
                    break
            elif tail + room <= head:  # they wrap: free space is [tail, head)
                at = tail
                break
            freed += slots[oldest][1]  # type: ignore[index]
            slots[oldest] = None
            oldest = oldest + 1 if oldest + 1 < size else 0
            count -= 1
        if count >= self._max_messages:
            freed += slots[oldest][1]  # type: ignore[index]
            slots[oldest] = None
            oldest = oldest + 1 if oldest + 1 < size else 0
            count -= 1
        self._start, self._count = oldest, count
        self._bytes -= freed
        if count == size:
            self._grow()
            slots, oldest, size = self._slots, self._start, len(self._slots)
        self._ring[at : at + length] = payload
        index = oldest + count
        slots[index if index < size else index - size] = (at, length, message.type, message.node_id)
        self._count = count + 1
        self._bytes += length
        self._tail = at + room
        self._newest_start = at

    def _grow(self) -> None:
        slots, start = self._slots, self._start
        size = min(self._max_messages, 2 * len(slots))
        self._slots = slots[start:] + slots[:start] + [None] * (size - len(slots))
        self._start = 0

    def commit(self) -> None:
        pass

    def node_statuses(self) -> Sequence[tuple[str, int, bytes]]:
        return ()

    def node_status_changed(self, node_id: str, seq: int, payload: bytes | None) -> None:
        pass

    def close(self) -> Deferred[None]:
        return succeed(None)

    def after(self, seq: int, limit: int) -> Sequence[StoredMessage] | None:
        if seq > self._last_seq or seq < 0:
            return None
        first = self.first_seq
        if seq < first - 1:
            return None
        ring = self._ring
        begin = seq - first + 1
        result = []
        for index in range(begin, min(self._count, begin + limit)):
            offset, length, kind, node_id = self._entry(index)
            payload = ring[offset : offset + length]
            result.append(StoredMessage(first + index, kind, node_id, payload))
        return result
