"""
How quickly the hub starts, stops and restarts in place, measured from outside as a client
sees it, on loopback. Prints one line per run and then medians:

- start: from exec to listening (a TCP connect succeeds), with an empty state folder;
- replay: from exec to a dashboard's first replayed NODE_STATUS and to its last, with a
  state folder holding a 100,000-message history and 10,000 cached nodes;
- stop: from SIGTERM to exit, with 100 dashboards and 10 connectors connected;
- restart (--restart): from SIGUSR2 to serving again, with the same load: the longest a
  WebSocket handshake waited for an answer, and the hub's own "not serving" figure.

The 110 clients are Node's ws, the real clients' library, when --ws names a folder whose
node_modules holds it (the shared harness's, after its setup.sh); else Python's websockets,
which answers a close more slowly (one in ten connectors sometimes not within 250 ms).

    .venv/bin/python benchmarks/startup.py --reps 5 --restart --ws "$B"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import websockets
from processes import free_port  # benchmarks/processes.py

REPO = Path(__file__).resolve().parent.parent
TWISTD = str(Path(sys.executable).parent / "twistd")
TS = "2026-12-04T10:00:00.000Z"
HISTORY_BYTES = 64 * 1024 * 1024


def node_status(node_id: str) -> dict[str, Any]:
    return {
        "type": "NODE_STATUS",
        "nodeId": node_id,
        "timestamp": TS,
        "data": {
            "routes": [{"prefix": f"g.{node_id}", "nextHop": node_id, "priority": 0}],
            "peers": [{"id": "connector-0", "url": "ws://connector-0:3000", "connected": True}],
            "health": "healthy",
            "uptime": 3600,
            "peersConnected": 1,
            "totalPeers": 1,
        },
    }


def packet_sent(node_id: str, n: int) -> dict[str, Any]:
    return {
        "type": "PACKET_SENT",
        "nodeId": node_id,
        "timestamp": TS,
        "data": {"packetId": f"{n:064x}", "nextHop": "connector-0", "timestamp": TS},
    }


def build_state(folder: Path, messages: int, nodes: int) -> None:
    """
    Write a state folder as a hub would leave it after a clean stop: C{messages} in the
    history, the first C{nodes} of them NODE_STATUS of as many nodes.
    """
    code = f"""
import orjson
from pathlib import Path
from twisted.internet import reactor
from telemetry_service.history.sqlite import SqliteStore
from telemetry_service.history.memory import StoredMessage
import startup

def fill():
    store = SqliteStore(Path({str(folder)!r}), {messages}, {HISTORY_BYTES}, reactor)
    for seq in range(1, {messages} + 1):
        if seq <= {nodes}:
            node, message = f"connector-{{seq}}", startup.node_status(f"connector-{{seq}}")
        else:
            node, message = f"connector-{{seq % {nodes} + 1}}", startup.packet_sent("x", seq)
        message["seq"] = seq
        payload = orjson.dumps(message)
        store.append(StoredMessage(seq, message["type"], node, payload))
        if seq <= {nodes}:
            store.node_status_changed(node, seq, payload)
        if seq % 1000 == 0:
            store.commit()
    store.commit()
    store.close().addBoth(lambda _: reactor.stop())

reactor.callWhenRunning(fill)
reactor.run()
"""
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        cwd=str(Path(__file__).parent),
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


class Hub:
    def __init__(self, state: Path, port: int, pythonpath: Path | None = None) -> None:
        self.port = port
        self.log = tempfile.NamedTemporaryFile(prefix="startup-hub-", suffix=".log")  # noqa: SIM115
        argv = [
            TWISTD,
            "-n",
            "--pidfile=",
            "telemetry",
            "--port",
            f"tcp:{port}:interface=127.0.0.1",
            "--http-port",
            "off",
            "--state-dir",
            str(state),
            "--history-bytes",
            str(HISTORY_BYTES),
            "--log-format",
            "json",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEMETRY_", "LOG_"))}
        if pythonpath is not None:
            env["PYTHONPATH"] = str(pythonpath)
        self.started = time.monotonic()
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in Path(self.log.name).read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


async def until_listening(port: int, started: float, timeout: float = 20) -> float:
    deadline = started + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.002)
            continue
        writer.close()
        return time.monotonic() - started
    raise SystemExit(f"nothing listened on {port} within {timeout} s")


async def replay_times(port: int, started: float, nodes: int) -> tuple[float, float]:
    await until_listening(port, started)
    async with websockets.connect(f"ws://127.0.0.1:{port}/", max_size=None) as ws:
        await ws.send(json.dumps({"type": "CLIENT_CONNECT"}))
        first = last = 0.0
        for n in range(nodes):
            frame = json.loads(await ws.recv())
            if frame.get("type") != "NODE_STATUS":
                raise SystemExit(f"expected NODE_STATUS, got {frame}")
            if n == 0:
                first = time.monotonic() - started
        last = time.monotonic() - started
    return first, last


class NodeLoad:
    """
    Dashboards that read everything and connectors that send 10 messages/s each, in
    Node's ws (benchmarks/load_clients.js).
    """

    def __init__(self, port: int, dashboards: int, connectors: int, ws: Path) -> None:
        self._argv = ["node", str(Path(__file__).parent / "load_clients.js"), str(port)]
        self._argv += [str(dashboards), str(connectors)]
        self._env = {**os.environ, "NODE_PATH": str(ws / "node_modules")}
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            *self._argv, stdout=asyncio.subprocess.PIPE, env=self._env
        )
        assert self._process.stdout is not None
        line = await self._process.stdout.readline()
        if line.strip() != b"open":
            raise SystemExit(f"the Node clients did not connect: {line!r}")

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            await self._process.wait()


class Load:
    """
    Dashboards that read everything and connectors that send 10 messages/s each.
    """

    def __init__(self, port: int, dashboards: int, connectors: int) -> None:
        self.port = port
        self.dashboards = dashboards
        self.connectors = connectors
        self.tasks: list[asyncio.Task[None]] = []
        self.ready = 0

    async def start(self) -> None:
        for _ in range(self.dashboards):
            self.tasks.append(asyncio.create_task(self._dashboard()))
        for i in range(self.connectors):
            self.tasks.append(asyncio.create_task(self._connector(f"connector-{i}")))
        while self.ready < self.dashboards + self.connectors:
            await asyncio.sleep(0.01)

    async def _dashboard(self) -> None:
        try:
            async with websockets.connect(f"ws://127.0.0.1:{self.port}/") as ws:
                await ws.send(json.dumps({"type": "CLIENT_CONNECT"}))
                self.ready += 1
                async for _ in ws:
                    pass
        except (OSError, websockets.ConnectionClosed):
            pass

    async def _connector(self, node: str) -> None:
        try:
            async with websockets.connect(f"ws://127.0.0.1:{self.port}/") as ws:
                await ws.send(json.dumps(node_status(node)))
                self.ready += 1
                n = 0
                while True:
                    n += 1
                    await ws.send(json.dumps(packet_sent(node, n)))
                    await asyncio.sleep(0.1)
        except (OSError, websockets.ConnectionClosed):
            pass

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def load(port: int, ws: Path | None) -> Load | NodeLoad:
    return Load(port, 100, 10) if ws is None else NodeLoad(port, 100, 10, ws)


async def measure_stop(state: Path, ws: Path | None, pythonpath: Path | None) -> float:
    port = free_port()
    hub = Hub(state, port, pythonpath)
    try:
        await until_listening(port, hub.started)
        clients = load(port, ws)
        await clients.start()
        await asyncio.sleep(1)
        signalled = time.monotonic()
        hub.process.send_signal(signal.SIGTERM)
        while hub.process.poll() is None:
            await asyncio.sleep(0.002)
        took = time.monotonic() - signalled
        await clients.stop()
        return took
    finally:
        hub.stop()


async def handshake_probe(port: int, stop: asyncio.Event, waits: list[float]) -> None:
    """
    Open a WebSocket every 20 ms and record how long each handshake took; a refused
    connection is recorded as infinity.
    """
    while not stop.is_set():
        began = time.monotonic()
        try:
            async with websockets.connect(f"ws://127.0.0.1:{port}/", open_timeout=30):
                waits.append(time.monotonic() - began)
        except (TimeoutError, OSError, websockets.InvalidHandshake):
            waits.append(float("inf"))
        await asyncio.sleep(0.02)


async def measure_restart(state: Path, ws: Path | None) -> tuple[float, float]:
    port = free_port()
    hub = Hub(state, port)
    try:
        await until_listening(port, hub.started)
        clients = load(port, ws)
        await clients.start()
        await asyncio.sleep(1)
        stop, waits = asyncio.Event(), []
        probe = asyncio.create_task(handshake_probe(port, stop, waits))
        await asyncio.sleep(0.5)
        count = len(waits)
        hub.process.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            done = [r for r in hub.records() if "Restarted in place" in r.get("message", "")]
            if done:
                break
            await asyncio.sleep(0.02)
        else:
            raise SystemExit("the hub did not say it restarted")
        await asyncio.sleep(0.5)
        stop.set()
        await probe
        await clients.stop()
        if hub.process.poll() is not None:
            raise SystemExit("the hub exited during the restart")
        return max(waits[count:]), float(done[0]["paused_ms"]) / 1000
    finally:
        hub.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--history", type=int, default=100_000)
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--restart", action="store_true", help="measure SIGUSR2 too")
    parser.add_argument("--ws", type=Path, help="a folder whose node_modules holds ws")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (git worktree add DIR COMMIT) to measure in the same run, "
        "from this virtualenv, alternating with this one",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    sides: list[tuple[str, Path | None]] = [("this checkout", None)]
    if args.baseline is not None:
        sides.append((f"baseline {args.baseline}", args.baseline.resolve()))
    try:
        template = work / "template"
        print(f"building a state folder: {args.history} messages, {args.nodes} nodes", flush=True)
        build_state(template, args.history, args.nodes)
        figures: dict[str, dict[str, list[float]]] = {side: {} for side, _ in sides}
        replayed = f"({args.nodes} nodes, {args.history} messages)"
        for rep in range(args.reps):
            for side, pythonpath in sides if rep % 2 == 0 else sides[::-1]:
                print(f"run {rep + 1}, {side}", flush=True)

                def note(name: str, value: float, side: str = side) -> None:
                    figures[side].setdefault(name, []).append(value)
                    print(f"  {name}: {value * 1000:.0f} ms", flush=True)

                here = work / f"{rep}-{len(figures[side])}-{sides.index((side, pythonpath))}"
                port = free_port()
                hub = Hub(here / "empty", port, pythonpath)
                try:
                    listening = asyncio.run(until_listening(port, hub.started))
                    note("exec -> listening, empty state", listening)
                finally:
                    hub.stop()
                shutil.copytree(template, here / "full")
                port = free_port()
                hub = Hub(here / "full", port, pythonpath)
                try:
                    first, last = asyncio.run(replay_times(port, hub.started, args.nodes))
                    note(f"exec -> first replayed NODE_STATUS {replayed}", first)
                    note("exec -> last replayed NODE_STATUS", last)
                finally:
                    hub.stop()
                stop = asyncio.run(measure_stop(here / "stop", args.ws, pythonpath))
                note("SIGTERM -> exit, 100 dashboards + 10 connectors", stop)
                if args.restart and pythonpath is None:
                    longest, paused = asyncio.run(measure_restart(here / "restart", args.ws))
                    note("SIGUSR2: longest handshake wait, 100 dashboards + 10 connectors", longest)
                    note("SIGUSR2: not serving, as the hub logs it", paused)
        print(f"medians of {args.reps} runs (ms):")
        for name, values in figures[sides[0][0]].items():
            line = f"  {name}: {statistics.median(values) * 1000:.0f}"
            if len(sides) > 1 and name in figures[sides[1][0]]:
                base = statistics.median(figures[sides[1][0]][name])
                line += f" (baseline {base * 1000:.0f}, {statistics.median(values) / base:.2f}x)"
            print(line)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
