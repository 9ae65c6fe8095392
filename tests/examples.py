"""
Messages shaped exactly like the ones the real clients send (see
shared/design/real-clients.md): connectors' enveloped events and flat events, and the
dashboard's CLIENT_CONNECT.
"""

from __future__ import annotations

import hashlib
from typing import Any

TS = "2025-12-27T10:00:00.000Z"


def packet_id(n: int) -> str:
    """A 64-hex-character packet id, the same at every hop, as real connectors send."""
    return hashlib.sha256(str(n).encode()).hexdigest()


def node_status(
    node_id: str = "connector-a", health: str = "healthy", **data: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "routes": [{"prefix": "g.connectorB", "nextHop": "connectorB", "priority": 0}],
        "peers": [{"id": "connectorB", "url": "ws://connector-b:3000", "connected": True}],
        "health": health,
        "uptime": 3600,
        "peersConnected": 1,
        "totalPeers": 1,
    }
    body.update(data)
    return {"type": "NODE_STATUS", "nodeId": node_id, "timestamp": TS, "data": body}


def packet_received(node_id: str = "connector-b", n: int = 1, **data: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "packetId": packet_id(n),
        "packetType": "PREPARE",
        "source": "connector-a",
        "destination": "g.connectorC.dest",
        "amount": "1000",
    }
    body.update(data)
    return {"type": "PACKET_RECEIVED", "nodeId": node_id, "timestamp": TS, "data": body}


def route_lookup(
    node_id: str = "connector-b", selected_peer: str | None = "connectorC", **data: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "destination": "g.connectorC.dest",
        "selectedPeer": selected_peer,
        "reason": "longest prefix match" if selected_peer else "no route found",
    }
    body.update(data)
    return {"type": "ROUTE_LOOKUP", "nodeId": node_id, "timestamp": TS, "data": body}


def packet_sent(node_id: str = "connector-b", n: int = 1, **data: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"packetId": packet_id(n), "nextHop": "connectorC", "timestamp": TS}
    body.update(data)
    return {"type": "PACKET_SENT", "nodeId": node_id, "timestamp": TS, "data": body}


def log_event(node_id: str = "connector-a") -> dict[str, Any]:
    return {
        "type": "LOG",
        "nodeId": node_id,
        "timestamp": TS,
        "data": {
            "level": "info",
            "timestamp": TS,
            "nodeId": node_id,
            "message": "Packet forwarded",
            "correlationId": "pkt-1",
            "context": {"peer": "connectorB"},
        },
    }


CLIENT_CONNECT_BARE = {"type": "CLIENT_CONNECT"}
#: what the existing dashboard sends on open (every browser uses the same nodeId)
CLIENT_CONNECT_DASHBOARD = {
    "type": "CLIENT_CONNECT",
    "nodeId": "dashboard-client",
    "timestamp": TS,
    "data": {},
}

FLAT_EVENTS: dict[str, dict[str, Any]] = {
    "ACCOUNT_BALANCE": {
        "type": "ACCOUNT_BALANCE",
        "nodeId": "connector-a",
        "peerId": "peer-b",
        "tokenId": "ILP",
        "debitBalance": "0",
        "creditBalance": "1000",
        "netBalance": "-1000",
        "creditLimit": "10000",
        "settlementThreshold": "5000",
        "settlementState": "IDLE",
        "timestamp": "2026-01-03T12:00:00.000Z",
    },
    "SETTLEMENT_TRIGGERED": {
        "type": "SETTLEMENT_TRIGGERED",
        "nodeId": "connector-a",
        "peerId": "peer-b",
        "tokenId": "ILP",
        "currentBalance": "5500",
        "threshold": "5000",
        "exceedsBy": "500",
        "triggerReason": "THRESHOLD_EXCEEDED",
        "timestamp": "2026-01-03T12:00:00.000Z",
    },
    "SETTLEMENT_COMPLETED": {
        "type": "SETTLEMENT_COMPLETED",
        "nodeId": "connector-a",
        "peerId": "peer-b",
        "tokenId": "ILP",
        "previousBalance": "5500",
        "newBalance": "5500",
        "settledAmount": "0",
        "settlementType": "MOCK",
        "success": False,
        "errorMessage": "TigerBeetle transfer failed: insufficient balance",
        "timestamp": "2026-01-03T12:01:00.000Z",
    },
    "PAYMENT_CHANNEL_OPENED": {
        "type": "PAYMENT_CHANNEL_OPENED",
        "nodeId": "connector-a",
        "channelId": "0x" + "ab" * 32,
        "participants": ["0x742d35Cc6634C0532925a3b844Bc9e7595f0bEb", "0x1234"],
        "peerId": "peer-b",
        "tokenAddress": "0xToken",
        "tokenSymbol": "USDC",
        "settlementTimeout": 86400,
        "initialDeposits": {"0x742d": "1000000", "0x1234": "0"},
        "timestamp": "2026-01-09T12:00:00.000Z",
    },
    "PAYMENT_CHANNEL_BALANCE_UPDATE": {
        # this connector version stamps flat events in Unix milliseconds
        "type": "PAYMENT_CHANNEL_BALANCE_UPDATE",
        "timestamp": 1735992100000,
        "nodeId": "connector-a",
        "channelId": "0x1234...5678",
        "myNonce": 42,
        "theirNonce": 38,
        "myTransferred": "250000000",
        "theirTransferred": "180000000",
    },
    "PAYMENT_CHANNEL_SETTLED": {
        "type": "PAYMENT_CHANNEL_SETTLED",
        "nodeId": "connector-a",
        "channelId": "0xabc",
        "finalBalances": {"0x742d": "750000", "0x1234": "250000"},
        "settlementType": "cooperative",
        "timestamp": "2026-01-09T13:00:00.000Z",
    },
    "XRP_CHANNEL_OPENED": {
        "type": "XRP_CHANNEL_OPENED",
        "timestamp": "2026-01-12T12:00:00.000Z",
        "nodeId": "connector-a",
        "channelId": "A1B2C3D4E5F6789",
        "account": "rN7n7otQDd6FczFgLdlqtyMVrn3HMfXEEW",
        "destination": "rLHzPsX6oXkzU9rFkRaYT8yBqJcQwPgHWN",
        "amount": "10000000000",
        "settleDelay": 86400,
        "publicKey": "ED01234567890ABCDEF",
        "peerId": "peer-bob",
    },
    "XRP_CHANNEL_CLAIMED": {
        "type": "XRP_CHANNEL_CLAIMED",
        "timestamp": "2026-01-12T12:05:00.000Z",
        "nodeId": "connector-a",
        "channelId": "A1B2C3D4E5F6789",
        "claimAmount": "5000000000",
        "remainingBalance": "5000000000",
        "peerId": "peer-bob",
    },
    "XRP_CHANNEL_CLOSED": {
        "type": "XRP_CHANNEL_CLOSED",
        "timestamp": "2026-01-12T12:10:00.000Z",
        "nodeId": "connector-a",
        "channelId": "A1B2C3D4E5F6789",
        "finalBalance": "5000000000",
        "closeType": "cooperative",
        "peerId": "peer-bob",
    },
}
