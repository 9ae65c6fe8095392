"""
A connection as the hub knows it: the L{Peer} the transport gives it (an address and ways
to send, stream and close), the L{Stream}s it sends through one, and what the hub keeps per
connection (L{Connection}: its L{Role}, its L{Filter}, its budgets).

The hub imports nothing of the transport: these protocols are all it knows of a socket.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from telemetry_service.auth import Grant
from telemetry_service.ratelimit import TokenBucket


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
