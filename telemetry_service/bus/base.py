"""
Where accepted messages get their C{seq} and come back to be delivered.

The hub accepts a message (checks it, binds its connector) and hands it to a bus; the bus
numbers it, keeps it in the history and gives it back to the hub's C{deliver}, which sends
it to the hub's own dashboards. With one hub, that is all synchronous (L{LocalBus}). With
several hubs on Redis (L{telemetry_service.bus.redis.bus.RedisBus}), every hub's messages are
numbered in one order by Redis and every hub delivers them all, its own included, in that
order: one C{seq} space, one history, the same replay cache everywhere.

Presence goes through the bus too: a hub says when its first connector of a node arrives
and when its last one leaves; the bus decides when the node as a whole goes online or
offline (with one hub: at once), and delivers the NODE_PRESENCE event like any message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from telemetry_service.codec import encode
from telemetry_service.history.memory import MessageStore, StoredMessage

#: what the bus gives back: the message as stored, and its parsed form when the bus still
#: has it (from another hub, only the bytes)
Deliver = Callable[[StoredMessage, "dict[str, Any] | None"], None]


class Bus(Protocol):
    #: the history: what resumes are answered from
    @property
    def store(self) -> MessageStore: ...

    def start(self) -> None:
        """
        The hub is serving: begin the bus's own work (connecting to Redis, say).
        """

    def submit(self, message: dict[str, Any], message_type: str, node_id: str | None) -> None:
        """
        Number C{message} (its C{seq} is set on it), keep it, and deliver it in order.

        @param node_id: the node the message counts as, for filters.
        """

    def node_joined(self, node_id: str, event: dict[str, Any]) -> None:
        """
        This hub has a connector for C{node_id} now, and had none: C{event} is the
        NODE_PRESENCE (online) to publish if the node was offline everywhere.
        """

    def node_left(self, node_id: str, event: dict[str, Any]) -> None:
        """
        This hub's last connector for C{node_id} is gone: C{event} is the NODE_PRESENCE
        (offline) to publish if no hub has one any more.
        """

    @property
    def degraded(self) -> str | None:
        """
        Why the bus cannot do its work now (a lost connection), or None.
        """

    #: whether other hubs number messages too: then a dashboard may come with a seq this
    #: hub has not delivered yet, and will in a moment
    shared: bool

    @property
    def ready(self) -> bool:
        """
        Whether the history that resumes are answered from is there yet (a shared bus loads
        it from Redis once connected; a resume that comes before waits for it, briefly).
        """

    def health(self) -> dict[str, Any]:
        """
        What C{/health} says of the bus.
        """

    def close(self) -> Deferred[None]:
        """
        The hub has stopped (its connectors are gone): finish what was submitted, let go.
        """


class LocalBus:
    """
    One hub: the hub's own store numbers and keeps every message, delivered at once.
    """

    degraded: str | None = None
    shared = False
    ready = True

    def __init__(self, store: MessageStore, deliver: Deliver) -> None:
        self._store = store
        self._deliver = deliver

    @property
    def store(self) -> MessageStore:
        return self._store

    def start(self) -> None:
        pass

    def submit(self, message: dict[str, Any], message_type: str, node_id: str | None) -> None:
        store = self._store
        message.pop("seq", None)  # a connector's own "seq" field: ours replaces it, last
        seq = message["seq"] = store.last_seq + 1
        stored = StoredMessage(seq, message_type, node_id, encode(message))
        store.append(stored)
        self._deliver(stored, message)

    def node_joined(self, node_id: str, event: dict[str, Any]) -> None:
        self.submit(event, event["type"], node_id)

    def node_left(self, node_id: str, event: dict[str, Any]) -> None:
        self.submit(event, event["type"], node_id)

    def health(self) -> dict[str, Any]:
        return {"kind": "local"}

    def close(self) -> Deferred[None]:
        return self._store.close()
