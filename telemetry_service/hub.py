"""
The hub: who is connected, in which role, what the network last reported, and what each
message becomes.

It is a facade over pieces of its own: L{intake} reads a payload, L{Dashboards} knows who
hears what and answers CLIENT_CONNECT, L{Refusals} says no within each connection's
budgets, the L{ReplayCache} holds each node's latest status, and the L{Bus} numbers, keeps
and delivers what is accepted. It knows a peer only through the L{Peer} protocol (send,
stream, close, and whether it keeps up); it imports nothing from Autobahn or
C{twisted.internet}, and takes its clock as an argument, so it is tested with plain
synchronous tests.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from itertools import islice
from typing import Any

import orjson
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from telemetry_service.auth import Access, Grant
from telemetry_service.bus.base import Bus, LocalBus
from telemetry_service.config import Settings
from telemetry_service.connections import (
    Connection,
    Fanout,
    Observer,
    Peer,
    Role,
    send_to_each,
)
from telemetry_service.dashboards import Dashboards
from telemetry_service.errors import (
    MESSAGE_TOO_BIG,
    NODE_ID_MISMATCH,
    POLICY_VIOLATION,
    ROLE_VIOLATION,
    UNAUTHORIZED,
    Rejection,
    shorten,
)
from telemetry_service.history.memory import MemoryStore, MessageStore, StoredMessage
from telemetry_service.intake import Limits, read
from telemetry_service.network import Network
from telemetry_service.rates import MessageRates
from telemetry_service.refusals import Refusals
from telemetry_service.schemas import SchemaCatalog
from telemetry_service.stats import HubStats
from telemetry_service.vocabulary import (
    CLIENT_CONNECT,
    HUB_EVENTS,
    NODE_PRESENCE,
    NODE_STATUS,
    PLACEHOLDER_NODE_ID,
    presence_event,
)


class Hub:
    """
    Validates what connectors send and broadcasts what is valid to every dashboard.
    """

    _log = Logger()

    def __init__(
        self,
        catalog: SchemaCatalog,
        settings: Settings,
        clock: IReactorTime,
        fanout: Fanout = send_to_each,
        store: MessageStore | None = None,
        log_broadcasts: bool = False,
        access: Access | None = None,
        bus: Callable[[Hub], Bus] | None = None,
    ) -> None:
        """
        @param catalog: the message schemas; replace C{hub.catalog} to apply edited ones.
        @param access: who may publish and read (default: anyone); see L{apply_access}.
        @param store: the history of a hub on its own (default: in memory).
        @param bus: makes the bus, given the hub (default: a L{LocalBus} on C{store}); a bus
            shared by several hubs brings its own history, and calls the hub's C{deliver}
            and C{restore}.
        @param log_broadcasts: log one debug line per broadcast. Off unless the log level is
            debug: even a filtered-out log call costs more than the rest of a broadcast.
        """
        self.catalog = catalog
        self.access = access or Access()
        self._settings = settings
        self._limits = Limits.of(settings)
        self._clock = clock
        self._fanout = fanout
        if bus is None:
            own = (
                store
                if store is not None
                else MemoryStore(settings.history_messages, settings.history_bytes)
            )
            self._bus: Bus = LocalBus(own, self.deliver)
        else:
            self._bus = bus(self)
        self._log_broadcasts = log_broadcasts
        self._observers: list[tuple[Observer, Collection[str] | None]] = []
        # the types some observer wants (None: all), so that a message from another hub is
        # parsed only when someone here reads it
        self._observed: set[str] | None = set()
        self._connections: dict[Peer, Connection] = {}
        # nodeId -> its live connector connections on this hub (normally one)
        self._connectors: dict[str, dict[Peer, None]] = {}
        self._network = Network(settings, clock, self.store.node_status_changed, self._log)
        self.stats = HubStats()
        #: messages per second by type, delivered here (every hub's, on a shared bus), and
        #: this hub's refusals, for the page's chart (GET /api/rates)
        self.rates = MessageRates(clock)
        self._dashboards = Dashboards(
            settings,
            clock,
            lambda: self._bus,
            self._network.statuses,
            self._network.online,
            self._log,
        )
        self._refusals = Refusals(
            settings,
            clock,
            self.stats,
            self.rates,
            lambda connection: self._dashboards.stop_hearing(connection.peer),
            self._log,
        )
        if bus is None:
            self.restore(self.store.node_statuses(), ())

    def restore(self, statuses: Iterable[tuple[str, int, bytes]], online: Iterable[str]) -> None:
        """
        Take back what the history kept: each node's latest status, in first-report order,
        and which nodes are online (somewhere else: this hub has just started). The others
        are offline until their connector is back (real connectors do not send NODE_STATUS
        again).
        """
        self._network.restore(statuses, online)
        self._dashboards.delivered()  # resumes that waited for the history

    def reset_presence(self, online: Iterable[str]) -> None:
        """
        Which nodes are online is exactly C{online} now (the bus started a new history:
        presence events of the old one that this hub never heard are lost with it).
        """
        self._network.reset_presence(online)

    @property
    def store(self) -> MessageStore:
        """
        The history (the bus's).
        """
        return self._bus.store

    @property
    def bus(self) -> Bus:
        return self._bus

    def add_observer(self, observer: Observer, types: Collection[str] | None = None) -> None:
        """
        Tell C{observer} of every telemetry event delivered from now on (of C{types} only,
        when given).
        """
        self._observers.append((observer, types))
        if types is None:
            self._observed = None
        elif self._observed is not None:
            self._observed.update(types)

    # -- what the transport tells the hub

    def connection_opened(self, peer: Peer, grant: Grant | None = None) -> None:
        """
        @param grant: what the token it presented at the handshake allows, if any.
        """
        self._connections[peer] = Connection(peer, grant=grant)
        if self.access.may_read(grant):
            self._dashboards.listen(peer)
        self._log.info(
            "Connection opened from {peer}{token}",
            peer=peer.address,
            token="" if grant is None else f" ({grant.role} token {grant.name})",
        )

    def apply_access(self, access: Access) -> None:
        """
        Use new access rules (a reloaded token file): connections that no longer may do
        what they do are closed (1008).
        """
        self.access = access
        for connection in list(self._connections.values()):
            grant = connection.grant
            revoked = grant is not None and not access.still_valid(grant)
            if connection.role is Role.CONNECTOR:
                allowed = not revoked and access.may_publish(grant)
            elif connection.role in (Role.DASHBOARD, Role.LISTENER):
                allowed = not revoked and access.may_read(grant)
            else:
                allowed = not revoked
            if not allowed and not connection.closing:
                self._refusals.close(
                    connection, POLICY_VIOLATION, "its token no longer allows this"
                )

    def connection_closed(self, peer: Peer) -> None:
        connection = self._connections.pop(peer, None)
        if connection is None:
            return
        self._dashboards.forget(peer)
        self._refusals.flush_suppressed(connection)
        if connection.role is Role.CONNECTOR:
            node_id = connection.node_id
            self._log.info(
                "Connector disconnected: {nodeId} ({peer})", nodeId=node_id, peer=peer.address
            )
            if node_id is not None:
                peers = self._connectors.get(node_id, {})
                peers.pop(peer, None)
                if not peers:
                    del self._connectors[node_id]
                    self._log.info("Node {nodeId}: no connector here any more", nodeId=node_id)
                    self._bus.node_left(node_id, self._presence(node_id, online=False))
        elif connection.role is Role.DASHBOARD:
            self._log.info("Dashboard client disconnected ({peer})", peer=peer.address)
        else:
            self._log.info(
                "Connection closed from {peer} ({role})",
                peer=peer.address,
                role=connection.role.value,
            )

    def message_received(self, peer: Peer, payload: bytes, is_binary: bool = False) -> None:
        """
        Handle one complete WebSocket message (text or binary) from C{peer}: one event, or a
        C{{"batch": [...]}} of events, each handled on its own.
        """
        connection = self._connections.get(peer)
        if connection is None or connection.closing:
            return
        refusals = self._refusals
        messages = refusals.message_rate(connection)
        if not messages.allow_lazily():
            refusals.rate_limited(connection, None, is_binary)
            return
        intake = read(payload, self._limits)
        if intake.refusal is not None:
            refusals.refuse(connection, intake.refusal, None, is_binary)
            return
        if intake.too_big is not None:
            refusals.close(connection, MESSAGE_TOO_BIG, intake.too_big)
            return
        batch = intake.batch
        if batch is None:
            granted = count = 1
        else:
            # the frame took one token; every further event takes one more
            count = len(batch)
            granted = 1 + messages.take(count - 1) if batch else 0
        for index, event in islice(intake.events(), granted):
            if isinstance(event, Rejection):
                item = batch[index] if batch is not None and index is not None else None
                kind = item.get("type") if isinstance(item, dict) else None
                refusals.refuse(connection, event, kind, is_binary)
            else:
                self._handle(connection, event, is_binary, index)
        if granted < count:
            refusals.rate_limited(connection, granted, is_binary)

    # -- what the hub knows

    @property
    def node_ids(self) -> list[str]:
        """
        Nodes in the replay cache, in the order they first reported.
        """
        return list(self._network.statuses)

    @property
    def replay_bytes(self) -> int:
        return self._network.statuses.size_bytes

    def node_status(self, node_id: str) -> bytes | None:
        """
        The node's latest NODE_STATUS as a dashboard would get it on connect (with
        C{online}), or None for a node the hub does not know.
        """
        return self._network.replay_payload(node_id)

    def live_connectors(self, node_id: str) -> int:
        return len(self._connectors.get(node_id, ()))

    def role_of(self, peer: Peer) -> Role | None:
        connection = self._connections.get(peer)
        return None if connection is None else connection.role

    def counts(self) -> dict[str, int]:
        by_role = dict.fromkeys((r.value for r in Role), 0)
        for connection in self._connections.values():
            by_role[connection.role.value] += 1
        return {**by_role, "nodes": len(self._network.statuses)}

    # -- one event

    def _handle(
        self,
        connection: Connection,
        message: dict[str, Any],
        is_binary: bool,
        index: int | None = None,
    ) -> None:
        message_type: object = message.get("type")
        try:
            validated_type = self.catalog.validate(message)
            if validated_type == CLIENT_CONNECT:
                self._client_connect(connection, message)
            else:
                self._telemetry(connection, validated_type, message)
        except Rejection as rejection:
            if index is not None:
                rejection.extra["index"] = index
            self._refusals.refuse(connection, rejection, message_type, is_binary)

    def _client_connect(self, connection: Connection, message: dict[str, Any]) -> None:
        if connection.role is Role.CONNECTOR:
            raise Rejection(
                ROLE_VIOLATION,
                "this connection already sent telemetry as a connector; "
                "a dashboard must use a connection of its own",
            )
        if not self.access.may_read(connection.grant):
            raise Rejection(
                UNAUTHORIZED,
                "a connector token cannot subscribe"
                if connection.grant is not None
                else "this hub sends telemetry only to connections with a viewer token",
            )
        self._dashboards.client_connect(connection, message)

    def _telemetry(
        self, connection: Connection, message_type: str, message: dict[str, Any]
    ) -> None:
        node_id = message.get("nodeId")
        if not isinstance(node_id, str) or node_id == PLACEHOLDER_NODE_ID:
            node_id = None
        if connection.role is Role.DASHBOARD or self._dashboards.is_waiting(connection.peer):
            raise Rejection(
                ROLE_VIOLATION,
                "this connection identified as a dashboard (CLIENT_CONNECT); "
                "telemetry must come from a connection of its own",
                messageType=message_type,
            )
        grant = connection.grant
        if not self.access.may_publish(grant):
            raise Rejection(
                UNAUTHORIZED,
                "a viewer token cannot publish"
                if grant is not None
                else "this hub takes telemetry only from connections with a connector token",
                messageType=message_type,
            )
        if grant is not None and node_id is not None and not grant.may_publish_for(node_id):
            raise Rejection(
                UNAUTHORIZED,
                f"token {grant.name!r} may not publish for node {shorten(node_id, 64)!r}",
                messageType=message_type,
            )
        if connection.role is not Role.CONNECTOR:
            connection.role = Role.CONNECTOR
            self._dashboards.stop_hearing(connection.peer)
            self._log.info(
                "Connector registered: {nodeId} ({peer})",
                nodeId=node_id,
                peer=connection.peer.address,
            )
        if connection.node_id is None:
            if node_id is not None:
                self._bind(connection, node_id)
        elif node_id is not None and node_id != connection.node_id:
            raise Rejection(
                NODE_ID_MISMATCH,
                f"this connection speaks for node {shorten(connection.node_id, 64)!r}, "
                f"not {shorten(node_id, 64)!r}",
                messageType=message_type,
            )
        if node_id is None and connection.node_id is not None:
            # an event naming no node of its own (the agent wallet events, the placeholder)
            # says which connection's node it came from: dashboards can tell, and the
            # history attributes it from the message alone
            message["sourceNodeId"] = connection.node_id
        stats = self.stats
        stats.accepted += 1
        by_type = stats.accepted_by_type
        by_type[message_type] = by_type.get(message_type, 0) + 1
        self._bus.submit(message, message_type, node_id or connection.node_id)

    def _bind(self, connection: Connection, node_id: str) -> None:
        connection.node_id = node_id
        peers = self._connectors.get(node_id)
        if peers:
            self._log.warn(
                "Two live connectors report as {nodeId}: {peer} joins {others}; keeping both",
                nodeId=node_id,
                peer=connection.peer.address,
                others=", ".join(p.address for p in peers),
            )
            peers[connection.peer] = None
            return
        self._connectors[node_id] = {connection.peer: None}
        self._bus.node_joined(node_id, self._presence(node_id, online=True))

    # -- the broadcast and its history

    def deliver(self, stored: StoredMessage, message: dict[str, Any] | None = None) -> None:
        """
        A numbered message, in the order of all (the bus's): send it to every listener and
        dashboard here that wants it, serialized once whoever receives it, and keep what it
        says (a node's status, a node online or offline).

        @param message: its parsed form, where the bus still has it.
        """
        kind, node_id = stored.type, stored.node_id
        self.rates.count(kind)
        if kind in HUB_EVENTS:
            self._hub_event(stored)
        else:
            self._broadcast(stored, kind, node_id, message)
        self._dashboards.delivered()

    def _broadcast(
        self,
        stored: StoredMessage,
        kind: str,
        node_id: str | None,
        message: dict[str, Any] | None,
    ) -> None:
        targets = self._dashboards.targets(kind, node_id)
        self.stats.deliveries += len(targets)
        if self._log_broadcasts:
            self._log.debug(
                "Broadcasting telemetry event {type} #{seq} from {nodeId}",
                type=kind,
                seq=stored.seq,
                nodeId=node_id,
            )
        self._fanout(targets, stored.payload)
        if kind == NODE_STATUS and node_id is not None:
            self._network.remember(node_id, stored.payload, stored.seq)
        observed = self._observed
        if observed is None or kind in observed:
            parsed = message if message is not None else orjson.loads(stored.payload)
            for observer, types in self._observers:
                if types is None or kind in types:
                    observer(kind, parsed)

    def _hub_event(self, stored: StoredMessage) -> None:
        """
        A NODE_PRESENCE: the node is online or offline (anywhere), and the dashboards that
        asked hear of it.
        """
        node_id = stored.node_id
        if node_id is not None:
            self._network.presence(node_id, b'"online":true' in stored.payload)
        targets = self._dashboards.hub_event_targets(NODE_PRESENCE, node_id)
        if targets:
            self.stats.deliveries += len(targets)
            self._fanout(targets, stored.payload)

    def _presence(self, node_id: str, online: bool) -> dict[str, Any]:
        return presence_event(node_id, online, self._clock.seconds())
