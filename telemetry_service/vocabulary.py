"""
The words of the protocol that the code itself speaks, defined once: the message types the
hub treats specially, the events it originates, the placeholder nodeId of the real
connector, and the timestamps it writes.

Everything else about a message type lives in its schema file.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

#: a dashboard's hello: the replay, then the broadcast
CLIENT_CONNECT = "CLIENT_CONNECT"
#: a node's status: what the replay cache keeps
NODE_STATUS = "NODE_STATUS"
#: sent by the hub when a node's last connector goes away or its first one arrives
NODE_PRESENCE = "NODE_PRESENCE"
#: sent by the hub to a dashboard that asked to resume
RESUME = "RESUME"
#: events the hub itself originates and keeps in its history. A client receives them only
#: if it names them in the C{hubEvents} of its CLIENT_CONNECT: the existing clients count
#: frames, and an extra frame breaks them.
HUB_EVENTS = frozenset({NODE_PRESENCE})
#: the nodeId the real connector's settlement monitor sends when it was built without one.
#: It names no node: such an event is accepted from any connector, attributed to the
#: connection's own node (C{sourceNodeId}, as for events with no nodeId at all), and never
#: binds a connection or enters the replay cache.
PLACEHOLDER_NODE_ID = "unknown"


def iso_millis(seconds: float) -> str:
    """
    A Unix time as the connectors write theirs: ISO 8601, UTC, milliseconds, with a Z
    (C{2026-12-04T10:00:00.000Z}, as JavaScript's C{Date.toISOString()}).
    """
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def presence_event(node_id: str, online: bool, seconds: float) -> dict[str, Any]:
    """
    The NODE_PRESENCE event, before the bus gives it its C{seq}. (With several hubs on
    Redis, the Redis scripts write the same bytes for it: see bus/redis; a test holds the
    two to one shape.)
    """
    return {
        "type": NODE_PRESENCE,
        "nodeId": node_id,
        "online": online,
        "timestamp": iso_millis(seconds),
    }


def message_node(message: dict[str, Any]) -> str | None:
    """
    The node a message counts as (for filters and the history): its nodeId, or the
    C{sourceNodeId} the hub adds where a connector's event names none of its own.
    """
    node = message.get("nodeId")
    if not isinstance(node, str) or node == PLACEHOLDER_NODE_ID:
        node = message.get("sourceNodeId")
    return node if isinstance(node, str) else None
