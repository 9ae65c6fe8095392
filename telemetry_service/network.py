"""
The network as it last reported itself: each node's latest NODE_STATUS (the replay cache,
what a dashboard is sent on connect) and which nodes have a live connector (presence, as
the delivered NODE_PRESENCE events say: on a shared bus, anywhere).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from telemetry_service.config import Settings
from telemetry_service.ratelimit import TokenBucket
from telemetry_service.replay import ReplayCache


class Network:
    """
    @ivar online: the nodes online now.
    @ivar statuses: each node's latest status, in first-report order.
    """

    def __init__(
        self,
        settings: Settings,
        clock: IReactorTime,
        status_changed: Callable[[str, int, bytes | None], None],
        log: Logger,
    ) -> None:
        """
        @param status_changed: told of every change of the cache (the durable store keeps
            it).
        @param log: the hub's log.
        """
        self._settings = settings
        self._log = log
        self.online: set[str] = set()
        self.statuses = ReplayCache(
            settings.max_nodes,
            settings.max_replay_bytes,
            self.online.__contains__,
            status_changed,
        )
        self._cache_warnings = TokenBucket(clock, settings.warnings_per_second, 5)

    def restore(self, statuses: Iterable[tuple[str, int, bytes]], online: Iterable[str]) -> None:
        """
        Take back what the history kept (see L{Hub.restore}).
        """
        self.online.update(online)
        for node_id, seq, payload in statuses:
            self.statuses.restore(node_id, payload, seq)

    def reset_presence(self, online: Iterable[str]) -> None:
        """
        Which nodes are online is exactly C{online} now.
        """
        online = set(online)
        gone = self.online - online
        # in place: the replay cache holds this set's __contains__
        self.online.intersection_update(online)
        self.online.update(online)
        for node_id in gone:
            self.statuses.went_offline(node_id)

    def presence(self, node_id: str, online: bool) -> None:
        if online:
            self.online.add(node_id)
            self._log.info("Node {nodeId} is online", nodeId=node_id)
        else:
            self.online.discard(node_id)
            self.statuses.went_offline(node_id)
            self._log.info("Node {nodeId} is offline", nodeId=node_id)

    def replay_payload(self, node_id: str) -> bytes | None:
        """
        The node's latest NODE_STATUS as a dashboard gets it on connect (with C{online}).
        """
        record = self.statuses.get(node_id)
        return None if record is None else record.replay_payload(node_id in self.online)

    def remember(self, node_id: str, payload: bytes, seq: int) -> None:
        """
        A node's new status, kept for replay if the cache has room for it.
        """
        evicted = self.statuses.remember(node_id, payload, seq)
        if evicted is None:
            if self._cache_warnings.allow():
                self._log.warn(
                    "Node status cache is full ({max} nodes, {bytes} bytes, the rest online): "
                    "{nodeId} is broadcast but not replayed to new dashboards",
                    max=self._settings.max_nodes,
                    bytes=self._settings.max_replay_bytes,
                    nodeId=node_id,
                )
            return
        for victim in evicted:
            self._log.info(
                "Node status cache full: forgot offline node {victim} to make room for {nodeId}",
                victim=victim,
                nodeId=node_id,
            )
