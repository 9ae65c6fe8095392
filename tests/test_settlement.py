"""
The state behind the original hub's HTTP API, without sockets: filled from flat events,
in the original's shapes, and bounded where the original was not.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from telemetry_service.settlement import SettlementState

from . import examples as ex

BALANCE = ex.FLAT_EVENTS["ACCOUNT_BALANCE"]
OPENED = ex.FLAT_EVENTS["PAYMENT_CHANNEL_OPENED"]


def fed(*events: dict[str, Any], clock: Clock | None = None, **bounds: Any) -> SettlementState:
    state = SettlementState(clock or Clock(), **bounds)
    for event in events:
        state.observe(event["type"], event)
    return state


def test_a_balance_is_the_originals_balance_state_plus_its_node() -> None:
    (balance,) = fed(BALANCE).balances()
    assert balance == {
        "peerId": "peer-b",
        "tokenId": "ILP",
        "debitBalance": "0",
        "creditBalance": "1000",
        "netBalance": "-1000",
        "creditLimit": "10000",
        "settlementThreshold": "5000",
        "settlementState": "IDLE",
        "lastUpdated": BALANCE["timestamp"],
        "nodeId": "connector-a",
    }
    bare = {k: v for k, v in BALANCE.items() if k not in ("creditLimit", "settlementThreshold")}
    (balance,) = fed(bare).balances()
    assert "creditLimit" not in balance and "settlementThreshold" not in balance


def test_balances_are_one_per_node_peer_and_token_in_first_seen_order() -> None:
    state = fed(
        BALANCE,
        {**BALANCE, "peerId": "peer-c"},
        {**BALANCE, "nodeId": "connector-b"},
        {**BALANCE, "creditBalance": "2000"},  # the first account again: updated in place
    )
    assert [(b["nodeId"], b["peerId"], b["creditBalance"]) for b in state.balances()] == [
        ("connector-a", "peer-b", "2000"),
        ("connector-a", "peer-c", "1000"),
        ("connector-b", "peer-b", "1000"),
    ]


def test_balances_are_bounded_by_count_and_bytes_oldest_first() -> None:
    state = fed(*({**BALANCE, "peerId": f"peer-{n}"} for n in range(5)), max_records=3)
    assert [b["peerId"] for b in state.balances()] == ["peer-2", "peer-3", "peer-4"]
    big = {**BALANCE, "tokenId": "T" * 1000}
    state = fed(*({**big, "peerId": f"peer-{n}"} for n in range(5)), max_bytes=2500)
    assert [b["peerId"] for b in state.balances()] == ["peer-3", "peer-4"]


def test_recent_settlements_are_the_last_100_newest_first() -> None:
    events = [
        {
            **ex.FLAT_EVENTS["SETTLEMENT_TRIGGERED"],
            "timestamp": f"2026-01-03T12:{n // 60:02}:{n % 60:02}.000Z",
            "n": n,
        }
        for n in range(105)
    ]
    recent = fed(*events).recent_settlements()
    assert [e["n"] for e in recent] == list(range(104, 4, -1))
    # timestamps in Unix milliseconds sort with ISO ones
    state = fed(
        {**ex.FLAT_EVENTS["SETTLEMENT_COMPLETED"], "timestamp": "2026-01-03T12:00:00.000Z"},
        {**ex.FLAT_EVENTS["SETTLEMENT_TRIGGERED"], "timestamp": 1767441700000},  # 12:01:40
    )
    assert [e["type"] for e in state.recent_settlements()] == [
        "SETTLEMENT_TRIGGERED",
        "SETTLEMENT_COMPLETED",
    ]


def test_a_payment_channel_opens_updates_and_settles_as_in_the_original() -> None:
    clock = Clock()
    channel_id = OPENED["channelId"]
    update = {
        "type": "PAYMENT_CHANNEL_BALANCE_UPDATE",
        "timestamp": "2026-01-09T12:01:00.000Z",
        "nodeId": "connector-a",
        "channelId": channel_id,
        "myNonce": 5,
        "theirNonce": 3,
        "myTransferred": "5000",
        "theirTransferred": "2000",
    }
    settled = {**ex.FLAT_EVENTS["PAYMENT_CHANNEL_SETTLED"], "channelId": channel_id}
    state = fed(OPENED, clock=clock)
    (channel,) = state.channels()
    assert channel == {
        "channelId": channel_id,
        "nodeId": "connector-a",
        "peerId": "peer-b",
        "participants": OPENED["participants"],
        "tokenAddress": "0xToken",
        "tokenSymbol": "USDC",
        "settlementTimeout": 86400,
        "deposits": OPENED["initialDeposits"],
        "myNonce": 0,
        "theirNonce": 0,
        "myTransferred": "0",
        "theirTransferred": "0",
        "status": "active",
        "openedAt": OPENED["timestamp"],
        "lastActivityAt": OPENED["timestamp"],
    }
    state.observe(update["type"], update)
    (channel,) = state.channels()
    assert (channel["myNonce"], channel["theirTransferred"]) == (5, "2000")
    assert channel["lastActivityAt"] == update["timestamp"]
    state.observe(settled["type"], settled)
    (channel,) = state.channels()
    assert (channel["status"], channel["settledAt"]) == ("settled", settled["timestamp"])
    clock.advance(299)
    assert len(state.channels()) == 1
    clock.advance(1)  # forgotten five minutes after it settled
    assert state.channels() == []


def test_an_update_for_a_channel_never_seen_open_changes_nothing() -> None:
    update = {**ex.FLAT_EVENTS["PAYMENT_CHANNEL_BALANCE_UPDATE"], "channelId": "0xnonexistent"}
    assert fed(update).channels() == []


def test_xrp_and_agent_channels_are_listed_with_the_originals_fields() -> None:
    xrp, agent = fed(
        ex.FLAT_EVENTS["XRP_CHANNEL_OPENED"],
        ex.FLAT_EVENTS["XRP_CHANNEL_CLAIMED"],
        ex.FLAT_EVENTS["AGENT_CHANNEL_OPENED"],
    ).channels()
    assert xrp["settlementMethod"] == "xrp"
    assert xrp["xrpBalance"] == ex.FLAT_EVENTS["XRP_CHANNEL_CLAIMED"]["claimAmount"]
    assert xrp["participants"] == [
        ex.FLAT_EVENTS["XRP_CHANNEL_OPENED"]["account"],
        ex.FLAT_EVENTS["XRP_CHANNEL_OPENED"]["destination"],
    ]
    assert agent["agentId"] == ex.FLAT_EVENTS["AGENT_CHANNEL_OPENED"]["agentId"]
    assert agent["status"] == "active"
