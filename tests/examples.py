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
    # The rest of the connector's vocabulary, each in the key order of its object literal
    # (m2m research notes 1.4 and 2.x); events the connector sends without a nodeId are
    # here without one.
    # 29-value shared types: the flat PACKET_* events, stamped in Unix ms
    "PACKET_RECEIVED": {
        "type": "PACKET_RECEIVED",
        "nodeId": "connector-a",
        "packetId": packet_id(1),
        "destination": "g.connectorC.dest",
        "amount": "1000",
        "from": "peer-b",
        "timestamp": 1735992100000,
    },
    "PACKET_FORWARDED": {
        "type": "PACKET_FORWARDED",
        "nodeId": "connector-a",
        "packetId": packet_id(1),
        "destination": "g.connectorC.dest",
        "amount": "1000",
        "to": "connectorC",
        "timestamp": 1735992100001,
    },
    "PACKET_FULFILLED": {
        "type": "PACKET_FULFILLED",
        "nodeId": "connector-a",
        "packetId": packet_id(1),
        "destination": "g.connectorC.dest",
        "amount": "1000",
        "from": "connectorC",
        "fulfillment": packet_id(2),
        "timestamp": 1735992100050,
    },
    "PACKET_REJECTED": {
        "type": "PACKET_REJECTED",
        "nodeId": "connector-a",
        "packetId": packet_id(3),
        "destination": "g.connectorC.dest",
        "amount": "1000",
        "from": "connectorC",
        "code": "F02",
        "message": "Unreachable",
        "timestamp": 1735992100060,
    },
    # agent-balance-tracker.ts: no nodeId
    "AGENT_BALANCE_CHANGED": {
        "type": "AGENT_BALANCE_CHANGED",
        "agentId": "agent-001",
        "chain": "evm",
        "token": "ETH",
        "oldBalance": "1000000000000000000",
        "newBalance": "750000000000000000",
        "change": "-250000000000000000",
        "timestamp": "2026-01-10T09:00:00.000Z",
    },
    # agent-wallet-funder.ts: no nodeId
    "AGENT_WALLET_FUNDED": {
        "type": "AGENT_WALLET_FUNDED",
        "agentId": "agent-001",
        "evmAddress": "0x742d35Cc6634C0532925a3b844Bc9e7595f0bEb",
        "xrpAddress": "rN7n7otQDd6FczFgLdlqtyMVrn3HMfXEEW",
        "transactions": [
            {
                "chain": "evm",
                "token": "ETH",
                "to": "0x742d35Cc6634C0532925a3b844Bc9e7595f0bEb",
                "amount": "10000000000000000",
                "txHash": "0x" + "12" * 32,
                "status": "pending",
            },
            {
                "chain": "xrp",
                "token": "XRP",
                "to": "rN7n7otQDd6FczFgLdlqtyMVrn3HMfXEEW",
                "amount": "15000000",
                "txHash": "C" * 64,
                "status": "pending",
            },
        ],
        "timestamp": "2026-01-10T09:00:00.000Z",
    },
    "FUNDING_RATE_LIMIT_EXCEEDED": {
        "type": "FUNDING_RATE_LIMIT_EXCEEDED",
        "agentId": "agent-001",
        "violatedLimit": "per_hour",
        "timestamp": "2026-01-10T09:01:00.000Z",
    },
    "FUNDING_TRANSACTION_CONFIRMED": {
        "type": "FUNDING_TRANSACTION_CONFIRMED",
        "agentId": "agent-001",
        "txHash": "0x" + "12" * 32,
        "chain": "evm",
        "status": "confirmed",
        "timestamp": "2026-01-10T09:00:30.000Z",
    },
    "FUNDING_TRANSACTION_FAILED": {
        "type": "FUNDING_TRANSACTION_FAILED",
        "agentId": "agent-001",
        "txHash": "C" * 64,
        "chain": "xrp",
        "error": "Transaction not validated",
        "timestamp": "2026-01-10T09:00:40.000Z",
    },
    # agent-wallet-lifecycle.ts: no nodeId, Unix ms
    "AGENT_WALLET_STATE_CHANGED": {
        "type": "AGENT_WALLET_STATE_CHANGED",
        "agentId": "agent-001",
        "oldState": "pending",
        "newState": "active",
        "timestamp": 1768035600000,
    },
    # agent-channel-manager.ts: nodeId from NODE_ID, Unix ms
    "AGENT_CHANNEL_OPENED": {
        "type": "AGENT_CHANNEL_OPENED",
        "timestamp": 1768035600000,
        "nodeId": "connector-a",
        "agentId": "agent-001",
        "channelId": "0x" + "cd" * 32,
        "chain": "evm",
        "peerId": "peer-b",
        "amount": "1000000",
    },
    "AGENT_CHANNEL_PAYMENT_SENT": {
        "type": "AGENT_CHANNEL_PAYMENT_SENT",
        "timestamp": 1768035601000,
        "nodeId": "connector-a",
        "agentId": "agent-001",
        "packetType": "prepare",
        "from": "agent-001",
        "to": "peer-b",
        "channelId": "0x" + "cd" * 32,
        "amount": "100",
        "destination": "g.agent.peer-b",
    },
    # the agent server's literal (that server sends its agentId as nodeId; see test_schemas)
    "AGENT_CHANNEL_BALANCE_UPDATE": {
        "type": "AGENT_CHANNEL_BALANCE_UPDATE",
        "timestamp": 1768035601000,
        "nodeId": "connector-a",
        "agentId": "agent-001",
        "channelId": "0x" + "cd" * 32,
        "channelType": "evm",
        "peerId": "peer-b",
        "previousBalance": "1000000",
        "newBalance": "999900",
        "amount": "100",
        "direction": "outgoing",
        "deposit": "1000000",
    },
    "AGENT_CHANNEL_CLOSED": {
        "type": "AGENT_CHANNEL_CLOSED",
        "timestamp": 1768035700000,
        "nodeId": "connector-a",
        "agentId": "agent-001",
        "channelId": "0x" + "cd" * 32,
        "chain": "evm",
    },
    # 29-value shared types with no emitter in the stored connector sources
    "WALLET_BALANCE_MISMATCH": {
        "type": "WALLET_BALANCE_MISMATCH",
        "timestamp": 1768035800000,
        "nodeId": "connector-a",
        "agentId": "agent-001",
        "chain": "evm",
        "token": "ETH",
        "expectedBalance": "750000000000000000",
        "actualBalance": "700000000000000000",
    },
    "SUSPICIOUS_ACTIVITY_DETECTED": {
        "type": "SUSPICIOUS_ACTIVITY_DETECTED",
        "timestamp": 1768035800000,
        "nodeId": "connector-a",
        "agentId": "agent-001",
        "activityType": "rapid_funding",
        "details": {"fundingCount": 6, "windowMs": 3600000},
    },
    "RATE_LIMIT_EXCEEDED": {
        "type": "RATE_LIMIT_EXCEEDED",
        "timestamp": 1768035800000,
        "nodeId": "connector-a",
        "operation": "packet",
        "identifier": "peer-b",
        "limit": 1000,
    },
    "CLAIM_SENT": {
        "type": "CLAIM_SENT",
        "nodeId": "connector-a",
        "peerId": "peer-b",
        "blockchain": "evm",
        "messageId": "claim-0001",
        "amount": "5000",
        "success": True,
        "timestamp": "2026-01-10T10:00:00.000Z",
    },
    "CLAIM_RECEIVED": {
        "type": "CLAIM_RECEIVED",
        "nodeId": "connector-a",
        "peerId": "peer-b",
        "blockchain": "evm",
        "messageId": "claim-0002",
        "channelId": "0x" + "cd" * 32,
        "amount": "5000",
        "verified": False,
        "error": "Invalid signature",
        "timestamp": "2026-01-10T10:00:01.000Z",
    },
    "CLAIM_REDEEMED": {
        "type": "CLAIM_REDEEMED",
        "nodeId": "connector-a",
        "peerId": "peer-b",
        "blockchain": "evm",
        "messageId": "claim-0002",
        "channelId": "0x" + "cd" * 32,
        "amount": "5000",
        "txHash": "0x" + "34" * 32,
        "gasCost": "21000000000000",
        "success": True,
        "timestamp": "2026-01-10T10:05:00.000Z",
    },
    "PER_HOP_NOTIFICATION": {
        "type": "PER_HOP_NOTIFICATION",
        "nodeId": "connector-a",
        "destination": "g.connectorC.dest",
        "amount": "1000",
        "nextHop": "connectorC",
        "sourcePeer": "peer-b",
        "correlationId": "pkt-1",
        "timestamp": 1735992100002,
    },
    # in the 29-value union but not its enum; the agent server sends them (ISO timestamps)
    "CLAIM_SETTLEMENT_INITIATED": {
        "type": "CLAIM_SETTLEMENT_INITIATED",
        "nodeId": "connector-a",
        "chain": "evm",
        "channelId": "0x" + "cd" * 32,
        "amount": "5000",
        "peerId": "peer-b",
        "timestamp": "2026-01-10T10:06:00.000Z",
    },
    "CLAIM_SETTLEMENT_SUCCESS": {
        "type": "CLAIM_SETTLEMENT_SUCCESS",
        "nodeId": "connector-a",
        "chain": "evm",
        "channelId": "0x" + "cd" * 32,
        "txHash": "0x" + "56" * 32,
        "settledAmount": "5000",
        "peerId": "peer-b",
        "timestamp": "2026-01-10T10:06:30.000Z",
    },
    "CLAIM_SETTLEMENT_FAILED": {
        "type": "CLAIM_SETTLEMENT_FAILED",
        "nodeId": "connector-a",
        "chain": "evm",
        "channelId": "0x" + "cd" * 32,
        "error": "execution reverted",
        "attemptedAmount": "5000",
        "peerId": "peer-b",
        "timestamp": "2026-01-10T10:06:30.000Z",
    },
    # channel-manager.ts's legacy events: {type, nodeId, channelId, ...details, timestamp}
    "CHANNEL_OPENED": {
        "type": "CHANNEL_OPENED",
        "nodeId": "connector-a",
        "channelId": "0x" + "ab" * 32,
        "peerId": "peer-b",
        "tokenId": "USDC",
        "tokenAddress": "0xToken",
        "initialDeposit": "1000000",
        "timestamp": "2026-01-09T12:00:00.000Z",
    },
    "CHANNEL_CLOSED": {
        "type": "CHANNEL_CLOSED",
        "nodeId": "connector-a",
        "channelId": "0x" + "ab" * 32,
        "peerId": "peer-b",
        "tokenId": "USDC",
        "closureType": "unilateral",
        "timestamp": "2026-01-09T14:00:00.000Z",
    },
    "CHANNEL_IDLE_DETECTED": {
        "type": "CHANNEL_IDLE_DETECTED",
        "nodeId": "connector-a",
        "channelId": "0x" + "ab" * 32,
        "peerId": "peer-b",
        "tokenId": "USDC",
        "lastActivityAt": "2026-01-09T12:00:00.000Z",
        "timestamp": "2026-01-10T12:00:00.000Z",
    },
}

#: a Nostr event as an agent carries it in AGENT_CHANNEL_PAYMENT_SENT
NOSTR_EVENT: dict[str, Any] = {
    "id": "e" * 64,
    "pubkey": "f" * 64,
    "kind": 1,
    "content": "hello agent",
    "created_at": 1735992100,
    "tags": [["p", "f" * 64]],
    "sig": "a" * 128,
}
