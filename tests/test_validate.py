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

from telemetry_service.errors import Rejection
from telemetry_service.schemas import SchemaCatalog, shipped_schemas_dir
from telemetry_service.tools.validate import parse, run

from . import examples as ex
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
