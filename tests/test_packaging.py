"""
The wheel is what users install: build it, install it into a fresh virtualenv, and run
C{twistd telemetry} from there, away from the source tree. A packaging mistake (plugin or
schemas left out, a missing dependency) fails here.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import websockets

from . import examples as ex
from .process import REPO, HubProcess


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_virtualenv_and_serves(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("telemetry_hub-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twisted/plugins/telemetry_plugin.py" in names
    assert "twisted/__init__.py" not in names and "twisted/plugins/__init__.py" not in names
    shipped = {
        p.relative_to(REPO / "schemas").as_posix() for p in (REPO / "schemas").rglob("*.json")
    }
    assert {
        n.removeprefix("telemetry_service/schemas/")
        for n in names
        if n.startswith("telemetry_service/schemas/")
    } == shipped

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)],
        check=True,
        capture_output=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )

    hub = HubProcess(twistd=str(venv / "bin" / "twistd"), cwd=tmp_path)
    try:
        starting = hub.wait_for(lambda r: "starting" in r.get("message", "") and "schemas" in r)
        assert starting["schemas"].startswith(str(venv))
        assert starting["count"] == len([p for p in (REPO / "schemas").glob("*.json")])
        port = hub.wait_listening()

        async def talk() -> dict[str, object]:
            url = f"ws://127.0.0.1:{port}/"
            async with websockets.connect(url) as connector, websockets.connect(url) as dashboard:
                await dashboard.send(json.dumps(ex.CLIENT_CONNECT_BARE))
                await asyncio.sleep(0.2)
                await connector.send(json.dumps(ex.route_lookup(selected_peer=None)))
                message: dict[str, object] = json.loads(await asyncio.wait_for(dashboard.recv(), 5))
                return message

        assert asyncio.run(talk()) == ex.route_lookup(selected_peer=None)
        hub.signal()
        assert hub.wait(timeout=10) == 0
    finally:
        hub.stop()
