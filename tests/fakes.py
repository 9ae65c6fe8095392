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
    """

    def __init__(self, address: str | None = None, congested: bool = False) -> None:
        self.address = address or f"tcp4:127.0.0.1:{next(_ports)}"
        self.congested = congested
        self.sent: list[bytes] = []

    def send(self, payload: bytes) -> None:
        assert isinstance(payload, bytes)
        self.sent.append(payload)

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


HUB_FIELDS = ("seq", "online")


def telemetry_only(messages: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as their senders sent them: no NODE_PRESENCE, no seq, no online."""
    return [
        {k: v for k, v in m.items() if k not in HUB_FIELDS}
        for m in messages
        if m.get("type") != "NODE_PRESENCE"
    ]
