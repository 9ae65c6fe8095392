"""
The hub: who is connected, in which role, what the network last reported, and who hears what.

It knows a peer only as an object with a C{send(payload)} method, an C{address} and a
C{congested} flag; it imports nothing from Autobahn or C{twisted.internet}, and takes its
clock as an argument, so it is tested with plain synchronous tests.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from telemetry_service.codec import decode, encode
from telemetry_service.config import Settings
from telemetry_service.errors import (
    NODE_ID_MISMATCH,
    ROLE_VIOLATION,
    Rejection,
    shorten,
)
from telemetry_service.ratelimit import TokenBucket
from telemetry_service.schemas import SchemaCatalog

CLIENT_CONNECT = "CLIENT_CONNECT"
NODE_STATUS = "NODE_STATUS"


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


@dataclass(eq=False)
class Connection:
    peer: Peer
    warnings: TokenBucket
    error_frames: TokenBucket
    role: Role = Role.LISTENER
    node_id: str | None = None


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
    ) -> None:
        self._catalog = catalog
        self._settings = settings
        self._clock = clock
        self._fanout = fanout
        self._connections: dict[Peer, Connection] = {}
        # listeners and dashboards, in connection order (a dict is an ordered set)
        self._recipients: dict[Peer, None] = {}
        # nodeId -> its live connector connections (normally one)
        self._connectors: dict[str, dict[Peer, None]] = {}
        # nodeId -> latest NODE_STATUS, serialized; insertion order is first-report order
        self._node_status: dict[str, bytes] = {}
        self._node_status_at: dict[str, float] = {}
        self.stats = HubStats()

    # -- what the transport tells the hub

    def connection_opened(self, peer: Peer) -> None:
        s = self._settings
        self._connections[peer] = Connection(
            peer=peer,
            warnings=TokenBucket(self._clock, s.warnings_per_second, s.warnings_burst),
            error_frames=TokenBucket(self._clock, s.error_frames_per_second, s.error_frames_burst),
        )
        self._recipients[peer] = None
        self._log.info("Connection opened from {peer}", peer=peer.address)

    def connection_closed(self, peer: Peer) -> None:
        connection = self._connections.pop(peer, None)
        if connection is None:
            return
        self._recipients.pop(peer, None)
        self._flush_suppressed(connection)
        if connection.role is Role.CONNECTOR:
            node_id = connection.node_id
            if node_id is not None:
                peers = self._connectors.get(node_id, {})
                peers.pop(peer, None)
                if not peers:
                    self._connectors.pop(node_id, None)
            self._log.info(
                "Connector disconnected: {nodeId} ({peer})", nodeId=node_id, peer=peer.address
            )
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
        Handle one complete WebSocket message (text or binary) from C{peer}.
        """
        connection = self._connections[peer]
        message_type: object = None
        try:
            message = decode(payload, self._settings.max_depth)
            message_type = message.get("type")
            validated_type = self._catalog.validate(message)
            if validated_type == CLIENT_CONNECT:
                self._client_connect(connection)
            else:
                self._telemetry(connection, validated_type, message)
        except Rejection as rejection:
            if connection.role is Role.LISTENER and message_type != CLIENT_CONNECT:
                connection.role = Role.UNIDENTIFIED
                self._recipients.pop(peer, None)
            self._reject(connection, rejection, is_binary)

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

    # -- roles

    def _client_connect(self, connection: Connection) -> None:
        if connection.role is Role.CONNECTOR:
            raise Rejection(
                ROLE_VIOLATION,
                "this connection already sent telemetry as a connector; "
                "a dashboard must use a connection of its own",
            )
        peer = connection.peer
        if connection.role is not Role.DASHBOARD:
            connection.role = Role.DASHBOARD
            self._recipients[peer] = None
            self._log.info(
                "Dashboard client connected ({peer}); replaying {count} node status messages",
                peer=peer.address,
                count=len(self._node_status),
            )
        # The replay goes to this client only, before anything that follows its CLIENT_CONNECT.
        for payload in self._node_status.values():
            peer.send(payload)

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

        payload = encode(message)
        if message_type == NODE_STATUS and node_id is not None:
            self._remember_node_status(connection, node_id, payload)
        self.stats.accepted += 1
        self._log.debug(
            "Broadcasting telemetry event {type} from {nodeId} to {count} clients",
            type=message_type,
            nodeId=node_id,
            count=len(self._recipients),
        )
        if self._recipients:
            self._fanout(self._recipients, payload)

    def _bind(self, connection: Connection, node_id: str) -> None:
        connection.node_id = node_id
        peers = self._connectors.setdefault(node_id, {})
        if peers:
            self._log.warn(
                "Two live connectors report as {nodeId}: {peer} joins {others}; keeping both",
                nodeId=node_id,
                peer=connection.peer.address,
                others=", ".join(p.address for p in peers),
            )
        peers[connection.peer] = None

    # -- the replay cache

    def _remember_node_status(self, connection: Connection, node_id: str, payload: bytes) -> None:
        cache = self._node_status
        if node_id not in cache and len(cache) >= self._settings.max_nodes:
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
            del self._node_status_at[victim]
            self._log.info(
                "Node status cache full: forgot offline node {victim} to make room for {nodeId}",
                victim=victim,
                nodeId=node_id,
            )
        cache[node_id] = payload
        self._node_status_at[node_id] = self._clock.seconds()

    def _eviction_candidate(self) -> str | None:
        """
        The offline node whose status is oldest; live nodes are never evicted, so inventing
        nodeIds cannot push real nodes out.
        """
        offline = [n for n in self._node_status if n not in self._connectors]
        if not offline:
            return None
        return min(offline, key=self._node_status_at.__getitem__)

    # -- refusals

    def _reject(self, connection: Connection, rejection: Rejection, is_binary: bool) -> None:
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
        if self._settings.error_frames and not peer.congested and connection.error_frames.allow():
            peer.send(encode(rejection.to_frame()))

    def _warn(self, connection: Connection, format: str, **fields: object) -> None:
        """
        Log a warning about a connection, at most as often as its budget allows.
        """
        if not connection.warnings.allow():
            return
        self._flush_suppressed(connection)
        context: dict[str, object] = {"peer": connection.peer.address, "nodeId": connection.node_id}
        context.update(fields)
        self._log.warn(format, **context)

    def _flush_suppressed(self, connection: Connection) -> None:
        count = connection.warnings.take_suppressed()
        if count:
            self._log.warn(
                "Suppressed {count} warnings about {peer} ({nodeId}) to protect the log",
                count=count,
                peer=connection.peer.address,
                nodeId=connection.node_id,
            )
