"""
telemetry-validate: the hub's own verdicts and error text, offline.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from telemetry_service.config import Settings
from telemetry_service.errors import Rejection
from telemetry_service.intake import Limits
from telemetry_service.schemas import SchemaCatalog, shipped_schemas_dir
from telemetry_service.tools.validate import parse, run, verdicts

from . import examples as ex
from .fakes import FakePeer
from .test_schemas import BAD, GOOD


def validate(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(parse(list(argv)), out, err)
    return code, out.getvalue(), err.getvalue()


def test_it_agrees_with_the_hub_on_every_shipped_example(
    catalog: SchemaCatalog, tmp_path: Path
) -> None:
    folder = str(shipped_schemas_dir())
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps(message) + "\n" for _, message in GOOD))
    code, out, _ = validate(folder, str(good))
    assert code == 0, out
    for number, (_, message) in enumerate(GOOD, 1):
        assert f"{good}:{number}: accepted {message['type']}\n" in out
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(message) + "\n" for _, message, _, _ in BAD))
    code, out, _ = validate(folder, str(bad))
    assert code == 1
    for number, (what, message, _, _) in enumerate(BAD, 1):
        try:
            catalog.validate(message)
        except Rejection as rejection:
            hub_says = f"refused {rejection.reason}: {rejection.detail}"
        assert f"{bad}:{number}: {hub_says}\n" in out, what
    assert f"{len(BAD)} checked, 0 accepted, {len(BAD)} refused" in out


def test_batches_arrays_and_json_lines_are_read_message_by_message(tmp_path: Path) -> None:
    folder = str(shipped_schemas_dir())
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps({"batch": [ex.packet_sent(), {"type": "NOPE"}]}))
    lines = tmp_path / "lines.jsonl"
    lines.write_text(json.dumps(ex.node_status()) + "\n" + json.dumps(ex.route_lookup()) + "\n")
    array = tmp_path / "array.json"
    array.write_text(json.dumps([ex.log_event(), ex.CLIENT_CONNECT_BARE]))
    code, out, _ = validate(folder, str(batch), str(lines), str(array))
    assert code == 1
    assert "batch.json event 1: refused UNKNOWN_TYPE" in out
    assert f"{lines}:2: accepted ROUTE_LOOKUP" in out
    assert f"{array}[1]: accepted CLIENT_CONNECT" in out
    assert "6 checked, 5 accepted, 1 refused" in out


def test_a_broken_folder_is_named_as_the_hub_names_it(tmp_path: Path) -> None:
    folder = tmp_path / "schemas"
    shutil.copytree(shipped_schemas_dir(), folder)
    (folder / "LOG.json").write_text("{broken")
    code, _, err = validate(str(folder))
    assert code == 2
    assert "LOG.json" in err and "not valid JSON" in err


def test_the_command_is_installed_and_exits_non_zero_on_a_refusal(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**ex.node_status(), "data": {"health": "sick"}}))
    tool = str(Path(sys.executable).parent / "telemetry-validate")
    result: Any = subprocess.run(
        [tool, str(shipped_schemas_dir()), str(path)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "refused SCHEMA_VIOLATION" in result.stdout


def _deep(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = {"a": value}
    return value


#: payloads at the edges of what a message may be, one per verdict the hub can give
EDGES: list[tuple[str, bytes]] = [
    ("accepted", json.dumps(ex.packet_sent()).encode()),
    ("not JSON", b"{nope"),
    ("not UTF-8", b'{"type": "\xff"}'),
    ("an array", b"[1, 2]"),
    ("a string", b'"text"'),
    ("too deep", json.dumps({**ex.log_event(), "data": _deep(40)}).encode()),
    ("no type", json.dumps({"nodeId": "connector-a"}).encode()),
    ("unknown type", json.dumps({"type": "NOPE", "nodeId": "connector-a"}).encode()),
    ("schema", json.dumps({**ex.node_status(), "data": {"health": "sick"}}).encode()),
    ("batch not an array", json.dumps({"batch": "no"}).encode()),
    ("batch too long", json.dumps({"batch": [ex.packet_sent()] * 1001}).encode()),
    ("empty batch", json.dumps({"batch": []}).encode()),
    (
        "batch of each",
        json.dumps(
            {
                "batch": [
                    ex.packet_sent(),
                    3,
                    {"type": "NOPE"},
                    {**ex.log_event("connector-b"), "pad": "x" * 70_000},
                    ex.route_lookup(),
                ]
            }
        ).encode(),
    ),
    ("lone and too big", json.dumps({**ex.log_event(), "pad": "x" * 70_000}).encode()),
]


def _hub_says(make_hub: Any, payload: bytes) -> list[tuple[str, int | None]]:
    """Each event's verdict as a connector on its own connection sees it, by index."""
    hub = make_hub()
    peer = FakePeer()
    hub.connection_opened(peer)
    hub.message_received(peer, payload)
    if peer.closed is not None:
        return [(f"close {peer.closed[0]}", None)]
    errors = [m for m in peer.messages if m.get("type") == "ERROR"]
    whole = [(m["reason"], None) for m in errors if "index" not in m]
    if whole:
        return whole
    try:
        batch = json.loads(payload).get("batch")
    except ValueError:
        batch = None
    if not isinstance(batch, list):
        return [("accepted", None)] if hub.stats.accepted else []
    refused = {m["index"]: m["reason"] for m in errors}
    said = [(refused.get(index, "accepted"), index) for index in range(len(batch))]
    assert hub.stats.accepted == sum(verdict == "accepted" for verdict, _ in said)
    return said


def _validate_says(catalog: SchemaCatalog, payload: bytes) -> list[tuple[str, int | None]]:
    said = []
    for verdict in verdicts(catalog, payload, Limits.of(Settings())):
        if verdict.get("ok"):
            said.append(("accepted", verdict.get("index")))
        elif "close" in verdict:
            said.append((f"close {verdict['close']}", None))
        else:
            said.append((verdict["reason"], verdict.get("index")))
    return said


@pytest.mark.parametrize(("what", "payload"), EDGES, ids=[what for what, _ in EDGES])
def test_it_reads_a_payload_as_the_hub_does(
    make_hub: Any, catalog: SchemaCatalog, what: str, payload: bytes
) -> None:
    """
    The hub and telemetry-validate read a payload with one intake: the same verdict for
    every event, the hub's close (1009) included.
    """
    assert _validate_says(catalog, payload) == _hub_says(make_hub, payload)
