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
    # the flat payment-channel types share one definition style; each family is covered
    assert {
        "NODE_STATUS",
        "PACKET_RECEIVED",
        "PACKET_SENT",
        "ROUTE_LOOKUP",
        "LOG",
        "CLIENT_CONNECT",
        "ACCOUNT_BALANCE",
    } <= bad_types


def test_shipped_types(catalog: SchemaCatalog) -> None:
    assert catalog.types == sorted(
        [
            "ACCOUNT_BALANCE",
            "CLIENT_CONNECT",
            "LOG",
            "NODE_STATUS",
            "PACKET_RECEIVED",
            "PACKET_SENT",
            "PAYMENT_CHANNEL_BALANCE_UPDATE",
            "PAYMENT_CHANNEL_OPENED",
            "PAYMENT_CHANNEL_SETTLED",
            "ROUTE_LOOKUP",
            "SETTLEMENT_COMPLETED",
            "SETTLEMENT_TRIGGERED",
            "XRP_CHANNEL_CLAIMED",
            "XRP_CHANNEL_CLOSED",
            "XRP_CHANNEL_OPENED",
        ]
    )


def test_unknown_and_missing_types(catalog: SchemaCatalog) -> None:
    with pytest.raises(Rejection) as caught:
        catalog.validate({**ex.packet_sent(), "type": "PACKET_FORWARDED"})
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
    (folder / "AGENT_BALANCE_CHANGED.json").write_text(
        json.dumps(
            {
                "type": "object",
                "required": ["type", "agentId", "newBalance"],
                "properties": {
                    "type": {"const": "AGENT_BALANCE_CHANGED"},
                    "agentId": {"type": "string"},
                    "newBalance": {"$ref": "common/definitions.json#/$defs/decimalString"},
                },
            }
        )
    )
    catalog = SchemaCatalog.load(folder)
    event = {"type": "AGENT_BALANCE_CHANGED", "agentId": "agent-001", "newBalance": "2000"}
    assert catalog.validate(event) == "AGENT_BALANCE_CHANGED"
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
