"""
The live network page under a big network: one hub (memory store), the simulator playing
200 connectors at about 2,000 messages/s, and the page open in Debian's Chromium (driven by
Playwright, headless, 1400x900) for a while.

    .venv/bin/python benchmarks/page.py --duration 300            # hub-and-spoke
    .venv/bin/python benchmarks/page.py --duration 30 --topology linear

The simulator's --rate (packets/s) is calibrated first: each packet makes several messages
per hop, and each node writes LOG lines in proportion to the rate, so a hub and the
simulator start at a trial rate, the hub's /health "accepted" counter is read twice a few
seconds apart, and if that is more than 10% off the target both start afresh at the scaled
rate (at most three readings). --rate skips the scaling. A start where not every simulated
connector is still connected once settled (the hub cuts connections that are sent more
than they read, and a connector hears the broadcast until its first message) is thrown
away and tried again.

Measured in the page over the run: the intervals between animation frames (a
requestAnimationFrame loop injected before the page's own scripts, into a fixed histogram:
median, p95, p99, max and the share over 50 ms); the JS heap (CDP Performance.getMetrics
every 10 s; at 30 s and at the end after HeapProfiler.collectGarbage, and the growth
between); the renderer's main-thread busy share (CDP TaskDuration); console errors and
uncaught exceptions; WebSockets the page opened and saw closed (1 and 0: it never had to
reconnect). Also the hub's and the simulator's CPU (percent of one core), the messages/s
the hub accepted over the run, the connectors still connected at the end and the
connections the hub closed as slow readers during the run.

Prints a short summary and then one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from playwright.async_api import Page, WebSocket, async_playwright
from processes import cpu_seconds, free_port, wait_port  # benchmarks/processes.py

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / ".venv" / "bin"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SAMPLE_EVERY_S = 10.0
HEAP_BASELINE_S = 30.0
TRIAL_RATE = 30.0
SLOW_FRAME_MS = 50.0

# Frame intervals into a histogram of 0.25 ms buckets up to 10 s (and one bucket beyond):
# memory is fixed however long the run. reset() starts over once the page has loaded.
FRAME_PROBE = """
(() => {
  const BUCKETS = 40000;
  const probe = {
    histogram: new Uint32Array(BUCKETS + 1), count: 0, sum: 0, max: 0, slow: 0, last: 0,
    reset() {
      this.histogram.fill(0);
      this.count = 0; this.sum = 0; this.max = 0; this.slow = 0; this.last = 0;
    },
    snapshot() {
      const buckets = {};
      this.histogram.forEach((n, i) => { if (n) buckets[i] = n; });
      return { buckets, count: this.count, sum: this.sum, max: this.max, slow: this.slow };
    },
  };
  const tick = (now) => {
    if (probe.last) {
      const dt = now - probe.last;
      probe.histogram[Math.min(Math.round(dt * 4), BUCKETS)] += 1;
      probe.count += 1; probe.sum += dt;
      if (dt > probe.max) probe.max = dt;
      if (dt > SLOW_FRAME_MS) probe.slow += 1;
    }
    probe.last = now;
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
  window.__frameProbe = probe;
})();
""".replace("SLOW_FRAME_MS", str(SLOW_FRAME_MS))


def health(http_port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=5) as answer:
        body: dict[str, Any] = json.load(answer)
        return body


def accepted_rate(http_port: int, seconds: float) -> float:
    """Messages/s the hub accepts, from /health read twice C{seconds} apart."""
    first, t0 = health(http_port)["accepted"], time.monotonic()
    time.sleep(seconds)
    second, t1 = health(http_port)["accepted"], time.monotonic()
    return float(second - first) / (t1 - t0)


def git_commit() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    )
    return out.stdout.strip() or "unknown"


def start_hub(port: int, http_port: int, log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            str(BIN / "twistd"),
            "-n",
            "--pidfile=",
            "telemetry",
            "--port",
            str(port),
            "--http-port",
            str(http_port),
            "--store",
            "memory",
            "--log-level",
            "warn",
            "--max-connections-per-address",
            "20000",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=str(REPO),
    )


def start_sim(
    port: int, nodes: int, topology: str, rate: float, log: IO[bytes]
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            str(BIN / "telemetry-sim"),
            "--url",
            f"ws://127.0.0.1:{port}/",
            "--nodes",
            str(nodes),
            "--topology",
            topology,
            "--rate",
            f"{rate:.2f}",
            "--report-every",
            "0",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=str(REPO),
    )


def stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def sim_dropped(log: Path) -> int | None:
    """The simulator's last summary line (printed when it stops): messages it dropped."""
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            try:
                dropped = json.loads(line).get("dropped_while_disconnected")
            except ValueError:
                continue
            return int(dropped) if isinstance(dropped, int) else None
    return None


def percentile(buckets: dict[str, int], count: int, share: float, max_ms: float) -> float:
    """The frame interval (ms) below which C{share} of the frames fall, from the histogram."""
    wanted = share * count
    seen = 0
    for index in sorted(buckets, key=int):
        seen += buckets[index]
        if seen >= wanted:
            return min(int(index) / 4, max_ms)
    return max_ms


def frame_figures(snapshot: dict[str, Any]) -> dict[str, Any]:
    count: int = snapshot["count"]
    if not count:
        return {"frames": 0}
    buckets: dict[str, int] = snapshot["buckets"]
    maximum = round(snapshot["max"], 1)
    return {
        "frames": count,
        "fps": round(count / (snapshot["sum"] / 1000), 1),
        "frame_p50_ms": percentile(buckets, count, 0.50, maximum),
        "frame_p95_ms": percentile(buckets, count, 0.95, maximum),
        "frame_p99_ms": percentile(buckets, count, 0.99, maximum),
        "frame_max_ms": maximum,
        "frames_over_50ms_pct": round(100 * snapshot["slow"] / count, 2),
    }


async def metrics(cdp: Any) -> dict[str, float]:
    answer = await cdp.send("Performance.getMetrics")
    return {m["name"]: m["value"] for m in answer["metrics"]}


async def heap_after_gc(cdp: Any) -> float:
    await cdp.send("HeapProfiler.collectGarbage")
    return (await metrics(cdp))["JSHeapUsedSize"]


def top_functions(profile: dict[str, Any], count: int = 15) -> list[str]:
    """
    The functions the page's main thread spent most time in (self time, as a share of its
    busy time: idle left out), from a CDP CPU profile.
    """
    nodes = {node["id"]: node for node in profile["nodes"]}
    samples, deltas = profile.get("samples", []), profile.get("timeDeltas", [])
    self_ms: dict[str, float] = {}
    # timeDeltas[i] is the time from sample i-1 to sample i: sample i ran until i+1
    for sample, delta in zip(samples, [*deltas[1:], 0], strict=False):
        frame = nodes[sample]["callFrame"]
        if frame["functionName"] == "(idle)":
            continue
        where = frame["url"].rsplit("/", 1)[-1]
        name = f"{frame['functionName'] or '(anonymous)'} {where}:{frame['lineNumber'] + 1}"
        self_ms[name] = self_ms.get(name, 0.0) + delta / 1000
    total = sum(self_ms.values()) or 1.0
    ranked = sorted(self_ms.items(), key=lambda item: -item[1])[:count]
    return [f"{100 * ms / total:5.1f}% {ms:9.0f} ms  {name}" for name, ms in ranked]


def mib(value: float | None) -> float | None:
    return None if value is None else round(value / 2**20, 2)


def watch_socket(socket: WebSocket, events: list[str]) -> None:
    events.append("opened")
    socket.on("close", lambda _: events.append("closed"))


async def measure_page(
    http_port: int, duration: float, profile: Path | None = None
) -> dict[str, Any]:
    """Open the page for C{duration} seconds and measure it (and profile its CPU)."""
    errors: list[str] = []
    sockets: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page: Page = await browser.new_page(viewport={"width": 1400, "height": 900})
            page.on(
                "console",
                lambda message: errors.append(message.text) if message.type == "error" else None,
            )
            page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
            page.on("websocket", lambda ws: watch_socket(ws, sockets))
            await page.add_init_script(FRAME_PROBE)
            cdp = await page.context.new_cdp_session(page)
            await cdp.send("Performance.enable")
            await page.goto(f"http://127.0.0.1:{http_port}/", wait_until="load")
            await page.evaluate("window.__frameProbe.reset()")
            if profile is None:
                return await sample_run(page, cdp, duration, errors, sockets)
            await cdp.send("Profiler.enable")
            await cdp.send("Profiler.start")
            figures = await sample_run(page, cdp, duration, errors, sockets)
            cpu_profile = (await cdp.send("Profiler.stop"))["profile"]
            profile.write_text(json.dumps(cpu_profile))
            return {**figures, "profile_top": top_functions(cpu_profile)}
        finally:
            await browser.close()


async def sample_run(
    page: Page, cdp: Any, duration: float, errors: list[str], sockets: list[str]
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    first = await metrics(cdp)
    baseline_at = min(HEAP_BASELINE_S, duration / 2)
    heap_baseline: float | None = None
    samples: list[tuple[float, float]] = []
    next_sample = 0.0
    while (elapsed := loop.time() - start) < duration:
        if heap_baseline is None and elapsed >= baseline_at:
            heap_baseline = await heap_after_gc(cdp)
        if elapsed >= next_sample:
            samples.append((round(elapsed), (await metrics(cdp))["JSHeapUsedSize"]))
            next_sample += SAMPLE_EVERY_S
        wake = min(next_sample, duration, baseline_at if heap_baseline is None else duration)
        await asyncio.sleep(max(0.0, wake - (loop.time() - start)))
    elapsed = loop.time() - start
    snapshot = await page.evaluate("window.__frameProbe.snapshot()")
    last = await metrics(cdp)
    heap_end = await heap_after_gc(cdp)
    busy = last["TaskDuration"] - first["TaskDuration"]
    script = last["ScriptDuration"] - first["ScriptDuration"]
    growth = None if heap_baseline is None else heap_end - heap_baseline
    return {
        **frame_figures(snapshot),
        "heap_at_s": round(baseline_at),
        "heap_baseline_mib": mib(heap_baseline),
        "heap_end_mib": mib(heap_end),
        "heap_growth_mib": mib(growth),
        "heap_max_sampled_mib": mib(max((h for _, h in samples), default=None)),
        "heap_samples_mib": [[t, mib(h)] for t, h in samples],
        "main_thread_busy_pct": round(100 * busy / elapsed, 1),
        "script_pct": round(100 * script / elapsed, 1),
        "dom_nodes": int(last.get("Nodes", 0)),
        "console_errors": len(errors),
        "console_error_examples": errors[:5],
        "websockets_opened": sockets.count("opened"),
        "websockets_closed": sockets.count("closed"),
    }


class Network:
    """A hub and the simulator against it, started afresh for every calibration step."""

    def __init__(self, args: argparse.Namespace, hub_log: IO[bytes], sim_log: IO[bytes]) -> None:
        self.args = args
        self.hub_log, self.sim_log = hub_log, sim_log
        self.port = self.http_port = 0
        self.hub: subprocess.Popen[bytes] | None = None
        self.sim: subprocess.Popen[bytes] | None = None

    def start(self, rate: float) -> bool:
        """Start both; whether all the connectors connected and still are after settling."""
        self.port, self.http_port = free_port(), free_port()
        self.hub = start_hub(self.port, self.http_port, self.hub_log)
        wait_port(self.port)
        wait_port(self.http_port)
        args = self.args
        self.sim = start_sim(self.port, args.nodes, args.topology, rate, self.sim_log)
        deadline = time.monotonic() + 30
        while not self.settled() and time.monotonic() < deadline:
            time.sleep(0.5)
        # the first seconds carry every node's NODE_STATUS and channels
        time.sleep(args.settle)
        return self.settled()

    def settled(self) -> bool:
        """Every simulated node connected as a connector (none left hearing the broadcast)."""
        connections = health(self.http_port)["connections"]
        return bool(connections["connector"] == self.args.nodes and not connections["listener"])

    def stop(self) -> None:
        stop(self.sim)
        stop(self.hub)


def calibrate(network: Network, args: argparse.Namespace) -> tuple[float, float]:
    """
    Start the network at a rate that makes the hub accept about the target messages/s.
    A start where some connectors got cut off (the hub closes connections that are sent
    more than they read, and a connector hears the broadcast until its first message)
    is thrown away and tried again.
    """
    rate: float = args.rate or TRIAL_RATE
    readings = failures = 0
    while True:
        if not network.start(rate):
            network.stop()
            failures += 1
            print(f"sim --rate {rate:.2f}: not every connector stayed connected", flush=True)
            if failures >= 5:
                raise SystemExit("the simulated network never settled")
            continue
        measured = accepted_rate(network.http_port, args.calibrate_for)
        readings += 1
        print(f"sim --rate {rate:.2f}: the hub accepts {measured:,.0f} messages/s", flush=True)
        close = abs(measured - args.target) <= 0.1 * args.target
        if args.rate or close or readings >= 3 or measured <= 0:
            return rate, measured
        network.stop()
        rate *= min(max(args.target / measured, 0.5), 2.0)


def summary(figures: dict[str, Any]) -> str:
    f = figures
    lines = [
        f"{f['date']} commit {f['commit']}: {f['nodes']} nodes ({f['topology']}), "
        f"sim --rate {f['sim_rate']:.2f}, {f['duration_s']:.0f} s",
        f"  hub accepted {f['msgs_per_s_calibrated']:,.0f} msgs/s at calibration, "
        f"{f['msgs_per_s_run']:,.0f} over the run; hub CPU {f['hub_cpu_pct']}%, "
        f"sim CPU {f['sim_cpu_pct']}%",
        f"  at the end the hub had {f['hub_connections_end']['connector']}/{f['nodes']} "
        f"connectors and {f['hub_connections_end']['dashboard']} dashboard(s); "
        f"it closed {f['hub_slow_reader_closes']} connection(s) as slow readers during the run",
        f"  frames: {f.get('frames', 0)} ({f.get('fps')} fps), p50 {f.get('frame_p50_ms')} ms, "
        f"p95 {f.get('frame_p95_ms')} ms, p99 {f.get('frame_p99_ms')} ms, "
        f"max {f.get('frame_max_ms')} ms, over 50 ms {f.get('frames_over_50ms_pct')}%",
        f"  JS heap (after GC): {f['heap_baseline_mib']} MiB at {f['heap_at_s']} s, "
        f"{f['heap_end_mib']} MiB at the end, growth {f['heap_growth_mib']} MiB "
        f"(max sampled {f['heap_max_sampled_mib']} MiB)",
        f"  main thread busy {f['main_thread_busy_pct']}% (script {f['script_pct']}%), "
        f"{f['dom_nodes']} DOM nodes, WebSockets opened {f['websockets_opened']} "
        f"and closed {f['websockets_closed']}, "
        f"{f['console_errors']} console error(s)",
    ]
    lines += [f"    error: {text[:200]}" for text in f["console_error_examples"]]
    if "profile_top" in f:
        lines.append("  where the page's main thread was busy (self time, share of busy time):")
        lines += [f"    {line}" for line in f["profile_top"]]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300, help="seconds the page is open")
    parser.add_argument("--nodes", type=int, default=200)
    # hub-and-spoke by default: telemetry-sim's "mesh" links every pair (19,900 links for
    # 200 nodes), which no real network of that size has and no drawing makes readable
    parser.add_argument(
        "--topology",
        choices=["mesh", "linear", "hub", "sparse"],
        default="hub",
        help="telemetry-sim's topology (default hub; mesh is a full mesh)",
    )
    parser.add_argument("--target", type=float, default=2000, help="messages/s to calibrate to")
    parser.add_argument("--rate", type=float, help="the simulator's packets/s (skips calibration)")
    parser.add_argument("--settle", type=float, default=4, help="seconds before measuring rates")
    parser.add_argument("--calibrate-for", type=float, default=5, help="seconds per rate reading")
    parser.add_argument(
        "--profile",
        type=Path,
        help="also record the page's CPU profile into this file (open it in Chromium's "
        "DevTools, Performance tab) and print the functions it spent most time in",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # a SIGTERM stops this script through its finally blocks, which stop what it started
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    folder = Path(tempfile.mkdtemp(prefix="bench-page-"))
    hub_log_path, sim_log_path = folder / "hub.log", folder / "sim.log"
    with hub_log_path.open("wb") as hub_log, sim_log_path.open("wb") as sim_log:
        network = Network(args, hub_log, sim_log)
        try:
            rate, calibrated = calibrate(network, args)
            assert network.hub is not None and network.sim is not None
            hub_pid, sim_pid, http_port = network.hub.pid, network.sim.pid, network.http_port
            log_offset = hub_log_path.stat().st_size
            accepted0 = health(http_port)["accepted"]
            hub0, sim0, t0 = cpu_seconds(hub_pid), cpu_seconds(sim_pid), time.monotonic()
            page = asyncio.run(measure_page(http_port, args.duration, args.profile))
            elapsed = time.monotonic() - t0
            after = health(http_port)
            hub_cpu, sim_cpu = cpu_seconds(hub_pid) - hub0, cpu_seconds(sim_pid) - sim0
        finally:
            network.stop()
    hub_log_text = hub_log_path.read_bytes()[log_offset:].decode(errors="replace")
    figures: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "nodes": args.nodes,
        "topology": args.topology,
        "duration_s": args.duration,
        "sim_rate": round(rate, 2),
        "msgs_per_s_calibrated": round(calibrated),
        "msgs_per_s_run": round((after["accepted"] - accepted0) / elapsed),
        "hub_cpu_pct": round(100 * hub_cpu / elapsed, 1),
        "sim_cpu_pct": round(100 * sim_cpu / elapsed, 1),
        "sim_dropped_while_disconnected": sim_dropped(sim_log_path),
        "hub_connections_end": after["connections"],
        "hub_slow_reader_closes": hub_log_text.count("reads too slow"),
        **page,
    }
    print(summary(figures))
    print(json.dumps(figures))
    print(f"(hub and simulator logs: {folder})", file=sys.stderr)


if __name__ == "__main__":
    main()
