"""
Account balances, recent settlements and payment channels, as the original hub kept them for
its HTTP API (C{/api/balances}, C{/api/settlements/recent}, C{/api/channels}), filled from
the connectors' flat events as they pass through the hub.

The shapes are the original's (its C{BalanceState} and C{DashboardChannelState}), so the
existing dashboard's settlement panels load from this hub unchanged; every record also
carries the C{nodeId} it belongs to. Unlike the original, everything here is bounded: by
count, and settled channels are forgotten five minutes after they settle, as the original
did with a timer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from datetime import datetime
from typing import Any

import orjson
from twisted.internet.interfaces import IReactorTime

#: the original kept the last 100 settlement events
RECENT_SETTLEMENTS = 100
#: a settled channel is listed for this long, then forgotten (as in the original)
SETTLED_CHANNEL_SECONDS = 300.0

SETTLEMENT_EVENTS = frozenset({"SETTLEMENT_TRIGGERED", "SETTLEMENT_COMPLETED"})
#: every type this state is built from
TYPES = frozenset(
    {
        "ACCOUNT_BALANCE",
        *SETTLEMENT_EVENTS,
        "PAYMENT_CHANNEL_OPENED",
        "PAYMENT_CHANNEL_BALANCE_UPDATE",
        "PAYMENT_CHANNEL_SETTLED",
        "XRP_CHANNEL_OPENED",
        "XRP_CHANNEL_CLAIMED",
        "XRP_CHANNEL_CLOSED",
        "AGENT_CHANNEL_OPENED",
        "AGENT_CHANNEL_BALANCE_UPDATE",
        "AGENT_CHANNEL_PAYMENT_SENT",
        "AGENT_CHANNEL_CLOSED",
    }
)


def _sort_key(event: dict[str, Any]) -> float:
    """
    An event's time in milliseconds, for newest-first order; ISO 8601 or Unix milliseconds,
    as connectors send them. An unreadable one sorts as the oldest.
    """
    stamp = event.get("timestamp")
    if isinstance(stamp, (int, float)) and not isinstance(stamp, bool):
        return float(stamp)
    if isinstance(stamp, str):
        try:
            return datetime.fromisoformat(stamp).timestamp() * 1000
        except ValueError:
            pass
    return float("-inf")


class _BoundedRecords:
    """
    Records in insertion order (as a JavaScript C{Map} keeps them), bounded by count and by
    their size as JSON; past either bound the oldest go first.
    """

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self._max_count = max_count
        self._max_bytes = max_bytes
        self._records: dict[Hashable, tuple[dict[str, Any], int]] = {}
        self._bytes = 0

    def get(self, key: Hashable) -> dict[str, Any] | None:
        entry = self._records.get(key)
        return None if entry is None else entry[0]

    def put(self, key: Hashable, record: dict[str, Any]) -> None:
        """
        Store C{record} (again, after a change in place) and evict what no longer fits.
        """
        size = len(orjson.dumps(record))
        old = self._records.get(key)
        if old is not None:
            self._bytes -= old[1]
        self._records[key] = (record, size)
        self._bytes += size
        records = self._records
        while len(records) > self._max_count or self._bytes > self._max_bytes:
            oldest = next(iter(records))
            self._bytes -= records.pop(oldest)[1]

    def pop(self, key: Hashable) -> None:
        entry = self._records.pop(key, None)
        if entry is not None:
            self._bytes -= entry[1]

    def values(self) -> list[dict[str, Any]]:
        return [record for record, _ in self._records.values()]


class SettlementState:
    """
    The latest balance per node, peer and token; the last settlement events; the payment
    channels open now (EVM, XRP and the agents').
    """

    def __init__(
        self,
        clock: IReactorTime,
        max_records: int = 10_000,
        max_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        """
        @param max_records: balances kept, and channels kept, each at most this many.
        @param max_bytes: ... and at most this many bytes of JSON each.
        """
        self._clock = clock
        # (nodeId, peerId, tokenId) -> BalanceState
        self._balances = _BoundedRecords(max_records, max_bytes)
        # the events as received (with the hub's seq), as JSON
        self._settlements: deque[bytes] = deque(maxlen=RECENT_SETTLEMENTS)
        # channelId -> DashboardChannelState
        self._channels = _BoundedRecords(max_records, max_bytes)
        # channelId -> when (clock seconds) it settled
        self._settled_at: dict[str, float] = {}

    # -- what the hub tells it

    def observe(self, message_type: str, message: dict[str, Any]) -> None:
        """
        Take in one accepted event (any type; those that do not concern it are ignored).
        """
        if message_type not in TYPES:
            return
        if message_type == "ACCOUNT_BALANCE":
            self._balance(message)
        elif message_type in SETTLEMENT_EVENTS:
            self._settlements.append(orjson.dumps(message))
        else:
            self._channel(message_type, message)

    def _balance(self, event: dict[str, Any]) -> None:
        key = (event.get("nodeId"), event.get("peerId"), event.get("tokenId"))
        state = {
            "peerId": event.get("peerId"),
            "tokenId": event.get("tokenId"),
            "debitBalance": event.get("debitBalance"),
            "creditBalance": event.get("creditBalance"),
            "netBalance": event.get("netBalance"),
            "creditLimit": event.get("creditLimit"),
            "settlementThreshold": event.get("settlementThreshold"),
            "settlementState": event.get("settlementState"),
            "lastUpdated": event.get("timestamp"),
            "nodeId": event.get("nodeId"),
        }
        # like JSON.stringify in the original, absent optional fields are left out
        for optional in ("creditLimit", "settlementThreshold"):
            if state[optional] is None:
                del state[optional]
        self._balances.put(key, state)

    def _channel(self, message_type: str, event: dict[str, Any]) -> None:
        channel_id = event.get("channelId")
        if not isinstance(channel_id, str):
            return
        self._forget_settled()
        stamp = event.get("timestamp")
        if message_type == "PAYMENT_CHANNEL_OPENED":
            opened = {
                "channelId": channel_id,
                "nodeId": event.get("nodeId"),
                "peerId": event.get("peerId"),
                "participants": event.get("participants"),
                "tokenAddress": event.get("tokenAddress"),
                "tokenSymbol": event.get("tokenSymbol"),
                "settlementTimeout": event.get("settlementTimeout"),
                "deposits": event.get("initialDeposits"),
                **_fresh_balances(),
                "status": "active",
                "openedAt": stamp,
                "lastActivityAt": stamp,
            }
        elif message_type == "XRP_CHANNEL_OPENED":
            account, destination = event.get("account"), event.get("destination")
            opened = {
                "channelId": channel_id,
                "nodeId": event.get("nodeId"),
                "peerId": event.get("peerId") or "unknown",
                "settlementMethod": "xrp",
                "xrpAccount": account,
                "xrpDestination": destination,
                "xrpAmount": event.get("amount"),
                "xrpBalance": "0",
                "xrpSettleDelay": event.get("settleDelay"),
                "xrpPublicKey": event.get("publicKey"),
                "participants": [account, destination],
                "tokenAddress": "XRP",
                "tokenSymbol": "XRP",
                "settlementTimeout": event.get("settleDelay"),
                "deposits": {},
                **_fresh_balances(),
                "status": "active",
                "openedAt": stamp,
                "lastActivityAt": stamp,
            }
        elif message_type == "AGENT_CHANNEL_OPENED":
            chain = event.get("chain")
            opened = {
                "channelId": channel_id,
                "nodeId": event.get("nodeId"),
                "peerId": event.get("peerId"),
                "agentId": event.get("agentId"),
                "settlementMethod": chain,
                "participants": [event.get("agentId"), event.get("peerId")],
                "tokenAddress": None,
                "tokenSymbol": chain.upper() if isinstance(chain, str) else None,
                "settlementTimeout": None,
                "deposits": {},
                "amount": event.get("amount"),
                "balance": event.get("amount"),
                **_fresh_balances(),
                "status": "active",
                "openedAt": stamp,
                "lastActivityAt": stamp,
            }
        else:
            self._update(message_type, self._channels.get(channel_id), event)
            return
        # opening again starts the channel's state afresh (as in the original), and a field
        # the event did not carry is left out, as the original's JSON.stringify did
        self._channels.put(channel_id, {k: v for k, v in opened.items() if v is not None})
        self._settled_at.pop(channel_id, None)

    def _update(
        self, message_type: str, channel: dict[str, Any] | None, event: dict[str, Any]
    ) -> None:
        """
        A change to a known channel; one the hub never saw open is ignored, as in the
        original (its event is still broadcast).
        """
        if channel is None:
            return
        stamp = event.get("timestamp")
        if message_type == "PAYMENT_CHANNEL_BALANCE_UPDATE":
            for name in ("myNonce", "theirNonce", "myTransferred", "theirTransferred"):
                channel[name] = event.get(name)
        elif message_type == "XRP_CHANNEL_CLAIMED":
            channel["xrpBalance"] = event.get("claimAmount")
        elif message_type == "AGENT_CHANNEL_BALANCE_UPDATE":
            channel["balance"] = event.get("newBalance")
            channel["deposit"] = event.get("deposit")
        elif message_type in _CLOSING:
            channel["status"] = "settled"
            channel["settledAt"] = stamp
            self._settled_at[channel["channelId"]] = self._clock.seconds()
            if message_type == "PAYMENT_CHANNEL_SETTLED":
                # the original left an EVM channel's last activity where it was
                self._channels.put(channel["channelId"], channel)
                return
        channel["lastActivityAt"] = stamp
        self._channels.put(channel["channelId"], channel)

    def _forget_settled(self) -> None:
        if not self._settled_at:
            return
        cutoff = self._clock.seconds() - SETTLED_CHANNEL_SECONDS
        for channel_id, settled in list(self._settled_at.items()):
            if settled <= cutoff:
                del self._settled_at[channel_id]
                self._channels.pop(channel_id)

    # -- what the HTTP API serves

    def balances(self) -> list[dict[str, Any]]:
        return list(self._balances.values())

    def recent_settlements(self) -> list[dict[str, Any]]:
        """
        The last 100 settlement events received, newest first by their own timestamp.
        """
        events = [orjson.loads(event) for event in self._settlements]
        return sorted(events, key=_sort_key, reverse=True)

    def channels(self) -> list[dict[str, Any]]:
        self._forget_settled()
        return list(self._channels.values())


_CLOSING = ("PAYMENT_CHANNEL_SETTLED", "XRP_CHANNEL_CLOSED", "AGENT_CHANNEL_CLOSED")


def _fresh_balances() -> dict[str, Any]:
    return {"myNonce": 0, "theirNonce": 0, "myTransferred": "0", "theirTransferred": "0"}
