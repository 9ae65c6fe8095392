"""
Which nodes have a live connector on this hub, and what Redis is told of them.

A node is online while any hub has a live connector for it. This hub says when its first
connector of a node arrives and when its last one leaves (a join, a leave), in order with
its messages (they go through the outbox); after a reconnection, or after the other hubs
took it for dead, it says the whole set instead (a sync). Every second it renews its entry
in Redis (a heartbeat), and any hub's heartbeat takes offline the nodes of hubs that have
not renewed theirs for C{presence_ttl} seconds (killed, frozen, cut off): so the nodes of
a hub that died without a word go offline within C{presence_ttl} plus one heartbeat, 6 s
with the defaults. Stopping, the hub says goodbye: its nodes go offline unless another hub
has them.

The scripts write the NODE_PRESENCE events, with the bytes that
L{presence_event<telemetry_service.vocabulary.presence_event>} gives (a test holds the two
together); the timestamp of a join or a leave is the hub's event's, and that of a sync, a
heartbeat or a goodbye is written here by the same L{iso_millis}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from telemetry_service.bus.redis.errorlog import ErrorLog
from telemetry_service.bus.redis.outbox import Outbox
from telemetry_service.vocabulary import iso_millis

#: runs one of the scripts with the arguments every one of them takes first
Script = Callable[..., Deferred[Any]]


class Presence:
    """
    This hub's nodes, said to Redis.
    """

    _log = Logger()

    def __init__(
        self,
        outbox: Outbox,
        clock: IReactorTime,
        presence_ttl: float,
        errors: ErrorLog,
        *,
        script: Script,
        usable: Callable[[], bool],
        epoch_changed: Callable[[Failure], bool],
    ) -> None:
        """
        @param usable: whether the command connection is up and the history resynced
            (until then, a sync will say what changed).
        @param epoch_changed: takes a failed script call, and says whether it failed for
            Redis having another history (or having forgotten the scripts): the bus
            resyncs.
        """
        self._outbox = outbox
        self._clock = clock
        self._ttl_ms = int(presence_ttl * 1000)
        self._errors = errors
        self._script = script
        self._usable = usable
        self._epoch_changed = epoch_changed
        # nodes with a live connector on this hub -> nodeId as JSON
        self._local: dict[str, bytes] = {}

    def joined(self, node_id: str, event: dict[str, Any]) -> None:
        node_json = orjson.dumps(node_id)
        self._local[node_id] = node_json
        if self._usable():  # else the sync after the reconnection says it
            ts = orjson.dumps(event["timestamp"])
            self._outbox.presence((b"j", node_id.encode(), node_json, ts))

    def left(self, node_id: str, event: dict[str, Any]) -> None:
        node_json = self._local.pop(node_id, None) or orjson.dumps(node_id)
        if self._usable():
            ts = orjson.dumps(event["timestamp"])
            self._outbox.presence((b"l", node_id.encode(), node_json, ts))

    def sync(self) -> Deferred[Any]:
        """
        Make Redis's view of this hub's nodes exactly what it is.
        """
        args: list[bytes] = []
        for node, node_json in self._local.items():
            args += (node.encode(), node_json)
        # joins and leaves queued before the connection was usable are in this
        self._outbox.forget_presence()
        return self._script("sync", str(self._ttl_ms).encode(), self._timestamp(), *args)

    def goodbye(self) -> Deferred[Any]:
        """
        This hub stops: its nodes go offline unless another hub has them.
        """
        return self._script("goodbye", b"0", self._timestamp(), b"")

    def beat(self) -> None:
        """
        Renew this hub's entry, and take the nodes of hubs past their time offline.
        """
        if not self._usable():
            return
        d = self._script("heartbeat", str(self._ttl_ms).encode(), self._timestamp())
        d.addCallbacks(self._beaten, self._beat_failed)

    def _beaten(self, known: Any) -> None:
        if known == 0 and self._usable():
            self._log.warn(
                "Redis bus: the other hubs took this one for dead (no heartbeat for "
                "{ttl} s); saying which nodes it has again",
                ttl=self._ttl_ms / 1000,
            )
            self.sync().addErrback(self._errors.unless_lost)

    def _beat_failed(self, failure: Failure) -> None:
        if not self._epoch_changed(failure):
            self._errors.unless_lost(failure)

    def _timestamp(self) -> bytes:
        return orjson.dumps(iso_millis(self._clock.seconds()))
