"""
The shipped schemas accept what real clients send and refuse what is wrong; the loader
checks a schema folder thoroughly before the hub starts.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from telemetry_service.errors import ConfigurationError, Rejection
from telemetry_service.schemas import SchemaCatalog, shipped_schemas_dir

from . import examples as ex

TS = ex.TS
AGENT_WALLET_FUNDED = ex.FLAT_EVENTS["AGENT_WALLET_FUNDED"]
PAYMENT_SENT = ex.FLAT_EVENTS["AGENT_CHANNEL_PAYMENT_SENT"]
FLAT = ex.FLAT_EVENTS

GOOD: list[tuple[str, dict[str, Any]]] = [
    ("seed NODE_STATUS", ex.node_status()),
    (
        "NODE_STATUS of the seed's manual test (no uptime, no counters)",
        {
            "type": "NODE_STATUS",
            "nodeId": "test-connector",
            "timestamp": "2025-12-29T00:00:00.000Z",
            "data": {"routes": [], "peers": [], "health": "healthy"},
        },
    ),
    ("NODE_STATUS starting", ex.node_status(health="starting")),
    ("NODE_STATUS unhealthy", ex.node_status(health="unhealthy")),
    ("PACKET_RECEIVED", ex.packet_received()),
    ("PACKET_RECEIVED FULFILL", ex.packet_received(packetType="FULFILL")),
    ("PACKET_RECEIVED with the seed's short id", ex.packet_received(packetId="prepare-abc123")),
    ("ROUTE_LOOKUP", ex.route_lookup()),
    ("ROUTE_LOOKUP with no route: selectedPeer null", ex.route_lookup(selected_peer=None)),
    ("PACKET_SENT", ex.packet_sent()),
    ("extra fields anywhere", {**ex.packet_sent(extra=1), "seq": 7, "source": "x"}),
    ("LOG", ex.log_event()),
    ("CLIENT_CONNECT bare", ex.CLIENT_CONNECT_BARE),
    ("CLIENT_CONNECT enveloped", ex.CLIENT_CONNECT_DASHBOARD),
    ("timestamp with offset", {**ex.packet_sent(), "timestamp": "2025-12-27T10:00:00+01:00"}),
    ("timestamp without fraction", {**ex.packet_sent(), "timestamp": "2025-12-27T10:00:00Z"}),
    *[(f"flat {name}", event) for name, event in ex.FLAT_EVENTS.items()],
    (
        "flat ACCOUNT_BALANCE without optional limits",
        {
            k: v
            for k, v in ex.FLAT_EVENTS["ACCOUNT_BALANCE"].items()
            if k not in ("creditLimit", "settlementThreshold")
        },
    ),
    (
        "flat PACKET_RECEIVED with an ISO timestamp",
        {**ex.FLAT_EVENTS["PACKET_RECEIVED"], "timestamp": TS},
    ),
    (
        "AGENT_BALANCE_CHANGED as its doc example: Unix ms, and a nodeId",
        {**ex.FLAT_EVENTS["AGENT_BALANCE_CHANGED"], "timestamp": 1768035600000, "nodeId": "x"},
    ),
    (
        "AGENT_WALLET_FUNDED of the 29-value version: no xrpAddress, EVM only",
        {
            **{k: v for k, v in AGENT_WALLET_FUNDED.items() if k != "xrpAddress"},
            "transactions": AGENT_WALLET_FUNDED["transactions"][:1],
        },
    ),
    ("AGENT_WALLET_FUNDED with no transactions", {**AGENT_WALLET_FUNDED, "transactions": []}),
    (
        "AGENT_WALLET_STATE_CHANGED of a new wallet: oldState null",
        {**ex.FLAT_EVENTS["AGENT_WALLET_STATE_CHANGED"], "oldState": None, "newState": "pending"},
    ),
    (
        "AGENT_CHANNEL_OPENED without NODE_ID: nodeId 'unknown'",
        {**ex.FLAT_EVENTS["AGENT_CHANNEL_OPENED"], "nodeId": "unknown", "chain": "xrp"},
    ),
    (
        "AGENT_CHANNEL_PAYMENT_SENT of the agent server, with every optional field",
        {
            **PAYMENT_SENT,
            "nodeId": "agent-001",
            "packetType": "fulfill",
            "packetId": ex.packet_id(7),
            "peerId": "peer-b",
            "event": ex.NOSTR_EVENT,
            "executionCondition": ex.packet_id(8),
            "expiresAt": "2026-01-10T09:00:30.000Z",
            "fulfillment": ex.packet_id(9),
            "channelType": "evm",
            "channelBalance": "999900",
            "channelDeposit": "1000000",
        },
    ),
    (
        "AGENT_CHANNEL_PAYMENT_SENT reject with no channel",
        {
            **PAYMENT_SENT,
            "packetType": "reject",
            "errorCode": "F99",
            "errorMessage": "",
            "channelType": "none",
        },
    ),
    (
        "AGENT_CHANNEL_BALANCE_UPDATE of the agent server: its agentId as nodeId, incoming",
        {
            **ex.FLAT_EVENTS["AGENT_CHANNEL_BALANCE_UPDATE"],
            "nodeId": "agent-001",
            "direction": "incoming",
        },
    ),
    (
        "CLAIM_SENT that failed",
        {**ex.FLAT_EVENTS["CLAIM_SENT"], "success": False, "error": "peer offline"},
    ),
    (
        "CLAIM_SETTLEMENT_FAILED of the agent server: its agentId as nodeId",
        {**ex.FLAT_EVENTS["CLAIM_SETTLEMENT_FAILED"], "nodeId": "agent-001"},
    ),
    (
        "CHANNEL_OPENED without the optional token address and deposit",
        {
            k: v
            for k, v in ex.FLAT_EVENTS["CHANNEL_OPENED"].items()
            if k not in ("tokenAddress", "initialDeposit")
        },
    ),
    (
        "CHANNEL_CLOSED cooperative, Unix ms",
        {**ex.FLAT_EVENTS["CHANNEL_CLOSED"], "closureType": "cooperative", "timestamp": 1},
    ),
]


def with_change(message: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of C{message} with the field at dotted C{path} set (or removed if value is DEL)."""
    result = copy.deepcopy(message)
    *parents, last = path.split(".")
    node: Any = result
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is DEL:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return result


DEL = object()

BAD: list[tuple[str, dict[str, Any], str, str]] = [
    # (what, message, failing path, rule)
    (
        "a number where a string belongs",
        with_change(ex.packet_sent(), "nodeId", 42),
        "$.nodeId",
        "type",
    ),
    ("data null", with_change(ex.packet_sent(), "data", None), "$.data", "type"),
    ("data a string", with_change(ex.packet_sent(), "data", "string"), "$.data", "type"),
    ("data an array", with_change(ex.packet_sent(), "data", [1, 2]), "$.data", "type"),
    ("health outside its enum", ex.node_status(health="sick"), "$.data.health", "enum"),
    (
        "non-ISO timestamp",
        with_change(ex.packet_sent(), "timestamp", "27/12/2025 10:00"),
        "$.timestamp",
        "pattern",
    ),
    (
        "timestamp as epoch on an enveloped event",
        with_change(ex.packet_sent(), "timestamp", 1735992100000),
        "$.timestamp",
        "type",
    ),
    (
        "timestamp month 13",
        with_change(ex.packet_sent(), "timestamp", "2025-13-27T10:00:00Z"),
        "$.timestamp",
        "pattern",
    ),
    ("missing nodeId", with_change(ex.packet_sent(), "nodeId", DEL), "$", "required"),
    ("empty nodeId", with_change(ex.packet_sent(), "nodeId", ""), "$.nodeId", "minLength"),
    ("missing data", with_change(ex.node_status(), "data", DEL), "$", "required"),
    (
        "NODE_STATUS without peers",
        with_change(ex.node_status(), "data.peers", DEL),
        "$.data",
        "required",
    ),
    (
        "peer connected not boolean",
        with_change(ex.node_status(), "data.peers.0.connected", "yes"),
        "$.data.peers[0].connected",
        "type",
    ),
    (
        "route without nextHop",
        with_change(ex.node_status(), "data.routes.0.nextHop", DEL),
        "$.data.routes[0]",
        "required",
    ),
    (
        "negative uptime",
        with_change(ex.node_status(), "data.uptime", -1),
        "$.data.uptime",
        "minimum",
    ),
    (
        "packetType outside its enum",
        ex.packet_received(packetType="PING"),
        "$.data.packetType",
        "enum",
    ),
    ("amount as a number", ex.packet_received(amount=1000), "$.data.amount", "type"),
    ("amount not decimal", ex.packet_received(amount="12.5"), "$.data.amount", "pattern"),
    ("selectedPeer a number", ex.route_lookup(selected_peer=7), "$.data.selectedPeer", "anyOf"),  # type: ignore[arg-type]
    (
        "PACKET_SENT without nextHop",
        with_change(ex.packet_sent(), "data.nextHop", DEL),
        "$.data",
        "required",
    ),
    ("LOG without message", with_change(ex.log_event(), "data.message", DEL), "$.data", "required"),
    (
        "CLIENT_CONNECT with bad timestamp",
        {"type": "CLIENT_CONNECT", "timestamp": "now"},
        "$.timestamp",
        "pattern",
    ),
    ("CLIENT_CONNECT with data null", {"type": "CLIENT_CONNECT", "data": None}, "$.data", "type"),
    (
        "flat balance as number",
        with_change(ex.FLAT_EVENTS["ACCOUNT_BALANCE"], "creditBalance", 1000),
        "$.creditBalance",
        "type",
    ),
    (
        "flat settlementState outside its enum",
        with_change(ex.FLAT_EVENTS["ACCOUNT_BALANCE"], "settlementState", "DONE"),
        "$.settlementState",
        "enum",
    ),
    (
        "flat success not boolean",
        with_change(ex.FLAT_EVENTS["SETTLEMENT_COMPLETED"], "success", "false"),
        "$.success",
        "type",
    ),
    (
        "flat closeType outside its enum",
        with_change(ex.FLAT_EVENTS["XRP_CHANNEL_CLOSED"], "closeType", "rage-quit"),
        "$.closeType",
        "enum",
    ),
    (
        "flat nonce negative",
        with_change(ex.FLAT_EVENTS["PAYMENT_CHANNEL_BALANCE_UPDATE"], "myNonce", -1),
        "$.myNonce",
        "minimum",
    ),
    (
        "flat missing channelId",
        with_change(ex.FLAT_EVENTS["XRP_CHANNEL_CLAIMED"], "channelId", DEL),
        "$",
        "required",
    ),
    # PACKET_RECEIVED: a data field selects the envelope rules, its absence the flat ones
    (
        "PACKET_RECEIVED envelope with an epoch timestamp",
        with_change(ex.packet_received(), "timestamp", 1735992100000),
        "$.timestamp",
        "type",
    ),
    (
        "PACKET_RECEIVED envelope with data null",
        with_change(ex.packet_received(), "data", None),
        "$.data",
        "type",
    ),
    (
        "PACKET_RECEIVED envelope without source",
        with_change(ex.packet_received(), "data.source", DEL),
        "$.data",
        "required",
    ),
    (
        "PACKET_RECEIVED with neither data nor the flat fields",
        {"type": "PACKET_RECEIVED", "nodeId": "connector-a", "timestamp": TS},
        "$",
        "required",
    ),
    (
        "flat PACKET_RECEIVED without from",
        with_change(FLAT["PACKET_RECEIVED"], "from", DEL),
        "$",
        "required",
    ),
    (
        "flat PACKET_RECEIVED amount as a number",
        with_change(FLAT["PACKET_RECEIVED"], "amount", 1000),
        "$.amount",
        "type",
    ),
    (
        "flat PACKET_RECEIVED negative timestamp",
        with_change(FLAT["PACKET_RECEIVED"], "timestamp", -1),
        "$.timestamp",
        "anyOf",
    ),
    (
        "PACKET_FORWARDED without to",
        with_change(FLAT["PACKET_FORWARDED"], "to", DEL),
        "$",
        "required",
    ),
    (
        "PACKET_FULFILLED negative amount",
        with_change(FLAT["PACKET_FULFILLED"], "amount", "-5"),
        "$.amount",
        "pattern",
    ),
    (
        "PACKET_REJECTED empty code",
        with_change(FLAT["PACKET_REJECTED"], "code", ""),
        "$.code",
        "minLength",
    ),
    (
        "PER_HOP_NOTIFICATION without correlationId",
        with_change(FLAT["PER_HOP_NOTIFICATION"], "correlationId", DEL),
        "$",
        "required",
    ),
    (
        "AGENT_BALANCE_CHANGED change not an integer",
        with_change(FLAT["AGENT_BALANCE_CHANGED"], "change", "-2.5"),
        "$.change",
        "pattern",
    ),
    (
        "AGENT_BALANCE_CHANGED with an empty nodeId",
        with_change(FLAT["AGENT_BALANCE_CHANGED"], "nodeId", ""),
        "$.nodeId",
        "minLength",
    ),
    (
        "AGENT_BALANCE_CHANGED without agentId",
        with_change(FLAT["AGENT_BALANCE_CHANGED"], "agentId", DEL),
        "$",
        "required",
    ),
    (
        "AGENT_WALLET_FUNDED transaction status outside its enum",
        with_change(AGENT_WALLET_FUNDED, "transactions.0.status", "done"),
        "$.transactions[0].status",
        "enum",
    ),
    (
        "AGENT_WALLET_FUNDED transaction without txHash",
        with_change(AGENT_WALLET_FUNDED, "transactions.1.txHash", DEL),
        "$.transactions[1]",
        "required",
    ),
    (
        "AGENT_WALLET_FUNDED transactions not a list",
        with_change(AGENT_WALLET_FUNDED, "transactions", {}),
        "$.transactions",
        "type",
    ),
    (
        "AGENT_WALLET_STATE_CHANGED oldState a number",
        with_change(FLAT["AGENT_WALLET_STATE_CHANGED"], "oldState", 3),
        "$.oldState",
        "anyOf",
    ),
    (
        "AGENT_WALLET_STATE_CHANGED without oldState",
        with_change(FLAT["AGENT_WALLET_STATE_CHANGED"], "oldState", DEL),
        "$",
        "required",
    ),
    (
        "FUNDING_RATE_LIMIT_EXCEEDED violatedLimit a number",
        with_change(FLAT["FUNDING_RATE_LIMIT_EXCEEDED"], "violatedLimit", 5),
        "$.violatedLimit",
        "type",
    ),
    (
        "FUNDING_TRANSACTION_CONFIRMED with status failed",
        with_change(FLAT["FUNDING_TRANSACTION_CONFIRMED"], "status", "failed"),
        "$.status",
        "const",
    ),
    (
        "FUNDING_TRANSACTION_FAILED without error",
        with_change(FLAT["FUNDING_TRANSACTION_FAILED"], "error", DEL),
        "$",
        "required",
    ),
    (
        "AGENT_CHANNEL_OPENED without nodeId",
        with_change(FLAT["AGENT_CHANNEL_OPENED"], "nodeId", DEL),
        "$",
        "required",
    ),
    (
        "AGENT_CHANNEL_PAYMENT_SENT packetType in upper case",
        with_change(PAYMENT_SENT, "packetType", "PREPARE"),
        "$.packetType",
        "enum",
    ),
    (
        "AGENT_CHANNEL_PAYMENT_SENT Nostr event with a negative kind",
        with_change({**PAYMENT_SENT, "event": ex.NOSTR_EVENT}, "event.kind", -1),
        "$.event.kind",
        "minimum",
    ),
    (
        "AGENT_CHANNEL_PAYMENT_SENT Nostr tag not a string",
        with_change({**PAYMENT_SENT, "event": ex.NOSTR_EVENT}, "event.tags.0.1", 7),
        "$.event.tags[0][1]",
        "type",
    ),
    (
        "AGENT_CHANNEL_BALANCE_UPDATE direction outside its enum",
        with_change(FLAT["AGENT_CHANNEL_BALANCE_UPDATE"], "direction", "sideways"),
        "$.direction",
        "enum",
    ),
    (
        "AGENT_CHANNEL_CLOSED negative timestamp",
        with_change(FLAT["AGENT_CHANNEL_CLOSED"], "timestamp", -1768035700000),
        "$.timestamp",
        "anyOf",
    ),
    (
        "WALLET_BALANCE_MISMATCH balance in hex",
        with_change(FLAT["WALLET_BALANCE_MISMATCH"], "actualBalance", "0x10"),
        "$.actualBalance",
        "pattern",
    ),
    (
        "SUSPICIOUS_ACTIVITY_DETECTED details a string",
        with_change(FLAT["SUSPICIOUS_ACTIVITY_DETECTED"], "details", "many fundings"),
        "$.details",
        "type",
    ),
    (
        "RATE_LIMIT_EXCEEDED limit as a string",
        with_change(FLAT["RATE_LIMIT_EXCEEDED"], "limit", "1000"),
        "$.limit",
        "type",
    ),
    (
        "RATE_LIMIT_EXCEEDED negative limit",
        with_change(FLAT["RATE_LIMIT_EXCEEDED"], "limit", -1),
        "$.limit",
        "minimum",
    ),
    (
        "CLAIM_SENT success not boolean",
        with_change(FLAT["CLAIM_SENT"], "success", "true"),
        "$.success",
        "type",
    ),
    (
        "CLAIM_RECEIVED without verified",
        with_change(FLAT["CLAIM_RECEIVED"], "verified", DEL),
        "$",
        "required",
    ),
    (
        "CLAIM_REDEEMED gasCost in ether",
        with_change(FLAT["CLAIM_REDEEMED"], "gasCost", "0.000021"),
        "$.gasCost",
        "pattern",
    ),
    (
        "CLAIM_SETTLEMENT_INITIATED amount as a number",
        with_change(FLAT["CLAIM_SETTLEMENT_INITIATED"], "amount", 5000),
        "$.amount",
        "type",
    ),
    (
        "CLAIM_SETTLEMENT_SUCCESS empty txHash",
        with_change(FLAT["CLAIM_SETTLEMENT_SUCCESS"], "txHash", ""),
        "$.txHash",
        "minLength",
    ),
    (
        "CLAIM_SETTLEMENT_FAILED negative attemptedAmount",
        with_change(FLAT["CLAIM_SETTLEMENT_FAILED"], "attemptedAmount", "-1"),
        "$.attemptedAmount",
        "pattern",
    ),
    (
        "CHANNEL_OPENED initialDeposit as a number",
        with_change(FLAT["CHANNEL_OPENED"], "initialDeposit", 1000000),
        "$.initialDeposit",
        "type",
    ),
    (
        "CHANNEL_CLOSED without closureType",
        with_change(FLAT["CHANNEL_CLOSED"], "closureType", DEL),
        "$",
        "required",
    ),
    (
        "CHANNEL_IDLE_DETECTED lastActivityAt not a time",
        with_change(FLAT["CHANNEL_IDLE_DETECTED"], "lastActivityAt", "yesterday"),
        "$.lastActivityAt",
        "anyOf",
    ),
]


@pytest.mark.parametrize(("what", "message"), GOOD, ids=[g[0] for g in GOOD])
def test_real_client_messages_are_accepted(
    catalog: SchemaCatalog, what: str, message: dict[str, Any]
) -> None:
    assert catalog.validate(message) == message["type"]


@pytest.mark.parametrize(("what", "message", "path", "rule"), BAD, ids=[b[0] for b in BAD])
def test_wrong_messages_are_refused_naming_path_and_rule(
    catalog: SchemaCatalog, what: str, message: dict[str, Any], path: str, rule: str
) -> None:
    with pytest.raises(Rejection) as caught:
        catalog.validate(message)
    rejection = caught.value
    assert rejection.reason == "SCHEMA_VIOLATION"
    assert rejection.extra["messageType"] == message["type"]
    assert rejection.extra["path"] == path
    assert rejection.extra["rule"] == rule
    assert path in rejection.detail


def test_every_shipped_type_has_good_and_bad_examples(catalog: SchemaCatalog) -> None:
    assert {m["type"] for _, m in GOOD} == set(catalog.types)
    bad_types = {m["type"] for _, m, _, _ in BAD}
    # these older flat types share one definition style with a covered sibling
    assert set(catalog.types) - bad_types <= {
        "PAYMENT_CHANNEL_OPENED",
        "PAYMENT_CHANNEL_SETTLED",
        "SETTLEMENT_TRIGGERED",
        "XRP_CHANNEL_OPENED",
    }


def test_shipped_types(catalog: SchemaCatalog) -> None:
    assert catalog.types == sorted(
        [
            # the connector's envelope events, and the dashboard's hello
            "CLIENT_CONNECT",
            "LOG",
            "NODE_STATUS",
            "PACKET_RECEIVED",
            "PACKET_SENT",
            "ROUTE_LOOKUP",
            # the shared flat events of the 18- and 25-value vocabularies
            "ACCOUNT_BALANCE",
            "AGENT_BALANCE_CHANGED",
            "AGENT_CHANNEL_BALANCE_UPDATE",
            "AGENT_CHANNEL_CLOSED",
            "AGENT_CHANNEL_OPENED",
            "AGENT_CHANNEL_PAYMENT_SENT",
            "AGENT_WALLET_FUNDED",
            "AGENT_WALLET_STATE_CHANGED",
            "FUNDING_RATE_LIMIT_EXCEEDED",
            "FUNDING_TRANSACTION_CONFIRMED",
            "FUNDING_TRANSACTION_FAILED",
            "PACKET_FORWARDED",
            "PAYMENT_CHANNEL_BALANCE_UPDATE",
            "PAYMENT_CHANNEL_OPENED",
            "PAYMENT_CHANNEL_SETTLED",
            "RATE_LIMIT_EXCEEDED",
            "SETTLEMENT_COMPLETED",
            "SETTLEMENT_TRIGGERED",
            "SUSPICIOUS_ACTIVITY_DETECTED",
            "WALLET_BALANCE_MISMATCH",
            "XRP_CHANNEL_CLAIMED",
            "XRP_CHANNEL_CLOSED",
            "XRP_CHANNEL_OPENED",
            # added by the 29-value vocabulary and its union
            "CLAIM_RECEIVED",
            "CLAIM_REDEEMED",
            "CLAIM_SENT",
            "CLAIM_SETTLEMENT_FAILED",
            "CLAIM_SETTLEMENT_INITIATED",
            "CLAIM_SETTLEMENT_SUCCESS",
            "PACKET_FULFILLED",
            "PACKET_REJECTED",
            "PER_HOP_NOTIFICATION",
            # the channel manager's legacy events
            "CHANNEL_CLOSED",
            "CHANNEL_IDLE_DETECTED",
            "CHANNEL_OPENED",
        ]
    )


def test_unknown_and_missing_types(catalog: SchemaCatalog) -> None:
    with pytest.raises(Rejection) as caught:
        catalog.validate({**ex.packet_sent(), "type": "PACKET_TELEPORTED"})
    assert caught.value.reason == "UNKNOWN_TYPE"
    for bad_type in (None, "", 5, ["PACKET_SENT"]):
        with pytest.raises(Rejection) as caught:
            catalog.validate({**ex.packet_sent(), "type": bad_type})
        assert caught.value.reason == "MISSING_TYPE"


# -- the folder is the truth: operators add and edit files


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    target = tmp_path / "schemas"
    shutil.copytree(shipped_schemas_dir(), target)
    return target


def test_operator_adds_a_type_by_adding_a_file(folder: Path) -> None:
    event = {"type": "OPERATOR_AUDIT", "agentId": "agent-001", "newBalance": "2000"}
    with pytest.raises(Rejection) as caught:
        SchemaCatalog.load(folder).validate(event)
    assert caught.value.reason == "UNKNOWN_TYPE"
    (folder / "OPERATOR_AUDIT.json").write_text(
        json.dumps(
            {
                "type": "object",
                "required": ["type", "agentId", "newBalance"],
                "properties": {
                    "type": {"const": "OPERATOR_AUDIT"},
                    "agentId": {"type": "string"},
                    "newBalance": {"$ref": "common/definitions.json#/$defs/decimalString"},
                },
            }
        )
    )
    catalog = SchemaCatalog.load(folder)
    assert catalog.validate(event) == "OPERATOR_AUDIT"
    with pytest.raises(Rejection):
        catalog.validate({**event, "newBalance": "lots"})


def test_operator_removes_a_type_by_removing_its_file(folder: Path) -> None:
    (folder / "LOG.json").unlink()
    catalog = SchemaCatalog.load(folder)
    with pytest.raises(Rejection) as caught:
        catalog.validate(ex.log_event())
    assert caught.value.reason == "UNKNOWN_TYPE"


def test_operator_edits_a_shared_definition(folder: Path) -> None:
    definitions = folder / "common" / "definitions.json"
    document = json.loads(definitions.read_text())
    document["$defs"]["nodeId"]["pattern"] = "^connector-"
    definitions.write_text(json.dumps(document))
    catalog = SchemaCatalog.load(folder)
    catalog.validate(ex.packet_sent("connector-b"))
    with pytest.raises(Rejection):
        catalog.validate(ex.packet_sent("rogue"))


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ("{not json", "not valid JSON"),
        ('{"type": 12}', "not a valid JSON Schema"),
        ('{"properties": {"x": {"minLength": -1}}}', "not a valid JSON Schema"),
        ("[1, 2]", "must be a JSON object"),
        ('{"$ref": "common/nowhere.json#/$defs/x"}', "does not resolve"),
        ('{"$ref": "common/definitions.json#/$defs/noSuchDefinition"}', "does not resolve"),
    ],
)
def test_a_broken_schema_file_is_named_at_load(folder: Path, content: str, complaint: str) -> None:
    (folder / "PACKET_SENT.json").write_text(content)
    with pytest.raises(ConfigurationError) as caught:
        SchemaCatalog.load(folder)
    message = str(caught.value)
    assert "PACKET_SENT.json" in message
    assert complaint in message
    assert "\n" not in message


def test_a_broken_shared_definition_is_named_at_load(folder: Path) -> None:
    (folder / "common" / "definitions.json").write_text("{")
    with pytest.raises(ConfigurationError, match=r"definitions\.json: not valid JSON"):
        SchemaCatalog.load(folder)


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        SchemaCatalog.load(tmp_path / "nope")


def test_an_empty_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="holds no"):
        SchemaCatalog.load(tmp_path)


def test_a_badly_named_type_file_is_refused(folder: Path) -> None:
    (folder / "packet-sent.json").write_text("{}")
    with pytest.raises(ConfigurationError, match=r"packet-sent\.json"):
        SchemaCatalog.load(folder)
