"""
txredisapi on Twisted's default reactor against redis-py (asyncio, hiredis) on Twisted's
asyncio reactor, on the hub's hot path with Redis: the submit script (one call per reactor
pass, 100 messages each, pipelined) while a second connection reads the stream with XREAD
BLOCK, as L{telemetry_service.bus.redis.bus} does.

    python benchmarks/redis_clients.py [--messages 100000] [--reps 3]

Starts its own redis-server on a free port (Debian's), runs each client in a fresh
process, alternating, and prints per client: messages/s end to end, the client process's
CPU microseconds per message, and the latency of one message alone (submit -> read back)
as median and p99 of 2,000. The machine is shared and noisy: compare medians of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from processes import free_port  # benchmarks/processes.py

BATCH = 100
HERE = Path(__file__).resolve().parent
LATENCY_SAMPLES = 2000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="bench-redis-")
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", folder],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    results: dict[str, list[dict[str, float]]] = {"txredisapi": [], "redis-py": []}
    try:
        for rep in range(args.reps):
            for client in results:
                out = subprocess.run(
                    [
                        args.python,
                        str(HERE / "redis_client_run.py"),
                        client,
                        str(port),
                        str(args.messages),
                    ],
                    capture_output=True,
                    text=True,
                    cwd=os.getcwd(),
                    timeout=600,
                )
                if out.returncode or not out.stdout.strip():
                    raise SystemExit(f"{client} failed:\n{out.stderr[-2000:]}")
                figures = json.loads(out.stdout.strip().splitlines()[-1])
                samples = sorted(figures.pop("samples"))
                figures["p50_ms"] = samples[len(samples) // 2] * 1000
                figures["p99_ms"] = samples[int(len(samples) * 0.99)] * 1000
                results[client].append(figures)
                print(
                    f"rep {rep + 1} {client:10} {figures['rate']:9.0f} msg/s  "
                    f"{figures['cpu_us']:5.1f} us CPU/msg  one message: "
                    f"p50 {figures['p50_ms']:.3f} ms p99 {figures['p99_ms']:.3f} ms",
                    flush=True,
                )
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(folder, ignore_errors=True)
    print(f"\nmedians of {args.reps} ({args.messages} messages, {BATCH} per script call):")
    for client, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(
            f"  {client:10} {med['rate']:9.0f} msg/s  {med['cpu_us']:5.1f} us CPU/msg  "
            f"latency p50 {med['p50_ms']:.3f} ms  p99 {med['p99_ms']:.3f} ms"
        )
    tx, py = (statistics.median(r["rate"] for r in results[c]) for c in results)
    print(f"  throughput txredisapi / redis-py: {tx / py:.2f}")


if __name__ == "__main__":
    main()
