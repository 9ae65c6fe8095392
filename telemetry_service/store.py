"""
The hub's recent history: every accepted message with its sequence number, so that a
dashboard that reconnects can be sent exactly what it missed.

The hub talks to its store through the narrow L{MessageStore} interface, so that a durable
or shared store can stand in for the in-memory one.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StoredMessage:
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

    def append(self, message: StoredMessage) -> None:
        """
        Add the next message; its seq must be C{last_seq + 1}.
        """

    def after(self, seq: int) -> Sequence[StoredMessage] | None:
        """
        Every message newer than C{seq}, oldest first; C{None} if the store no longer holds
        all of them (or never did: C{seq} is ahead of C{last_seq}).
        """


class MemoryStore:
    """
    The newest messages in memory, bounded by count and by total payload bytes.
    """

    def __init__(self, max_messages: int, max_bytes: int, epoch: str | None = None) -> None:
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._messages: deque[StoredMessage] = deque()
        self._bytes = 0
        self._last_seq = 0
        self._epoch = epoch or secrets.token_hex(8)

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
        return self._messages[0].seq if self._messages else self._last_seq + 1

    def __len__(self) -> int:
        return len(self._messages)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def append(self, message: StoredMessage) -> None:
        if message.seq != self._last_seq + 1:
            raise ValueError(f"seq {message.seq} does not follow {self._last_seq}")
        messages = self._messages
        messages.append(message)
        self._bytes += len(message.payload)
        self._last_seq = message.seq
        while messages and (len(messages) > self._max_messages or self._bytes > self._max_bytes):
            self._bytes -= len(messages.popleft().payload)

    def after(self, seq: int) -> Sequence[StoredMessage] | None:
        if seq > self._last_seq or seq < 0:
            return None
        first = self.first_seq
        if seq < first - 1:
            return None
        return list(islice(self._messages, seq - first + 1, None))
