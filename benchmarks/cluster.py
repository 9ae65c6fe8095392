"""
The README's Redis rows: the shared harness's generator (gen.js) against, in one run and
alternating, (1) one hub with its embedded SQLite store, (2) one hub on Redis, (3) two hubs
on Redis with the dashboards split across them (connectors on the first). Each cell starts
its hubs and its own redis-server fresh.

    B=$(mktemp -d)/bench && cp -r ../shared/bench "$B" && "$B/setup.sh"
    python benchmarks/cluster.py --bench "$B" --reps 3

Prints one line per run and then medians: deliveries/s (or ingress for M=1), latency p50
and p99, the first hub's CPU and Redis's CPU (percent of one core).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from processes import cpu_seconds, free_port, wait_port  # benchmarks/processes.py

REPO = Path(__file__).resolve().parent.parent
TWISTD = str(Path(sys.executable).parent / "twistd")

CELLS = {
    "fanout C=10 M=100": ["fanout", "--C", "10", "--M", "100", "--duration", "10", "--warmup", "2"],
    "fanout C=10 M=10": ["fanout", "--C", "10", "--M", "10", "--duration", "10", "--warmup", "2"],
    "fanout C=10 M=1": ["fanout", "--C", "10", "--M", "1", "--duration", "10", "--warmup", "2"],
    "latency 2k/s M=50": ["latency"],
}
SETUPS = ["one hub, SQLite", "one hub, Redis", "two hubs, Redis"]


def run_cell(bench: Path, setup: str, args: list[str]) -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    started: list[subprocess.Popen[bytes]] = []
    redis_pid = None
    try:
        hub_args = ["--http-port", "off", "--max-connections-per-address", "20000"]
        if "Redis" in setup:
            redis_port = free_port()
            redis = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(redis_port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--dir",
                    str(folder),
                ],
                stdout=subprocess.DEVNULL,
            )
            started.append(redis)
            redis_pid = redis.pid
            wait_port(redis_port)
            hub_args += ["--redis", f"redis://127.0.0.1:{redis_port}/0"]
        else:
            hub_args += ["--state-dir", str(folder / "state")]
        ports = []
        for _ in range(2 if setup.startswith("two") else 1):
            port = free_port()
            hub = subprocess.Popen(
                [
                    TWISTD,
                    "-n",
                    "--pidfile=",
                    "telemetry",
                    "--port",
                    str(port),
                    "--log-level",
                    "warn",
                    *hub_args,
                ],
                stdout=subprocess.DEVNULL,
                cwd=str(REPO),
            )
            started.append(hub)
            ports.append(port)
        for port in ports:
            wait_port(port)
        time.sleep(1.0)  # the Redis bus connects and loads
        first = next(p for p in started if p.pid != redis_pid)
        where = ["--port", str(ports[0]), "--hub-pid", str(first.pid)]
        if len(ports) > 1:
            where += [
                "--client-ports",
                ",".join(map(str, ports)),
                "--connector-ports",
                str(ports[0]),
            ]
        redis_before = cpu_seconds(redis_pid) if redis_pid else 0.0
        t0 = time.monotonic()
        out = subprocess.run(
            ["node", str(bench / "gen.js"), *args, *where],
            capture_output=True,
            text=True,
            timeout=300,
        )
        elapsed = time.monotonic() - t0
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        if not lines:
            raise SystemExit(f"gen.js printed nothing: {out.stderr[-1000:]}")
        result: dict[str, float] = json.loads(lines[-1])
        if redis_pid:
            result["redis_cpu_pct"] = (cpu_seconds(redis_pid) - redis_before) / elapsed * 100
        return result
    finally:
        for process in reversed(started):
            process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(folder, ignore_errors=True)


def pick(result: dict[str, object], *names: str) -> float | None:
    for name in names:
        value = result
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None  # type: ignore[assignment]
        if isinstance(value, (int, float)):
            return float(value)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", type=Path, required=True, help="a set-up copy of shared/bench")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cells", default=",".join(CELLS))
    args = parser.parse_args()
    # a SIGTERM stops this script through its finally blocks, which stop what it started
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    cells = [c.strip() for c in args.cells.split(",")]
    results: dict[tuple[str, str], list[dict[str, object]]] = {}
    for rep in range(args.reps):
        for cell in cells:
            order = SETUPS if rep % 2 == 0 else SETUPS[::-1]
            for setup in order:
                result = run_cell(args.bench, setup, CELLS[cell])
                results.setdefault((cell, setup), []).append(result)
                brief = {
                    k: result.get(k)
                    for k in (
                        "deliveries_per_s",
                        "ingress_per_s",
                        "loss_pct",
                        "lat_p50_ms",
                        "lat_p99_ms",
                        "hub_cpu_pct",
                        "redis_cpu_pct",
                        "gen_cpu_pct",
                    )
                }
                print(f"rep {rep + 1} {cell:18} {setup:16} {json.dumps(brief)}", flush=True)
    print(f"\nmedians of {args.reps}:")
    print(
        "| cell | setup | deliveries/s | ingress msgs/s | p50 ms | p99 ms | hub CPU % "
        "| Redis CPU % |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for cell in cells:
        for setup in SETUPS:
            runs = results[(cell, setup)]

            def med(*names: str, runs: list[dict[str, object]] = runs) -> str:
                values = [v for r in runs if (v := pick(r, *names)) is not None]
                if not values:
                    return "-"
                median = statistics.median(values)
                return f"{median:,.0f}" if median >= 100 else f"{median:.2f}"

            print(
                f"| {cell} | {setup} | {med('deliveries_per_s')} | {med('ingress_per_s')} | "
                f"{med('lat_p50_ms')} | {med('lat_p99_ms')} | {med('hub_cpu_pct')} | "
                f"{med('redis_cpu_pct')} |"
            )


if __name__ == "__main__":
    main()
