"""
The hub: who is connected, in which role, what the network last reported, what happened
recently, and who hears what.

It knows a peer only through the L{Peer} protocol (send, stream, close, and whether it
keeps up); it imports nothing from Autobahn or C{twisted.internet}, and takes its clock as an
argument, so it is tested with plain synchronous tests.
"""

from __future__ import annotations

import enum
import functools
from collections import deque
from collections.abc import Callable, Collection, Container, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from telemetry_service.auth import CONNECTOR, VIEWER, Access, Grant
from telemetry_service.bus.base import Bus, LocalBus
from telemetry_service.codec import decode, encode
from telemetry_service.config import Settings
from telemetry_service.errors import (
    INVALID_BATCH,
    MESSAGE_TOO_BIG,
    MESSAGE_TOO_LARGE,
    NODE_ID_MISMATCH,
    NOT_AN_OBJECT,
    POLICY_VIOLATION,
    RATE_LIMITED,
    REPLAY_BUSY,
    ROLE_VIOLATION,
    UNAUTHORIZED,
    Rejection,
    shorten,
)
from telemetry_service.history.memory import MemoryStore, MessageStore, StoredMessage
from telemetry_service.ratelimit import TokenBucket
from telemetry_service.rates import MessageRates
from telemetry_service.replay import ReplayCache
from telemetry_service.schemas import SchemaCatalog
from telemetry_service.vocabulary import (
    CLIENT_CONNECT,
    HUB_EVENTS,
    NODE_PRESENCE,
    NODE_STATUS,
    PLACEHOLDER_NODE_ID,
    RESUME,
    presence_event,
)

#: how long a resume from a seq this hub has not read yet waits for it (see L{Bus.shared})
RESUME_CATCH_UP_SECONDS = 2.0

#: messages read from the store at a time while a resume is sent: few, since each may be
#: up to --max-message-bytes and what a stream holds counts against its client's budget
_RESUME_CHUNK = 8
#: what a stream's own bookkeeping costs a client's budget, and a snapshot's per node
_STREAM_COST = 256
_SNAPSHOT_COST_PER_NODE = 8


class Peer(Protocol):
    """
    One connection as the hub sees it.
    """

    #: printable address of the remote end, e.g. C{tcp4:127.0.0.1:50412}
    address: str

    @property
    def congested(self) -> bool:
        """
        True while the peer is not reading fast enough and its outbound buffer is full.
        """

    @property
    def replaying(self) -> bool:
        """
        True while frames of a stream given to L{send_stream} are still to be sent.
        """

    def send(self, payload: bytes) -> None:
        """
        Send one UTF-8 JSON text message to the peer.
        """

    def send_stream(self, stream: Stream) -> None:
        """
        Send the messages of C{stream}, after everything sent so far and before anything
        sent later, pulling them only as fast as the peer reads. What the stream holds
        (C{held_bytes}) counts against the peer's budget until it ends. If it raises, the
        peer is closed.
        """

    def close(self, code: int, reason: str) -> None:
        """
        Start the closing handshake with C{code}; nothing more is sent after it.
        """


class Stream(Protocol):
    """
    Messages for one peer (a snapshot, a resume), made as the peer reads them.
    """

    @property
    def held_bytes(self) -> int:
        """
        What the stream holds in memory now, in bytes.
        """

    def next_payload(self) -> bytes | None:
        """
        The next message, or None at the end.

        @raise HistoryLostError: the history no longer holds what is still to be sent.
        """


#: Delivers one serialized message to many peers. The WebSocket layer supplies one that
#: builds the frame once; the default sends to each peer in turn.
Fanout = Callable[[Iterable[Peer], bytes], None]

#: Told of every accepted telemetry event: its type and the parsed message (with C{seq}).
Observer = Callable[[str, dict[str, Any]], None]


def send_to_each(peers: Iterable[Peer], payload: bytes) -> None:
    for peer in peers:
        peer.send(payload)


class Role(enum.Enum):
    #: has sent nothing yet; hears the broadcast ("simply connect and listen")
    LISTENER = "listener"
    #: sent CLIENT_CONNECT; got the replay and hears the broadcast
    DASHBOARD = "dashboard"
    #: its first accepted message was telemetry; hears nothing
    CONNECTOR = "connector"
    #: sent something that was neither accepted telemetry nor CLIENT_CONNECT. It is a
    #: producer, not a reader (real connectors never read), so it is not sent the broadcast.
    UNIDENTIFIED = "unidentified"


class HistoryLostError(Exception):
    """
    The history no longer holds a message that a resume in progress still had to send.
    """


@dataclass(frozen=True)
class Filter:
    """
    What a dashboard asked to receive; C{None} for a field means "all".
    """

    types: frozenset[str] | None = None
    node_ids: frozenset[str] | None = None

    @classmethod
    def from_request(cls, request: object) -> Filter | None:
        if not isinstance(request, dict):
            return None
        types, node_ids = request.get("types"), request.get("nodeIds")
        result = cls(
            frozenset(t for t in types if isinstance(t, str)) if isinstance(types, list) else None,
            frozenset(n for n in node_ids if isinstance(n, str))
            if isinstance(node_ids, list)
            else None,
        )
        return None if result.types is None and result.node_ids is None else result

    def matches(self, message_type: str, node_id: str | None) -> bool:
        if self.types is not None and message_type not in self.types:
            return False
        return self.node_ids is None or node_id in self.node_ids


@dataclass(eq=False, slots=True)
class Connection:
    peer: Peer
    role: Role = Role.LISTENER
    node_id: str | None = None
    filter: Filter | None = None
    #: the hub's own event types this dashboard asked for (C{hubEvents})
    hub_events: frozenset[str] = frozenset()
    #: the hub has closed it; what it still sends is ignored
    closing: bool = False
    #: what its token allows (None: it presented none)
    grant: Grant | None = None
    # made on first use: most connections never need them (memory per connection)
    messages: TokenBucket | None = None
    replays: TokenBucket | None = None
    warnings: TokenBucket | None = None
    error_frames: TokenBucket | None = None
    #: since when it has been over its message rate without a break of a second or more,
    #: and when it last was (clock seconds)
    over_rate_since: float = 0.0
    over_rate_last: float = -1e18


@dataclass
class HubStats:
    """
    Plain counters, read by /health and /metrics (a metrics library's objects cost more
    per message than the rest of a broadcast).
    """

    accepted: int = 0
    accepted_by_type: dict[str, int] = field(default_factory=dict)
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    #: frames of broadcasts handed to connections (one per message and recipient)
    deliveries: int = 0


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
        # unfiltered listeners and dashboards, in connection order (a dict is an ordered set)
        self._recipients: dict[Peer, None] = {}
        # dashboards that asked for a filter
        self._filtered: dict[Peer, Filter] = {}
        # dashboards that asked for some of the hub's own events
        self._hub_event_subscribers: dict[Peer, Connection] = {}
        # nodeId -> its live connector connections on this hub (normally one)
        self._connectors: dict[str, dict[Peer, None]] = {}
        # dashboards resuming from a seq the bus has not delivered here yet -> CLIENT_CONNECT
        self._waiting_resumes: dict[Peer, dict[str, Any]] = {}
        # nodes with a live connector anywhere: as the delivered NODE_PRESENCE events say
        self._online: set[str] = set()
        # nodeId -> latest NODE_STATUS, in first-report order
        self._node_status = ReplayCache(
            settings.max_nodes,
            settings.max_replay_bytes,
            self._online.__contains__,
            self.store.node_status_changed,
        )
        self._cache_warnings = TokenBucket(clock, settings.warnings_per_second, 5)
        self.stats = HubStats()
        #: messages per second by type, delivered here (every hub's, on a shared bus), and
        #: this hub's refusals, for the page's chart (GET /api/rates)
        self.rates = MessageRates(clock)
        if bus is None:
            self.restore(self.store.node_statuses(), ())

    def restore(self, statuses: Iterable[tuple[str, int, bytes]], online: Iterable[str]) -> None:
        """
        Take back what the history kept: each node's latest status, in first-report order,
        and which nodes are online (somewhere else: this hub has just started). The others
        are offline until their connector is back (real connectors do not send NODE_STATUS
        again).
        """
        self._online.update(online)
        for node_id, seq, payload in statuses:
            self._node_status.restore(node_id, payload, seq)

    def reset_presence(self, online: Iterable[str]) -> None:
        """
        Which nodes are online is exactly C{online} now (the bus started a new history:
        presence events of the old one that this hub never heard are lost with it).
        """
        online = set(online)
        gone = self._online - online
        # in place: the replay cache holds this set's __contains__
        self._online.intersection_update(online)
        self._online.update(online)
        for node_id in gone:
            self._node_status.went_offline(node_id)

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
        connection = self._connections[peer] = Connection(peer, grant=grant)
        if self._may_read(connection):
            self._recipients[peer] = None
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
                allowed = not revoked and self._may_publish(connection)
            elif connection.role in (Role.DASHBOARD, Role.LISTENER):
                allowed = not revoked and self._may_read(connection)
            else:
                allowed = not revoked
            if not allowed and not connection.closing:
                self._close(connection, POLICY_VIOLATION, "its token no longer allows this")

    def _may_read(self, connection: Connection) -> bool:
        grant = connection.grant
        if grant is None:
            return not self.access.reading_needs_a_token
        return grant.role == VIEWER

    def _may_publish(self, connection: Connection) -> bool:
        grant = connection.grant
        if grant is None:
            return not self.access.publishing_needs_a_token
        return grant.role == CONNECTOR

    def connection_closed(self, peer: Peer) -> None:
        connection = self._connections.pop(peer, None)
        if connection is None:
            return
        self._recipients.pop(peer, None)
        self._filtered.pop(peer, None)
        self._hub_event_subscribers.pop(peer, None)
        self._waiting_resumes.pop(peer, None)
        self._flush_suppressed(connection)
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
        messages = connection.messages
        if messages is None:
            s = self._settings
            messages = connection.messages = TokenBucket(
                self._clock, s.messages_per_second, s.messages_burst
            )
        if not messages.allow_lazily():
            self._rate_limited(connection, None, is_binary)
            return
        try:
            message = decode(payload, self._settings.max_depth)
        except Rejection as rejection:
            self._refuse(connection, rejection, None, is_binary)
            return
        batch = message.get("batch") if "type" not in message else None
        if batch is None:
            if len(payload) > self._settings.max_message_bytes:
                self._close(
                    connection,
                    MESSAGE_TOO_BIG,
                    f"message of {len(payload)} bytes over the limit of "
                    f"{self._settings.max_message_bytes} (only a batch may be larger)",
                )
                return
            self._handle(connection, message, is_binary)
            return
        if not isinstance(batch, list) or len(batch) > self._settings.max_batch:
            self._refuse(
                connection,
                Rejection(
                    INVALID_BATCH,
                    f"'batch' must be an array of at most {self._settings.max_batch} events",
                ),
                None,
                is_binary,
            )
            return
        # the frame took one token; every further event takes one more
        granted = 1 + messages.take(len(batch) - 1) if batch else 0
        limit = self._settings.max_message_bytes
        for index, event in enumerate(batch[:granted]):
            if not isinstance(event, dict):
                refusal = Rejection(
                    NOT_AN_OBJECT, "a batch event must be a JSON object", index=index
                )
                self._refuse(connection, refusal, None, is_binary)
            elif (size := len(encode(event))) > limit:
                refusal = Rejection(
                    MESSAGE_TOO_LARGE,
                    f"a batch event of {size} bytes is over the limit of {limit}",
                    index=index,
                )
                self._refuse(connection, refusal, event.get("type"), is_binary)
            else:
                self._handle(connection, event, is_binary, index)
        if granted < len(batch):
            self._rate_limited(connection, granted, is_binary)

    # -- what the hub knows

    @property
    def node_ids(self) -> list[str]:
        """
        Nodes in the replay cache, in the order they first reported.
        """
        return list(self._node_status)

    @property
    def replay_bytes(self) -> int:
        return self._node_status.size_bytes

    def node_status(self, node_id: str) -> bytes | None:
        """
        The node's latest NODE_STATUS as a dashboard would get it on connect (with
        C{online}), or None for a node the hub does not know.
        """
        record = self._node_status.get(node_id)
        if record is None:
            return None
        return record.replay_payload(node_id in self._online)

    def live_connectors(self, node_id: str) -> int:
        return len(self._connectors.get(node_id, ()))

    def role_of(self, peer: Peer) -> Role | None:
        connection = self._connections.get(peer)
        return None if connection is None else connection.role

    def counts(self) -> dict[str, int]:
        by_role = dict.fromkeys((r.value for r in Role), 0)
        for connection in self._connections.values():
            by_role[connection.role.value] += 1
        return {**by_role, "nodes": len(self._node_status)}

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
            self._refuse(connection, rejection, message_type, is_binary)

    # -- roles

    def _client_connect(self, connection: Connection, message: dict[str, Any]) -> None:
        if connection.role is Role.CONNECTOR:
            raise Rejection(
                ROLE_VIOLATION,
                "this connection already sent telemetry as a connector; "
                "a dashboard must use a connection of its own",
            )
        if not self._may_read(connection):
            raise Rejection(
                UNAUTHORIZED,
                "a connector token cannot subscribe"
                if connection.grant is not None
                else "this hub sends telemetry only to connections with a viewer token",
            )
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
        if isinstance(resume, dict) and self._not_read_yet(resume):
            # Another hub numbered that seq and this one has not read it from the bus yet
            # (a dashboard moved here when its hub went away): answer once it has, as if
            # the CLIENT_CONNECT had come then. The bus is milliseconds behind, not seconds.
            self._waiting_resumes[peer] = message
            self._clock.callLater(RESUME_CATCH_UP_SECONDS, self._stop_waiting, peer, message)
            return
        self._waiting_resumes.pop(peer, None)
        self._subscribe(connection, message)

    def _not_read_yet(self, resume: dict[str, Any]) -> bool:
        seq = resume.get("seq")
        store = self.store
        return (
            self._bus.shared
            and resume.get("epoch") == store.epoch
            and isinstance(seq, int)
            and seq > store.last_seq
        )

    def _release_resumes(self, seq: int) -> None:
        for peer, message in list(self._waiting_resumes.items()):
            if message["resume"]["seq"] <= seq:
                del self._waiting_resumes[peer]
                connection = self._connections.get(peer)
                if connection is not None:
                    self._subscribe(connection, message)

    def _stop_waiting(self, peer: Peer, message: dict[str, Any]) -> None:
        if self._waiting_resumes.get(peer) is message:
            del self._waiting_resumes[peer]
            connection = self._connections.get(peer)
            if connection is not None:
                self._subscribe(connection, message)

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

    def _wants(self, connection: Connection, message_type: str, node_id: str | None) -> bool:
        if message_type in HUB_EVENTS and message_type not in connection.hub_events:
            return False
        wanted = connection.filter
        return wanted is None or wanted.matches(message_type, node_id)

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
            connection.peer.send_stream(
                _SnapshotStream(self._node_status, self._online, node_ids, self.store.last_seq)
            )

    def _resume(self, connection: Connection, request: dict[str, Any]) -> None:
        """
        Send what a reconnecting dashboard missed, or say plainly that it cannot be had.
        """
        store = self.store
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
            wants = functools.partial(self._wants, connection)
            peer.send_stream(_ResumeStream(store, wants, seq, last))

    def _telemetry(
        self, connection: Connection, message_type: str, message: dict[str, Any]
    ) -> None:
        node_id = message.get("nodeId")
        if not isinstance(node_id, str) or node_id == PLACEHOLDER_NODE_ID:
            node_id = None
        if connection.role is Role.DASHBOARD or connection.peer in self._waiting_resumes:
            raise Rejection(
                ROLE_VIOLATION,
                "this connection identified as a dashboard (CLIENT_CONNECT); "
                "telemetry must come from a connection of its own",
                messageType=message_type,
            )
        grant = connection.grant
        if (grant.role != CONNECTOR) if grant is not None else self.access.publishing_needs_a_token:
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
            self._recipients.pop(connection.peer, None)
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
        if self._waiting_resumes:
            # after the fanout: the resume's stream ends with this message, live ones follow
            self._release_resumes(stored.seq)

    def _broadcast(
        self,
        stored: StoredMessage,
        kind: str,
        node_id: str | None,
        message: dict[str, Any] | None,
    ) -> None:
        if self._filtered:
            targets: Collection[Peer] = [
                *self._recipients,
                *(p for p, f in self._filtered.items() if f.matches(kind, node_id)),
            ]
        else:
            targets = self._recipients.keys()
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
            self._remember_node_status(node_id, stored.payload, stored.seq)
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
            if b'"online":true' in stored.payload:
                self._online.add(node_id)
                self._log.info("Node {nodeId} is online", nodeId=node_id)
            else:
                self._online.discard(node_id)
                self._node_status.went_offline(node_id)
                self._log.info("Node {nodeId} is offline", nodeId=node_id)
        if self._hub_event_subscribers:
            targets = [
                peer
                for peer, connection in self._hub_event_subscribers.items()
                if self._wants(connection, NODE_PRESENCE, node_id)
            ]
            self.stats.deliveries += len(targets)
            self._fanout(targets, stored.payload)

    def _presence(self, node_id: str, online: bool) -> dict[str, Any]:
        return presence_event(node_id, online, self._clock.seconds())

    # -- the replay cache

    def _remember_node_status(self, node_id: str, payload: bytes, seq: int) -> None:
        evicted = self._node_status.remember(node_id, payload, seq)
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

    # -- refusals and closes

    def _rate_limited(self, connection: Connection, index: int | None, is_binary: bool) -> None:
        """
        Refuse what is over the connection's message rate; close it once that has gone on
        for C{rate_abuse_seconds} seconds with no second free of refusals.
        """
        s = self._settings
        detail = f"over the limit of {s.messages_per_second:g} events per second"
        if index is not None:
            detail = f"events from index {index} on dropped: {detail}"
        rejection = Rejection(RATE_LIMITED, detail)
        if index is not None:
            rejection.extra["index"] = index
        self._refuse(connection, rejection, None, is_binary)
        now = self._clock.seconds()
        if now - connection.over_rate_last > 1.0:  # a new stretch over the rate
            connection.over_rate_since = now
        connection.over_rate_last = now
        if now - connection.over_rate_since >= s.rate_abuse_seconds:
            self._close(
                connection,
                POLICY_VIOLATION,
                f"over its message rate for {s.rate_abuse_seconds} seconds without a break",
            )

    def _close(self, connection: Connection, code: int, reason: str) -> None:
        connection.closing = True
        self._warn(
            connection, "Closing {peer} ({nodeId}) with {code}: {reason}", code=code, reason=reason
        )
        connection.peer.close(code, reason)

    def _refuse(
        self,
        connection: Connection,
        rejection: Rejection,
        message_type: object,
        is_binary: bool,
    ) -> None:
        if connection.role is Role.LISTENER and message_type != CLIENT_CONNECT:
            connection.role = Role.UNIDENTIFIED
            self._recipients.pop(connection.peer, None)
        stats = self.stats
        stats.rejected += 1
        self.rates.count("rejected")
        stats.rejected_by_reason[rejection.reason] = (
            stats.rejected_by_reason.get(rejection.reason, 0) + 1
        )
        self._warn(
            connection,
            "Rejected {frame} message from {peer} ({nodeId}): {reason}: {detail}",
            frame="binary" if is_binary else "text",
            reason=rejection.reason,
            detail=rejection.detail,
            **rejection.extra,
        )
        peer = connection.peer
        if not self._settings.error_frames or peer.congested:
            return
        if connection.error_frames is None:
            s = self._settings
            connection.error_frames = TokenBucket(
                self._clock, s.error_frames_per_second, s.error_frames_burst
            )
        if connection.error_frames.allow():
            peer.send(encode(rejection.to_frame()))

    def _warn(self, connection: Connection, format: str, **fields: object) -> None:
        """
        Log a warning about a connection, at most as often as its budget allows.
        """
        if connection.warnings is None:
            s = self._settings
            connection.warnings = TokenBucket(self._clock, s.warnings_per_second, s.warnings_burst)
        if not connection.warnings.allow():
            return
        self._flush_suppressed(connection)
        context: dict[str, object] = {"peer": connection.peer.address, "nodeId": connection.node_id}
        context.update(fields)
        self._log.warn(format, **context)

    def _flush_suppressed(self, connection: Connection) -> None:
        count = connection.warnings.take_suppressed() if connection.warnings else 0
        if count:
            self._log.warn(
                "Suppressed {count} warnings about {peer} ({nodeId}) to protect the log",
                count=count,
                peer=connection.peer.address,
                nodeId=connection.node_id,
            )


class _SnapshotStream:
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


class _ResumeStream:
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
