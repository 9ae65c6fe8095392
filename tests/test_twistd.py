"""
The real C{twistd telemetry} process: discovery, options, start-up failures, and a full
run talked to with the C{websockets} library (not Autobahn), ended by a signal.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins

from telemetry_service.options import OPTIONS
from telemetry_service.schemas import shipped_schemas_dir

from . import examples as ex
from .process import HubProcess, run_to_exit, twistd_path


@pytest.fixture
def hubs() -> Iterator[list[HubProcess]]:
    started: list[HubProcess] = []
    yield started
    for hub in started:
        hub.stop()


def test_plugin_is_discoverable() -> None:
    makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
    assert "telemetry" in makers
    assert makers["telemetry"].module == "telemetry_service.tap"


def test_help_names_every_option_with_its_environment_variable_and_default() -> None:
    result = run_to_exit([twistd_path(), "telemetry", "--help"])
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for option in OPTIONS:
        assert f"--{option.name}=" in text
        assert f"env {option.env}; default {option.default}" in text


def hub_argv(*args: str) -> list[str]:
    """twistd in the foreground, no pid file, the telemetry plugin with these options."""
    return [twistd_path(), "-n", "--pidfile=", "telemetry", *args]


def _assert_one_clear_line(result: Any, *fragments: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("telemetry: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_port_taken_ends_at_once_naming_the_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = run_to_exit(hub_argv("--port", f"tcp:{port}:interface=127.0.0.1"))
        assert time.monotonic() - started < 15
        _assert_one_clear_line(result, "cannot listen", str(port), "in use")
        # the page's port too
        result = run_to_exit(
            hub_argv("--port", "tcp:0", "--http-port", f"tcp:{port}:interface=127.0.0.1")
        )
        _assert_one_clear_line(result, "cannot listen", str(port), "in use")


def test_missing_schema_folder_ends_at_once_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    result = run_to_exit(hub_argv("--schemas", str(missing)))
    _assert_one_clear_line(result, str(missing), "does not exist")


@pytest.mark.parametrize(
    ("content", "complaint"),
    [("{oops", "not valid JSON"), ('{"type": "banana"}', "not a valid JSON Schema")],
)
def test_broken_schema_file_ends_at_once_naming_it(
    tmp_path: Path, content: str, complaint: str
) -> None:
    folder = tmp_path / "schemas"
    shutil.copytree(shipped_schemas_dir(), folder)
    (folder / "ROUTE_LOOKUP.json").write_text(content)
    result = run_to_exit(
        hub_argv("--port", "tcp:0", "--schemas", str(folder)),
        env={},
    )
    _assert_one_clear_line(result, "ROUTE_LOOKUP.json", complaint)


def test_bad_endpoint_ends_at_once_naming_it() -> None:
    result = run_to_exit(hub_argv("--port", "carrier-pigeon:9"))
    _assert_one_clear_line(result, "carrier-pigeon:9")


def test_bad_environment_value_is_named() -> None:
    result = run_to_exit(hub_argv(), env={"TELEMETRY_MAX_NODES": "lots"})
    assert result.returncode != 0
    assert "TELEMETRY_MAX_NODES" in result.stdout + result.stderr


def test_environment_chooses_port_and_log_level(hubs: list[HubProcess]) -> None:
    hub = HubProcess(
        port=None, env={"TELEMETRY_WS_PORT": "tcp:0:interface=127.0.0.1", "LOG_LEVEL": "debug"}
    )
    hubs.append(hub)
    port = hub.wait_listening()

    async def talk() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{port}/") as connector:
            await connector.send(json.dumps(ex.packet_sent()))
            await asyncio.sleep(0.2)

    asyncio.run(talk())
    record = hub.wait_for(
        lambda r: r["level"] == "debug" and "Broadcasting" in r["message"] and r["seq"] == 2
    )
    assert record["type"] == "PACKET_SENT"
    assert record["nodeId"] == "connector-b"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_full_run_with_websockets_client_then_signal_closes_1001_and_exits_0(
    hubs: list[HubProcess], sig: int
) -> None:
    hub = HubProcess()
    hubs.append(hub)
    port = hub.wait_listening()
    url = f"ws://127.0.0.1:{port}/"
    outcome: dict[str, Any] = {}

    async def scenario() -> None:
        async with websockets.connect(url) as connector:
            await connector.send(json.dumps(ex.node_status("connector-a")))
            await asyncio.sleep(0.2)
            async with websockets.connect(url) as dashboard:
                await dashboard.send(json.dumps(ex.CLIENT_CONNECT_DASHBOARD))
                outcome["replay"] = json.loads(await asyncio.wait_for(dashboard.recv(), 5))
                await connector.send(json.dumps(ex.packet_received("connector-a")))
                outcome["live"] = json.loads(await asyncio.wait_for(dashboard.recv(), 5))
                outcome["seqs"] = [outcome["replay"]["seq"], outcome["live"]["seq"]]
                await connector.send("{nope")
                outcome["error"] = json.loads(await asyncio.wait_for(connector.recv(), 5))
                started = time.monotonic()
                hub.signal(sig)
                outcome["codes"] = [await close_code(c) for c in (connector, dashboard)]
                outcome["close_seconds"] = time.monotonic() - started

    async def close_code(conn: Any) -> int | None:
        try:
            await asyncio.wait_for(conn.recv(), 5)
        except websockets.ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
        return None

    asyncio.run(scenario())
    started = time.monotonic()
    assert hub.wait(timeout=10) == 0
    assert outcome["close_seconds"] + (time.monotonic() - started) < 5
    # seq 1 is the hub's NODE_PRESENCE for connector-a; the replay says it is online
    assert outcome["seqs"] == [2, 3]
    assert outcome["replay"] == {**ex.node_status("connector-a"), "seq": 2, "online": True}
    assert outcome["live"] == {**ex.packet_received("connector-a"), "seq": 3}
    assert outcome["error"]["reason"] == "INVALID_JSON"
    assert outcome["codes"] == [1001, 1001]
    hub.drain()
    messages = hub.messages()
    assert any("Connector registered: connector-a" in m for m in messages)
    assert any("Dashboard client connected" in m for m in messages)
    warning = hub.wait_for(lambda r: r.get("reason") == "INVALID_JSON")
    assert warning["level"] == "warn"
    assert warning["nodeId"] == "connector-a"


def _self_signed(folder: Path) -> tuple[Path, Path]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_file, cert_file = folder / "key.pem", folder / "cert.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_file, cert_file


async def _relay(connect: Any) -> dict[str, Any]:
    """A connector and a dashboard over the given transport: what the dashboard receives."""
    async with connect() as dashboard, connect() as connector:
        await dashboard.send(json.dumps(ex.CLIENT_CONNECT_BARE))
        await asyncio.sleep(0.2)
        await connector.send(json.dumps(ex.packet_sent("connector-t")))
        while True:
            message: dict[str, Any] = json.loads(await asyncio.wait_for(dashboard.recv(), 5))
            if message["type"] == "PACKET_SENT":
                return message


def test_tls_endpoint(hubs: list[HubProcess], tmp_path: Path) -> None:
    import ssl

    key, cert = _self_signed(tmp_path)
    hub = HubProcess(port=f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}")
    hubs.append(hub)
    port = hub.wait_listening()
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    message = asyncio.run(
        _relay(lambda: websockets.connect(f"wss://127.0.0.1:{port}/", ssl=context))
    )
    assert message == {**ex.packet_sent("connector-t"), "seq": 2}


def test_unix_socket_endpoint(hubs: list[HubProcess], tmp_path: Path) -> None:
    path = tmp_path / "hub.sock"
    hub = HubProcess(port=f"unix:{path}")
    hubs.append(hub)
    hub.wait_for(lambda r: "WebSocket server listening" in r.get("message", ""))
    message = asyncio.run(_relay(lambda: websockets.unix_connect(str(path), uri="ws://localhost/")))
    assert message == {**ex.packet_sent("connector-t"), "seq": 2}


def test_sighup_reloads_the_schema_folder_and_keeps_the_old_one_if_broken(
    hubs: list[HubProcess], tmp_path: Path
) -> None:
    folder = tmp_path / "schemas"
    shutil.copytree(shipped_schemas_dir(), folder)
    hub = HubProcess("--schemas", str(folder))
    hubs.append(hub)
    port = hub.wait_listening()
    url = f"ws://127.0.0.1:{port}/"
    agent_event = {"type": "OPERATOR_AUDIT", "agentId": "agent-001", "newBalance": "2000"}

    async def reply_to(message: dict[str, Any]) -> Any:
        async with websockets.connect(url) as sender:
            await sender.send(json.dumps(message))
            try:
                return json.loads(await asyncio.wait_for(sender.recv(), 1))
            except TimeoutError:
                return None  # accepted: a connector is sent nothing

    assert asyncio.run(reply_to(agent_event))["reason"] == "UNKNOWN_TYPE"
    (folder / "OPERATOR_AUDIT.json").write_text(
        json.dumps(
            {
                "type": "object",
                "required": ["type", "agentId"],
                "properties": {"type": {"const": "OPERATOR_AUDIT"}},
            }
        )
    )
    hub.signal(signal.SIGHUP)
    reloaded = hub.wait_for(lambda r: "Reloaded" in r.get("message", ""))
    assert reloaded["added"] == ["OPERATOR_AUDIT"]
    assert asyncio.run(reply_to(agent_event)) is None

    (folder / "LOG.json").write_text("{broken")
    hub.signal(signal.SIGHUP)
    failed = hub.wait_for(lambda r: "Schema reload failed" in r.get("message", ""))
    assert failed["level"] == "error"
    assert "LOG.json" in failed["error"]
    assert asyncio.run(reply_to(agent_event)) is None  # still the last good folder
    assert hub.process.poll() is None


def test_twist_runs_the_hub_too(tmp_path: Path) -> None:
    """The hub is an ordinary Twisted plugin: twist runs it like twistd."""
    import os
    import re
    import subprocess
    import sys

    twist = str(Path(sys.executable).parent / "twist")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_")}
    environment["TELEMETRY_STATE_DIR"] = str(tmp_path / "state")
    process = subprocess.Popen(
        [
            twist,
            "--log-format=text",
            "telemetry",
            "--port",
            "tcp:0:interface=127.0.0.1",
            "--http-port",
            "off",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=environment,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = None
        deadline = time.monotonic() + 15
        while port is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            found = re.search(r"WebSocket server listening on [\d.]+:(\d+)", line)
            port = int(found.group(1)) if found else None
        assert port is not None, "twist did not say where it listens"
        message = asyncio.run(_relay(lambda: websockets.connect(f"ws://127.0.0.1:{port}/")))
        assert message == {**ex.packet_sent("connector-t"), "seq": 2}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
