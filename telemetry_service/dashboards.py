"""
Who hears what, and what a dashboard is sent when it says CLIENT_CONNECT.

Every listener and unfiltered dashboard hears every message, in connection order; a
dashboard that asked for a filter hears what matches it, and the hub's own events only if it
named them (C{hubEvents}). On CLIENT_CONNECT a dashboard is sent, to it alone and before
anything else, the snapshot (each node's latest status) or, if it asked to resume, a RESUME
frame and what it missed. With several hubs on one bus, a dashboard may resume from a seq
another hub numbered and this one has not read yet: it waits (briefly) until this hub has.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Container
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from telemetry_service.bus.base import Bus
from telemetry_service.codec import encode
from telemetry_service.config import Settings
from telemetry_service.connections import Connection, Filter, Peer, Role
from telemetry_service.errors import RATE_LIMITED, REPLAY_BUSY, Rejection, shorten
from telemetry_service.ratelimit import TokenBucket
from telemetry_service.replay import ReplayCache
from telemetry_service.streams import ResumeStream, SnapshotStream
from telemetry_service.vocabulary import HUB_EVENTS, NODE_STATUS, RESUME

#: how long a resume from a seq this hub has not read yet waits for it (see L{Bus.shared})
RESUME_CATCH_UP_SECONDS = 2.0


class Dashboards:
    """
    The listeners and dashboards of one hub, by what they asked to hear.
    """

    def __init__(
        self,
        settings: Settings,
        clock: IReactorTime,
        bus: Callable[[], Bus],
        node_status: ReplayCache,
        online: Container[str],
        log: Logger,
    ) -> None:
        """
        @param bus: the hub's bus (its history answers resumes).
        @param node_status: the replay cache (the snapshot), C{online} the nodes online.
        @param log: the hub's log.
        """
        self._settings = settings
        self._clock = clock
        self._bus = bus
        self._node_status = node_status
        self._online = online
        self._log = log
        # unfiltered listeners and dashboards, in connection order (a dict is an ordered set)
        self._recipients: dict[Peer, None] = {}
        # dashboards that asked for a filter
        self._filtered: dict[Peer, Filter] = {}
        # dashboards that asked for some of the hub's own events
        self._hub_event_subscribers: dict[Peer, Connection] = {}
        # dashboards resuming from a seq the bus has not delivered here yet -> CLIENT_CONNECT
        self._waiting: dict[Peer, tuple[Connection, dict[str, Any]]] = {}

    # -- who hears what

    def listen(self, peer: Peer) -> None:
        """
        C{peer} hears every message from now on (a listener, until it says what it is).
        """
        self._recipients[peer] = None

    def stop_hearing(self, peer: Peer) -> None:
        """
        C{peer} is a connector, or sent nothing a reader sends: it hears nothing.
        """
        self._recipients.pop(peer, None)

    def forget(self, peer: Peer) -> None:
        self._recipients.pop(peer, None)
        self._filtered.pop(peer, None)
        self._hub_event_subscribers.pop(peer, None)
        self._waiting.pop(peer, None)

    def is_waiting(self, peer: Peer) -> bool:
        return peer in self._waiting

    def targets(self, kind: str, node_id: str | None) -> Collection[Peer]:
        """
        Who hears a telemetry message of this type and node.
        """
        if self._filtered:
            return [
                *self._recipients,
                *(p for p, f in self._filtered.items() if f.matches(kind, node_id)),
            ]
        return self._recipients.keys()

    def hub_event_targets(self, kind: str, node_id: str | None) -> list[Peer]:
        """
        Who hears one of the hub's own events (a NODE_PRESENCE).
        """
        return [
            peer
            for peer, connection in self._hub_event_subscribers.items()
            if _wants(connection, kind, node_id)
        ]

    # -- CLIENT_CONNECT

    def client_connect(self, connection: Connection, message: dict[str, Any]) -> None:
        """
        A reader's CLIENT_CONNECT (the hub has checked that it may read).

        @raise Rejection: its last snapshot or resume is still being sent, or it asks
            too often.
        """
        peer = connection.peer
        # A snapshot or a resume costs the hub work and memory until the client has read
        # it: one at a time, and not too often.
        if peer.replaying:
            raise Rejection(
                REPLAY_BUSY,
                "the answer to the last CLIENT_CONNECT is still being sent; "
                "send CLIENT_CONNECT again once it has arrived",
            )
        if connection.replays is None:
            s = self._settings
            connection.replays = TokenBucket(self._clock, s.replays_per_second, s.replays_burst)
        if not connection.replays.allow():
            raise Rejection(
                RATE_LIMITED,
                f"CLIENT_CONNECT at most {self._settings.replays_burst} times at once and "
                f"{self._settings.replays_per_second:g} per second",
            )
        resume = message.get("resume")
        if isinstance(resume, dict) and self._must_wait(resume):
            # Another hub numbered that seq and this one has not read it from the bus yet
            # (a dashboard moved here when its hub went away), or this hub has just started
            # and not loaded the shared history yet (an in-place restart): answer once it
            # has, as if the CLIENT_CONNECT had come then. It is milliseconds, not seconds.
            self._waiting[peer] = (connection, message)
            self._clock.callLater(RESUME_CATCH_UP_SECONDS, self._stop_waiting, peer, message)
            return
        self._waiting.pop(peer, None)
        self._subscribe(connection, message)

    def delivered(self) -> None:
        """
        The bus delivered a message here, or loaded its history: dashboards waiting for it
        are answered now (after its fanout: their resume ends with it, live ones follow).
        """
        if not self._waiting:
            return
        for peer, (connection, message) in list(self._waiting.items()):
            if not self._must_wait(message["resume"]):
                del self._waiting[peer]
                self._subscribe(connection, message)

    def _must_wait(self, resume: dict[str, Any]) -> bool:
        seq = resume.get("seq")
        if not isinstance(seq, int):
            return False  # nothing to resume from: the snapshot, whatever the history
        bus = self._bus()
        if not bus.ready:
            return True
        store = bus.store
        return bus.shared and resume.get("epoch") == store.epoch and seq > store.last_seq

    def _stop_waiting(self, peer: Peer, message: dict[str, Any]) -> None:
        waiting = self._waiting.get(peer)
        if waiting is not None and waiting[1] is message:
            del self._waiting[peer]
            self._subscribe(waiting[0], message)

    def _subscribe(self, connection: Connection, message: dict[str, Any]) -> None:
        peer = connection.peer
        if connection.role is not Role.DASHBOARD:
            connection.role = Role.DASHBOARD
            self._log.info(
                "Dashboard client connected ({peer}); {count} nodes known",
                peer=peer.address,
                count=len(self._node_status),
            )
        connection.filter = Filter.from_request(message.get("filter"))
        hub_events = message.get("hubEvents")
        connection.hub_events = (
            HUB_EVENTS.intersection(hub_events) if isinstance(hub_events, list) else frozenset()
        )
        if connection.filter is None:
            self._filtered.pop(peer, None)
            self._recipients[peer] = None
        else:
            self._recipients.pop(peer, None)
            self._filtered[peer] = connection.filter
        if connection.hub_events:
            self._hub_event_subscribers[peer] = connection
        else:
            self._hub_event_subscribers.pop(peer, None)
        # Everything below goes to this client only, before anything that follows its
        # CLIENT_CONNECT: the hub is single-threaded, so no broadcast can come in between.
        resume = message.get("resume")
        if isinstance(resume, dict):
            self._resume(connection, resume)
        else:
            self._send_snapshot(connection)

    def _send_snapshot(self, connection: Connection) -> None:
        """
        The latest NODE_STATUS of every node, in first-report order, each with C{online}, as
        of now; sent as the client reads it.
        """
        wanted = connection.filter
        node_ids = [
            n for n in self._node_status if wanted is None or wanted.matches(NODE_STATUS, n)
        ]
        if node_ids:
            last = self._bus().store.last_seq
            connection.peer.send_stream(
                SnapshotStream(self._node_status, self._online, node_ids, last)
            )

    def _resume(self, connection: Connection, request: dict[str, Any]) -> None:
        """
        Send what a reconnecting dashboard missed, or say plainly that it cannot be had.
        """
        store = self._bus().store
        epoch, seq = request.get("epoch"), request.get("seq")
        last = store.last_seq
        status: dict[str, Any] = {"type": RESUME, "epoch": store.epoch, "seq": last}
        if epoch is None and seq is None:
            status.update(status="fresh")
        elif epoch != store.epoch:
            status.update(status="not_recovered", reason="the hub's history was reset (new epoch)")
        elif isinstance(seq, int) and seq > last:
            status.update(
                status="not_recovered",
                reason=f"seq {seq} is ahead of this hub's history (seq {last})",
            )
        elif not isinstance(seq, int) or store.after(seq, 1) is None:
            status.update(
                status="not_recovered",
                reason=f"the history no longer holds every message after seq {seq}",
            )
        else:
            status.update(status="resumed", missed=last - seq)
        peer = connection.peer
        peer.send(encode(status))
        self._log.info(
            "Dashboard {peer} resume from {epoch}/{seq}: {status}",
            peer=peer.address,
            epoch=shorten(epoch, 64),
            seq=seq,
            status=status["status"],
        )
        if status["status"] != "resumed":
            self._send_snapshot(connection)
        elif isinstance(seq, int) and seq < last:
            wants = functools.partial(_wants, connection)
            peer.send_stream(ResumeStream(store, wants, seq, last))


def _wants(connection: Connection, message_type: str, node_id: str | None) -> bool:
    """
    Whether a dashboard asked for a message of this type and node.
    """
    if message_type in HUB_EVENTS and message_type not in connection.hub_events:
        return False
    wanted = connection.filter
    return wanted is None or wanted.matches(message_type, node_id)
