"""
The hub: who is connected, in which role, what the network last reported, what happened
recently, and who hears what.

It knows a peer only as an object with C{send(payload)}, an C{address} and a C{congested}
flag; it imports nothing from Autobahn or C{twisted.internet}, and takes its clock as an
argument, so it is tested with plain synchronous tests.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from telemetry_service.codec import decode, encode
from telemetry_service.config import Settings
from telemetry_service.errors import (
    INVALID_BATCH,
    NODE_ID_MISMATCH,
    NOT_AN_OBJECT,
    ROLE_VIOLATION,
    Rejection,
    shorten,
)
from telemetry_service.ratelimit import TokenBucket
from telemetry_service.schemas import SchemaCatalog
from telemetry_service.store import MemoryStore, MessageStore, StoredMessage

CLIENT_CONNECT = "CLIENT_CONNECT"
NODE_STATUS = "NODE_STATUS"
#: sent by the hub when a node's last connector goes away or its first one arrives
NODE_PRESENCE = "NODE_PRESENCE"
#: sent by the hub to a dashboard that asked to resume
RESUME = "RESUME"


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

    def send(self, payload: bytes) -> None:
        """
        Send one UTF-8 JSON text message to the peer.
        """


#: Delivers one serialized message to many peers. The WebSocket layer supplies one that
#: builds the frame once; the default sends to each peer in turn.
Fanout = Callable[[Iterable[Peer], bytes], None]


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
    # made on the first refusal: most connections never need them (memory per connection)
    warnings: TokenBucket | None = None
    error_frames: TokenBucket | None = None


@dataclass(eq=False)
class NodeRecord:
    """
    The latest NODE_STATUS of one node, as it is replayed.
    """

    message: dict[str, Any]
    updated_at: float
    _payloads: dict[bool, bytes] = field(default_factory=dict)

    def payload(self, online: bool) -> bytes:
        """
        The status with a top-level C{online} flag, serialized once per flag value.
        """
        payload = self._payloads.get(online)
        if payload is None:
            payload = self._payloads[online] = encode({**self.message, "online": online})
        return payload

    def update(self, message: dict[str, Any], now: float) -> None:
        self.message, self.updated_at = message, now
        self._payloads.clear()


@dataclass
class HubStats:
    accepted: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)


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
    ) -> None:
        """
        @param catalog: the message schemas; replace C{hub.catalog} to apply edited ones.
        @param log_broadcasts: log one debug line per broadcast. Off unless the log level is
            debug: even a filtered-out log call costs more than the rest of a broadcast.
        """
        self.catalog = catalog
        self._settings = settings
        self._clock = clock
        self._fanout = fanout
        self.store: MessageStore = store or MemoryStore(
            settings.history_messages, settings.history_bytes
        )
        self._log_broadcasts = log_broadcasts
        self._connections: dict[Peer, Connection] = {}
        # unfiltered listeners and dashboards, in connection order (a dict is an ordered set)
        self._recipients: dict[Peer, None] = {}
        # dashboards that asked for a filter
        self._filtered: dict[Peer, Filter] = {}
        # nodeId -> its live connector connections (normally one)
        self._connectors: dict[str, dict[Peer, None]] = {}
        # nodeId -> latest NODE_STATUS; insertion order is first-report order
        self._node_status: dict[str, NodeRecord] = {}
        self.stats = HubStats()

    # -- what the transport tells the hub

    def connection_opened(self, peer: Peer) -> None:
        self._connections[peer] = Connection(peer)
        self._recipients[peer] = None
        self._log.info("Connection opened from {peer}", peer=peer.address)

    def connection_closed(self, peer: Peer) -> None:
        connection = self._connections.pop(peer, None)
        if connection is None:
            return
        self._recipients.pop(peer, None)
        self._filtered.pop(peer, None)
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
                    self._publish_presence(node_id, online=False)
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
        connection = self._connections[peer]
        try:
            message = decode(payload, self._settings.max_depth)
        except Rejection as rejection:
            self._refuse(connection, rejection, None, is_binary)
            return
        batch = message.get("batch") if "type" not in message else None
        if batch is None:
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
        for index, event in enumerate(batch):
            if isinstance(event, dict):
                self._handle(connection, event, is_binary, index)
            else:
                self._refuse(
                    connection,
                    Rejection(NOT_AN_OBJECT, "a batch event must be a JSON object", index=index),
                    None,
                    is_binary,
                )

    # -- what the hub knows

    @property
    def node_ids(self) -> list[str]:
        """
        Nodes in the replay cache, in the order they first reported.
        """
        return list(self._node_status)

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
        peer = connection.peer
        if connection.role is not Role.DASHBOARD:
            connection.role = Role.DASHBOARD
            self._log.info(
                "Dashboard client connected ({peer}); {count} nodes known",
                peer=peer.address,
                count=len(self._node_status),
            )
        connection.filter = Filter.from_request(message.get("filter"))
        if connection.filter is None:
            self._filtered.pop(peer, None)
            self._recipients[peer] = None
        else:
            self._recipients.pop(peer, None)
            self._filtered[peer] = connection.filter
        # Everything below goes to this client only, before anything that follows its
        # CLIENT_CONNECT: the hub is single-threaded, so no broadcast can come in between.
        resume = message.get("resume")
        if isinstance(resume, dict):
            self._resume(connection, resume)
        else:
            self._send_snapshot(connection)

    def _send_snapshot(self, connection: Connection) -> None:
        """
        The latest NODE_STATUS of every node, in first-report order, each with C{online}.
        """
        peer, wanted = connection.peer, connection.filter
        for node_id, record in self._node_status.items():
            if wanted is None or wanted.matches(NODE_STATUS, node_id):
                peer.send(record.payload(node_id in self._connectors))

    def _resume(self, connection: Connection, request: dict[str, Any]) -> None:
        """
        Send what a reconnecting dashboard missed, or say plainly that it cannot be had.
        """
        store = self.store
        epoch, seq = request.get("epoch"), request.get("seq")
        status: dict[str, Any] = {"type": RESUME, "epoch": store.epoch, "seq": store.last_seq}
        missed = None
        if epoch is None and seq is None:
            status.update(status="fresh")
        elif epoch != store.epoch:
            status.update(status="not_recovered", reason="the hub's history was reset (new epoch)")
        elif not isinstance(seq, int) or (missed := store.after(seq)) is None:
            status.update(
                status="not_recovered",
                reason=f"the history no longer holds every message after seq {seq}",
            )
        else:
            wanted = connection.filter
            missed = [m for m in missed if wanted is None or wanted.matches(m.type, m.node_id)]
            status.update(status="resumed", missed=len(missed))
        peer = connection.peer
        peer.send(encode(status))
        self._log.info(
            "Dashboard {peer} resume from {epoch}/{seq}: {status}",
            peer=peer.address,
            epoch=shorten(epoch, 64),
            seq=seq,
            status=status["status"],
        )
        if status["status"] == "resumed":
            for stored in missed or ():
                peer.send(stored.payload)
        else:
            self._send_snapshot(connection)

    def _telemetry(
        self, connection: Connection, message_type: str, message: dict[str, Any]
    ) -> None:
        node_id = message.get("nodeId")
        if not isinstance(node_id, str):
            node_id = None
        if connection.role is Role.DASHBOARD:
            raise Rejection(
                ROLE_VIOLATION,
                "this connection identified as a dashboard (CLIENT_CONNECT); "
                "telemetry must come from a connection of its own",
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
        self.stats.accepted += 1
        self._publish(message, message_type, node_id)
        if message_type == NODE_STATUS and node_id is not None:
            self._remember_node_status(connection, node_id, message)

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
        self._publish_presence(node_id, online=True)

    # -- the broadcast and its history

    def _publish(self, message: dict[str, Any], message_type: str, node_id: str | None) -> None:
        """
        Number the message, keep it in the history and send it to every dashboard that
        wants it. It is serialized once, whoever receives it.
        """
        store = self.store
        seq = store.last_seq + 1
        message["seq"] = seq
        payload = encode(message)
        store.append(StoredMessage(seq, message_type, node_id, payload))
        if self._filtered:
            targets: Iterable[Peer] = [
                *self._recipients,
                *(p for p, f in self._filtered.items() if f.matches(message_type, node_id)),
            ]
        else:
            targets = self._recipients
        if self._log_broadcasts:
            self._log.debug(
                "Broadcasting telemetry event {type} #{seq} from {nodeId}",
                type=message_type,
                seq=seq,
                nodeId=node_id,
            )
        self._fanout(targets, payload)

    def _publish_presence(self, node_id: str, online: bool) -> None:
        now = datetime.fromtimestamp(self._clock.seconds(), UTC)
        self._log.info(
            "Node {nodeId} is {state}", nodeId=node_id, state="online" if online else "offline"
        )
        self._publish(
            {
                "type": NODE_PRESENCE,
                "nodeId": node_id,
                "online": online,
                "timestamp": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            },
            NODE_PRESENCE,
            node_id,
        )

    # -- the replay cache

    def _remember_node_status(
        self, connection: Connection, node_id: str, message: dict[str, Any]
    ) -> None:
        cache = self._node_status
        now = self._clock.seconds()
        record = cache.get(node_id)
        if record is not None:
            record.update(message, now)
            return
        if len(cache) >= self._settings.max_nodes:
            victim = self._eviction_candidate()
            if victim is None:
                self._warn(
                    connection,
                    "Node status cache is full ({max} nodes, all online): "
                    "{nodeId} is broadcast but not replayed to new dashboards",
                    max=self._settings.max_nodes,
                    nodeId=node_id,
                )
                return
            del cache[victim]
            self._log.info(
                "Node status cache full: forgot offline node {victim} to make room for {nodeId}",
                victim=victim,
                nodeId=node_id,
            )
        cache[node_id] = NodeRecord(message, now)

    def _eviction_candidate(self) -> str | None:
        """
        The offline node whose status is oldest; live nodes are never evicted, so inventing
        nodeIds cannot push real nodes out.
        """
        offline = [n for n in self._node_status if n not in self._connectors]
        if not offline:
            return None
        return min(offline, key=lambda n: self._node_status[n].updated_at)

    # -- refusals

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
