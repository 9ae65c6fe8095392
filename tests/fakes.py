"""
In-memory stand-ins for the hub's collaborators.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from typing import Any

_ports = itertools.count(40000)


class FakePeer:
    """
    A peer that records what the hub sends it.

    A stream (snapshot, resume) is read at once, as by a client that keeps up, unless the
    peer is made with C{reading=False}: then it waits in C{streams} until L{read} is called,
    and what is sent meanwhile waits behind it, as on a real connection.
    """

    def __init__(
        self, address: str | None = None, congested: bool = False, reading: bool = True
    ) -> None:
        self.address = address or f"tcp4:127.0.0.1:{next(_ports)}"
        self.congested = congested
        self.reading = reading
        self.sent: list[bytes] = []
        self.streams: list[Any] = []
        self.waiting: list[bytes] = []
        self.closed: tuple[int, str] | None = None

    @property
    def replaying(self) -> bool:
        return bool(self.streams)

    def send(self, payload: bytes) -> None:
        assert isinstance(payload, bytes)
        if self.closed is not None:
            return
        if self.streams:
            self.waiting.append(payload)
        else:
            self.sent.append(payload)

    def send_stream(self, stream: Any) -> None:
        assert stream.held_bytes > 0
        self.streams.append(stream)
        if self.reading:
            self.read()

    def read(self, count: int | None = None) -> None:
        """Take C{count} messages of the streams (all when None), then what waited behind."""
        while self.streams and (count is None or count > 0):
            payload = self.streams[0].next_payload()
            if payload is None:
                self.streams.pop(0)
                continue
            self.sent.append(payload)
            if count is not None:
                count -= 1
        if not self.streams:
            self.sent.extend(self.waiting)
            self.waiting.clear()

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(p) for p in self.sent]

    @property
    def telemetry(self) -> list[dict[str, Any]]:
        """What was sent, less the hub's presence events and the fields the hub adds."""
        return telemetry_only(self.messages)

    def clear(self) -> None:
        self.sent.clear()


class RecordingFanout:
    """
    A fanout that records each broadcast (its payload object and recipients) and delivers it.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, list[Any]]] = []

    def __call__(self, peers: Iterable[Any], payload: bytes) -> None:
        recipients = list(peers)
        self.calls.append((payload, recipients))
        for peer in recipients:
            peer.send(payload)


def encode(message: Any) -> bytes:
    return json.dumps(message).encode()


HUB_FIELDS = ("seq", "online", "sourceNodeId")


def telemetry_only(messages: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as their senders sent them: no NODE_PRESENCE, none of the fields the hub adds."""
    return [
        {k: v for k, v in m.items() if k not in HUB_FIELDS}
        for m in messages
        if m.get("type") != "NODE_PRESENCE"
    ]
