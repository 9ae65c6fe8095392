"""
The wheel is what users install: build it, install it into a fresh virtualenv, and run
C{twistd telemetry} from there, away from the source tree. A packaging mistake (plugin or
schemas left out, a missing dependency) fails here. These are the Dockerfile's steps too;
the last test checks that the Dockerfile still uses the same commands.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest
import websockets

from . import examples as ex
from .process import REPO, HubProcess

BUILD_WHEEL = "python -m build --wheel"
REGENERATE_PLUGIN_CACHE = (
    "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
)
HUB_COMMAND = '["twistd", "-n", "--pidfile=", "telemetry"]'
HEALTHCHECK = '["telemetry-healthcheck"]'


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_virtualenv_and_serves(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, *BUILD_WHEEL.split()[1:], "--outdir", str(dist), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("telemetry_hub-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twisted/plugins/telemetry_plugin.py" in names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    shipped = {
        p.relative_to(REPO / "schemas").as_posix() for p in (REPO / "schemas").rglob("*.json")
    }
    prefix = "telemetry_service/schemas/"
    assert {n.removeprefix(prefix) for n in names if n.startswith(prefix)} == shipped
    page = REPO / "telemetry_service" / "http" / "static"
    modules = [p.relative_to(page).as_posix() for p in (page / "js").glob("*.js")]
    assert "js/main.js" in modules
    for page_file in ("index.html", *modules, "app.css", "vendor/cytoscape-3.35.0.min.js"):
        assert f"telemetry_service/http/static/{page_file}" in names

    venv = tmp_path / "venv"
    bin_dir = venv / "bin"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [
            str(bin_dir / "pip"),
            "install",
            "--quiet",
            "-c",
            str(REPO / "constraints.txt"),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    subprocess.run([str(bin_dir / "python"), "-c", REGENERATE_PLUGIN_CACHE], check=True)
    assert list(venv.glob("lib/python*/site-packages/twisted/plugins/dropin.cache"))

    hub = HubProcess(twistd=str(bin_dir / "twistd"), cwd=tmp_path)
    try:
        starting = hub.wait_for(lambda r: "starting" in r.get("message", "") and "schemas" in r)
        assert starting["schemas"].startswith(str(venv))
        assert starting["count"] == len(list((REPO / "schemas").glob("*.json")))
        port = hub.wait_listening()
        url = f"ws://127.0.0.1:{port}/"
        page = f"http://127.0.0.1:{hub.wait_http()}/"
        with urllib.request.urlopen(page, timeout=5) as response:
            assert b"vendor/cytoscape-3.35.0.min.js" in response.read()
        with urllib.request.urlopen(page + "vendor/cytoscape-3.35.0.min.js", timeout=5) as response:
            assert len(response.read()) > 400_000

        health = subprocess.run(
            [str(bin_dir / "telemetry-healthcheck"), url], capture_output=True, text=True
        )
        assert health.returncode == 0, health.stderr

        async def talk() -> dict[str, object]:
            async with websockets.connect(url) as connector, websockets.connect(url) as dashboard:
                await dashboard.send(json.dumps(ex.CLIENT_CONNECT_BARE))
                await asyncio.sleep(0.2)
                await connector.send(json.dumps(ex.route_lookup(selected_peer=None)))
                message: dict[str, object] = json.loads(await asyncio.wait_for(dashboard.recv(), 5))
                return message

        assert asyncio.run(talk()) == {**ex.route_lookup(selected_peer=None), "seq": 2}
        hub.signal()
        assert hub.wait(timeout=10) == 0
    finally:
        hub.stop()
    health = subprocess.run(
        [str(bin_dir / "telemetry-healthcheck"), url], capture_output=True, text=True
    )
    assert health.returncode == 1
    assert "unhealthy" in health.stderr


def test_dockerfile_uses_the_steps_tested_above() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert BUILD_WHEEL in dockerfile
    assert "pip install --no-cache-dir -c /tmp/dist/constraints.txt /tmp/dist/*.whl" in dockerfile
    assert REGENERATE_PLUGIN_CACHE in dockerfile
    assert f"CMD {HUB_COMMAND}" in dockerfile
    assert f"CMD {HEALTHCHECK}" in dockerfile
    assert "EXPOSE 9000 8080" in dockerfile
    for copied in ("pyproject.toml", "telemetry_service", "twisted", "schemas"):
        assert f"COPY {copied}" in dockerfile
    assert "constraints.txt" in dockerfile.split("COPY pyproject.toml", 1)[1].split("\n")[0]


def test_compose_names_the_service_dashboard_and_mounts_the_schemas() -> None:
    compose = (REPO / "docker-compose.yml").read_text()
    assert "\n  dashboard:\n" in compose
    assert '"9000:9000"' in compose
    assert "./schemas:/etc/telemetry-hub/schemas:ro" in compose
    assert "TELEMETRY_SCHEMAS_DIR: /etc/telemetry-hub/schemas" in compose
