"""
Restarts that refuse no connection. The real connector exits when its one reconnect, a
second after its socket dropped, is refused; so the hub's listening sockets must outlive
any one process of it: across an in-place restart (SIGUSR2: the same PID, the sockets
handed over), and under systemd's socket activation (systemd holds them; played here by
tests/socket_activation.py, configured from the shipped units) through C{kill -9}, clean
exits and SIGUSR2.

Connectors here behave like the real one: NODE_STATUS once, never again; on a lost
connection one reconnect after a second, and if that is refused they exit for good.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from telemetry_service import __version__

from . import examples as ex
from .process import REPO, HubProcess, twistd_path
from .services import RedisServer
from .test_cluster import contiguous
from .test_rolling_restart import Connector, ResumingDashboard
from .test_twistd import _self_signed

pytestmark = pytest.mark.slow

UNITS = REPO / "contrib" / "systemd"
#: the real connector's pace in the issue's scenario
CONNECTOR_INTERVAL = 0.1


def restarted(record: dict[str, Any]) -> bool:
    return str(record.get("message", "")).startswith("Restarted in place")


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.02)


async def count_refusals(port: int, stop: asyncio.Event, failed: list[str]) -> None:
    """
    Open a TCP connection every 10 ms until C{stop}; note every one that fails. (A
    process killed with -9 resets what it had accepted: a connection can fail so only
    when that is the test, and is then never refused: C{refusals}.)
    """
    while not stop.is_set():
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
        except OSError as e:
            failed.append(repr(e))
        await asyncio.sleep(0.01)


def refusals(failed: list[str]) -> list[str]:
    return [f for f in failed if "ConnectionRefusedError" in f]


def last_seq(http_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith("telemetry_last_seq "):
                return int(float(line.split()[1]))
    raise AssertionError("no telemetry_last_seq in /metrics")


class Load:
    """
    Connectors like the real one and dashboards that resume, on one address.
    """

    def __init__(self, address: str, connectors: int = 3, dashboards: int = 5) -> None:
        self.connectors = [
            Connector(address, f"connector-{i}", CONNECTOR_INTERVAL) for i in range(connectors)
        ]
        self.dashboards = [ResumingDashboard(address) for _ in range(dashboards)]
        self._stop_sending = asyncio.Event()
        self._stop_reading = asyncio.Event()
        self._tasks: list[asyncio.Future[None]] = []
        self._readers: list[asyncio.Future[None]] = []

    async def start(self) -> None:
        # dashboards first: they see every message from the first one on
        for dashboard in self.dashboards:
            await dashboard.connect()
        self._readers = [asyncio.ensure_future(d.run(self._stop_reading)) for d in self.dashboards]
        self._tasks = [asyncio.ensure_future(c.run(self._stop_sending)) for c in self.connectors]
        await until(lambda: all(c.sent >= 3 for c in self.connectors), 15, "connectors sending")

    async def moved(self, times: int) -> None:
        """Every connector reconnected and every dashboard resumed C{times} times."""
        await until(
            lambda: all(c.reconnects >= times or c.exited for c in self.connectors),
            20,
            f"connectors reconnected {times} times: {[c.reconnects for c in self.connectors]}",
        )
        await until(
            lambda: all(len(d.resumes) >= times + 1 for d in self.dashboards),
            20,
            f"dashboards resumed {times} times",
        )
        # and the next messages flow before anything else happens
        sent = [c.sent for c in self.connectors]
        await until(
            lambda: all(c.sent > s + 1 for c, s in zip(self.connectors, sent, strict=True)),
            10,
            "connectors sending again",
        )

    async def finish(self, last_seq: Callable[[], int]) -> None:
        """
        Stop sending; wait until every dashboard has the hub's last message (on a shared
        bus the last presence events are numbered a moment after the connectors leave: the
        last seq is read again until it holds still).
        """
        self._stop_sending.set()
        await asyncio.gather(*self._tasks)
        deadline = time.monotonic() + 15
        while True:
            last = await asyncio.to_thread(last_seq)
            await until(
                lambda last=last: all(
                    d.live and d.live[-1]["seq"] >= last for d in self.dashboards
                ),
                max(0.1, deadline - time.monotonic()),
                f"dashboards at seq {last}: at "
                f"{[(d.live[-1]['seq'] if d.live else None, d.resumes) for d in self.dashboards]}",
            )
            seqs = {d.live[-1]["seq"] for d in self.dashboards}
            if seqs == {last} and await asyncio.to_thread(last_seq) == last:
                break
        self._stop_reading.set()
        await asyncio.gather(*self._readers)

    def check(self, moves: int) -> None:
        """
        No connector lost, every dashboard resumed every time and saw one unbroken,
        identical sequence, every connector's messages in the order sent and none twice.
        """
        assert [c.exited for c in self.connectors] == [None] * len(self.connectors)
        assert [c.reconnects for c in self.connectors] == [moves] * len(self.connectors)
        for dashboard in self.dashboards:
            statuses = [r["status"] for r in dashboard.resumes]
            assert statuses == ["fresh"] + ["resumed"] * moves, statuses
            assert contiguous(dashboard.live)
        first = self.dashboards[0].live
        assert all(d.live == first for d in self.dashboards)
        for connector in self.connectors:
            ids = [
                m["data"]["packetId"]
                for m in first
                if m["type"] == "PACKET_SENT" and m["nodeId"] == connector.node
            ]
            assert len(ids) == len(set(ids)), f"{connector.node}: a message twice"
            order = {ex.packet_id(n): n for n in range(connector.sent)}
            numbers = [order[i] for i in ids]
            assert numbers == sorted(numbers), f"{connector.node}: out of order"
            # lost: only what was written as the connection was being closed
            assert connector.sent - len(ids) <= 2 * moves + 2, (connector.node, connector.sent)


@pytest.fixture
def hubs() -> Iterator[list[HubProcess]]:
    started: list[HubProcess] = []
    yield started
    for hub in started:
        hub.stop()


def test_sigusr2_restarts_in_place_under_load_twenty_times_losing_nothing(
    hubs: list[HubProcess],
) -> None:
    """
    Twenty restarts while three connectors send 10 messages/s each and five dashboards
    read: the same process throughout, no connection attempt refused at any moment, every
    connector still there, every dashboard resumed each time and missing nothing.
    """
    hub = HubProcess()
    hubs.append(hub)
    port, http_port = hub.wait_listening(), hub.wait_http()
    restarts = 20

    async def scenario() -> list[str]:
        load = Load(f"ws://127.0.0.1:{port}/")
        await load.start()
        stop_probe, refused = asyncio.Event(), []
        probe = asyncio.ensure_future(count_refusals(port, stop_probe, refused))
        for n in range(1, restarts + 1):
            hub.signal(signal.SIGUSR2)
            await asyncio.to_thread(hub.wait_for, _nth(restarted, hub, n), 30)
            await load.moved(n)
        stop_probe.set()
        await probe
        await load.finish(lambda: last_seq(http_port))
        load.check(restarts)
        return refused

    refused = asyncio.run(scenario())
    assert refused == []
    assert hub.process.poll() is None, "the hub is the same process it was"
    said = [r for r in hub.records if restarted(r)]
    assert len(said) == restarts
    assert all(r["before"] == r["after"] == __version__ for r in said)
    assert all(0 < r["paused_ms"] < 10_000 for r in said)
    hub.signal(signal.SIGTERM)
    assert hub.wait(15) == 0


def _nth(
    predicate: Callable[[dict[str, Any]], bool], hub: HubProcess, n: int
) -> Callable[[dict[str, Any]], bool]:
    """Matches once C{n} records of the hub's log match C{predicate}."""
    return lambda record: predicate(record) and sum(map(predicate, hub.records)) >= n


def test_on_redis_a_restart_in_place_hands_over_and_dashboards_resume(
    hubs: list[HubProcess],
) -> None:
    """With several hubs as one, a hub restarts in place the same way: nothing lost."""
    redis = RedisServer()
    try:
        hub = HubProcess("--redis", redis.url)
        hubs.append(hub)
        port, http_port = hub.wait_listening(), hub.wait_http()
        hub.wait_for(lambda r: "Redis bus: connected" in r.get("message", ""))

        async def scenario() -> None:
            load = Load(f"ws://127.0.0.1:{port}/", connectors=2, dashboards=2)
            await load.start()
            hub.signal(signal.SIGUSR2)
            await asyncio.to_thread(hub.wait_for, restarted, 30)
            await load.moved(1)
            await load.finish(lambda: last_seq(http_port))
            load.check(1)

        asyncio.run(scenario())
    finally:
        for started in hubs:
            started.stop()
        redis.stop()


def test_a_restart_is_refused_while_the_schema_folder_is_broken_and_the_hub_serves_on(
    hubs: list[HubProcess], tmp_path: Path
) -> None:
    schemas = tmp_path / "schemas"
    shutil.copytree(REPO / "schemas", schemas)
    hub = HubProcess("--schemas", str(schemas))
    hubs.append(hub)
    port = hub.wait_listening()
    good = (schemas / "PACKET_SENT.json").read_text()
    (schemas / "PACKET_SENT.json").write_text("{oops")

    async def scenario() -> None:
        async with (
            websockets.connect(f"ws://127.0.0.1:{port}/") as dashboard,
            websockets.connect(f"ws://127.0.0.1:{port}/") as connector,
        ):
            await dashboard.send(json.dumps({"type": "CLIENT_CONNECT", "resume": {}}))
            assert json.loads(await asyncio.wait_for(dashboard.recv(), 5))["type"] == "RESUME"
            await connector.send(json.dumps(ex.node_status("connector-a")))
            assert json.loads(await asyncio.wait_for(dashboard.recv(), 5))["type"] == "NODE_STATUS"
            hub.signal(signal.SIGUSR2)
            refusal = await asyncio.to_thread(
                hub.wait_for, lambda r: "Restart refused" in r.get("message", ""), 30
            )
            assert "PACKET_SENT.json: not valid JSON" in refusal["message"]
            assert refusal["level"] == "error"
            # nothing was let go: both connections are open, and traffic flows
            await connector.send(json.dumps(ex.packet_sent("connector-a")))
            relayed = json.loads(await asyncio.wait_for(dashboard.recv(), 5))
            assert relayed["type"] == "PACKET_SENT"

    asyncio.run(scenario())
    (schemas / "PACKET_SENT.json").write_text(good)
    hub.signal(signal.SIGUSR2)
    done = hub.wait_for(restarted, 30)
    assert done["before"] == done["after"]
    assert hub.process.poll() is None


def test_a_restart_takes_the_code_on_disk_and_refuses_code_that_does_not_import(
    hubs: list[HubProcess], tmp_path: Path
) -> None:
    """
    The hub runs from a copy of the package; an upgrade that breaks a module is refused
    (the hub serves on, and says which module), the fixed upgrade is taken: the log gives
    the version before and after.
    """
    # a checkout of its own: the package, and the schema folder it ships beside it
    shutil.copytree(REPO / "telemetry_service", tmp_path / "telemetry_service")
    shutil.copytree(REPO / "schemas", tmp_path / "schemas")
    hub = HubProcess(env={"PYTHONPATH": str(tmp_path)})
    hubs.append(hub)
    port = hub.wait_listening()
    hub_module = tmp_path / "telemetry_service" / "hub.py"
    original = hub_module.read_text()
    hub_module.write_text(original + "\ndef broken(:\n")
    hub.signal(signal.SIGUSR2)
    refusal = hub.wait_for(lambda r: "Restart refused" in r.get("message", ""), 30)
    assert "SyntaxError" in refusal["reason"] and "hub.py" in refusal["reason"]

    hub_module.write_text(original)
    version_file = tmp_path / "telemetry_service" / "__init__.py"
    version_file.write_text(
        version_file.read_text().replace(f'"{__version__}"', f'"{__version__}+upgraded"')
    )

    async def restart_with_a_dashboard() -> Any:
        async with websockets.connect(f"ws://127.0.0.1:{port}/") as dashboard:
            await dashboard.send(json.dumps({"type": "CLIENT_CONNECT", "resume": {}}))
            assert json.loads(await asyncio.wait_for(dashboard.recv(), 5))["type"] == "RESUME"
            hub.signal(signal.SIGUSR2)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(dashboard.recv(), 30)
            return closed.value.rcvd

    close = asyncio.run(restart_with_a_dashboard())
    assert (close.code, close.reason) == (1012, "hub restarting")
    done = hub.wait_for(restarted, 30)
    assert (done["before"], done["after"]) == (__version__, f"{__version__}+upgraded")
    message = asyncio.run(_relay(port))
    assert message["type"] == "PACKET_SENT"


async def _relay(port: int, connect: Any = None) -> dict[str, Any]:
    """A connector and a dashboard: what the dashboard receives of the connector."""
    connect = connect or (lambda: websockets.connect(f"ws://127.0.0.1:{port}/"))
    async with connect() as dashboard, connect() as connector:
        await dashboard.send(json.dumps(ex.CLIENT_CONNECT_BARE))
        await connector.send(json.dumps(ex.packet_sent("connector-t")))
        while True:
            message: dict[str, Any] = json.loads(await asyncio.wait_for(dashboard.recv(), 10))
            if message["type"] == "PACKET_SENT":
                return message


@pytest.mark.parametrize("kind", ["unix", "ssl", "haproxy"])
def test_a_restart_keeps_what_the_endpoint_layers_over_its_socket(
    hubs: list[HubProcess], tmp_path: Path, kind: str
) -> None:
    """UNIX sockets, TLS and the PROXY protocol are served as before after a restart."""
    if kind == "unix":
        path = tmp_path / "hub.sock"
        port_option = f"unix:{path}"

        def connect() -> Any:
            return websockets.unix_connect(str(path), uri="ws://localhost/")

    elif kind == "ssl":
        key, cert = _self_signed(tmp_path)
        port_option = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False

        def connect() -> Any:
            return websockets.connect(f"wss://127.0.0.1:{port}/", ssl=context)

    else:
        port_option = "haproxy:tcp:0:interface=127.0.0.1"

        def connect() -> Any:
            return _proxied(port)

    hub = HubProcess(port=port_option)
    hubs.append(hub)
    record = hub.wait_for(lambda r: "WebSocket server listening" in r.get("message", ""))
    port = record.get("port") or 0
    assert asyncio.run(_relay(port, connect))["type"] == "PACKET_SENT"
    hub.signal(signal.SIGUSR2)
    hub.wait_for(restarted, 30)
    assert asyncio.run(_relay(port, connect))["type"] == "PACKET_SENT"
    if kind == "haproxy":
        # the hub still reads the client's address from the PROXY header
        assert any("203.0.113.7" in str(r.get("peer", "")) for r in hub.records[-20:]), hub.records[
            -5:
        ]


def _proxied(port: int) -> Any:
    """A WebSocket over a connection that starts with a PROXY protocol v1 header."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"PROXY TCP4 203.0.113.7 127.0.0.1 50000 9000\r\n")
    return websockets.connect("ws://127.0.0.1/", sock=sock)


def test_with_twistd_s_own_pidfile_the_restart_keeps_it(tmp_path: Path) -> None:
    """
    twistd writes twistd.pid unless told not to, and refuses to start where it names a
    live process: after the restart it names this same process, and still does.
    """
    argv = [twistd_path(), "-n", "telemetry", "--port", "tcp:0:interface=127.0.0.1"]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_")}
    environ.update(TELEMETRY_STATE_DIR=str(tmp_path / "state"), LOG_FORMAT="json")
    environ["TELEMETRY_HTTP_PORT"] = "off"
    with subprocess.Popen(
        argv, cwd=tmp_path, env=environ, stdout=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stdout is not None
            lines = iter(process.stdout)
            _wait_line(lines, "WebSocket server listening")
            pidfile = tmp_path / "twistd.pid"
            assert pidfile.read_text().strip() == str(process.pid)
            process.send_signal(signal.SIGUSR2)
            _wait_line(lines, "Restarted in place")
            assert process.poll() is None
            assert pidfile.read_text().strip() == str(process.pid)
        finally:
            process.terminate()
            process.wait(15)


def _wait_line(lines: Iterator[str], fragment: str) -> dict[str, Any]:
    for line in lines:
        if fragment in line:
            record: dict[str, Any] = json.loads(line)
            return record
    raise AssertionError(f"the hub ended without saying {fragment!r}")


# -- socket activation, as the shipped units set it up


def unit_file(name: str) -> dict[str, list[str]]:
    """A systemd unit's settings, C{Section.Key} to its values in order."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in (UNITS / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, value = line.split("=", 1)
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def seconds(value: str) -> float:
    return float(value[:-2]) / 1000 if value.endswith("ms") else float(value.rstrip("s"))


class ActivatedHub:
    """
    The hub under tests/socket_activation.py, set up as the shipped units say: its
    sockets with their names and backlog (on free loopback ports instead of 9000 and
    8080), its command and environment (the state folder in C{folder}), Restart=always.
    """

    def __init__(self, folder: Path) -> None:
        service = unit_file("telemetry-hub.service")
        assert service["Service.Restart"] == ["always"]
        sockets = [unit_file(name) for name in service["Service.Sockets"][0].split()]
        command = shlex.split(service["Service.ExecStart"][0])
        assert command[0] == "/opt/telemetry-hub/bin/twistd"
        command[0] = twistd_path()
        self.reload_command = shlex.split(service["Service.ExecReload"][0])
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("TELEMETRY_", "LOG_"))}
        for setting in service["Service.Environment"]:
            key, value = setting.split("=", 1)
            environ[key] = value
        environ["TELEMETRY_STATE_DIR"] = str(folder / "state")
        self.log = folder / "hub.log"
        self.log.touch()
        argv = [sys.executable, str(Path(__file__).parent / "socket_activation.py")]
        for socket_unit in sockets:
            name = socket_unit["Socket.FileDescriptorName"][0]
            argv += ["--listen", f"{name}=127.0.0.1:0"]
        argv += ["--backlog", sockets[0]["Socket.Backlog"][0]]
        argv += ["--restart-sec", str(seconds(service["Service.RestartSec"][0]))]
        argv += ["--log", str(self.log), "--", *command]
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, text=True, env=environ, cwd=str(folder)
        )
        self.events: list[dict[str, Any]] = []
        self.ports = {}
        while len(self.ports) < len(sockets):
            event = self.next_event()
            self.ports[event["name"]] = event["port"]
        self.pid = self.next_event("started")["pid"]
        self._read = 0
        self.records: list[dict[str, Any]] = []

    def next_event(self, kind: str | None = None) -> dict[str, Any]:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            event: dict[str, Any] = json.loads(line)
            self.events.append(event)
            if kind is None or event["event"] == kind:
                return event
        raise AssertionError(f"socket activation ended: {self.events}")

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with self.log.open() as log:
                log.seek(self._read)
                for line in log:
                    if not line.endswith("\n"):
                        break
                    self._read += len(line.encode())
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    self.records.append(record)
                    if predicate(record):
                        return
            assert time.monotonic() < deadline, f"not in the log: {self.records[-5:]}"
            time.sleep(0.05)

    def serving(self) -> None:
        """The current hub serves both sockets."""
        for _ in range(2):
            self.wait_for(lambda r: "an inherited socket" in r.get("message", ""))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        assert self.process.stdout is not None
        self.events += [json.loads(line) for line in self.process.stdout]


def test_the_units_pass_systemd_s_own_check(tmp_path: Path) -> None:
    verify = shutil.which("systemd-analyze")
    if verify is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing (apt-get install systemd; .ci/run does)")
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    for unit in UNITS.iterdir():
        text = unit.read_text().replace("/opt/telemetry-hub/bin/twistd", twistd_path())
        (tmp_path / unit.name).write_text(text)
    done = subprocess.run(
        [verify, "verify", *sorted(str(p) for p in tmp_path.iterdir())],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_under_socket_activation_connectors_survive_kill_9_clean_exits_and_sigusr2(
    tmp_path: Path,
) -> None:
    """
    With systemd holding the sockets: three kill -9, a clean exit (SIGTERM, exit 0) and
    an in-place restart, under load. No connector lost, every dashboard resumed each time
    and saw one unbroken sequence; reload (the unit's ExecReload) reloads.
    """
    hub = ActivatedHub(tmp_path)
    try:
        hub.serving()
        port = hub.ports["websocket"]

        async def scenario() -> list[str]:
            load = Load(f"ws://127.0.0.1:{port}/")
            await load.start()
            stop_probe, refused = asyncio.Event(), []
            probe = asyncio.ensure_future(count_refusals(port, stop_probe, refused))
            moves = 0
            for how in (signal.SIGKILL, signal.SIGKILL, signal.SIGTERM, signal.SIGKILL):
                os.kill(hub.pid, how)
                exited = await asyncio.to_thread(hub.next_event, "exited")
                assert exited["code"] == (0 if how == signal.SIGTERM else -how)
                hub.pid = (await asyncio.to_thread(hub.next_event, "started"))["pid"]
                await asyncio.to_thread(hub.serving)
                moves += 1
                await load.moved(moves)
            os.kill(hub.pid, signal.SIGUSR2)
            await asyncio.to_thread(hub.wait_for, restarted)
            moves += 1
            await load.moved(moves)
            subprocess.run(
                [part.replace("$MAINPID", str(hub.pid)) for part in hub.reload_command],
                check=True,
            )
            await asyncio.to_thread(hub.wait_for, lambda r: "Reloaded" in r.get("message", ""))
            stop_probe.set()
            await probe
            http_port = hub.ports["http"]
            await load.finish(lambda: last_seq(http_port))
            load.check(moves)
            return refused

        assert refusals(asyncio.run(scenario())) == []
        # the in-place restart kept the PID systemd knows as the service's
        assert [e["event"] for e in hub.events].count("started") == 5
    finally:
        hub.stop()
    assert hub.events[-1]["event"] == "stopped"
    assert hub.events[-2] == {"event": "exited", "pid": hub.pid, "code": 0}
