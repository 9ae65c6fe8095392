"""
C{telemetry-sim}: play a network of ILP connectors against a hub.

Its command line: it builds the network (L{Topology}), runs the simulation (what it sends,
and why, is in L{telemetry_service.tools.sim.simulation}) for C{--duration} seconds or
until stopped, with progress lines on stderr, and prints a JSON report on stdout at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, task

from telemetry_service.tools.sim.latency import LatencyMeter
from telemetry_service.tools.sim.ledger import DEFAULT_SETTLEMENT_THRESHOLD, TOKEN
from telemetry_service.tools.sim.simulation import Simulation
from telemetry_service.tools.sim.topology import TOPOLOGIES, Topology
from telemetry_service.tools.wsclient import HubURL


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """C{telemetry-sim}'s options, from C{argv} (the environment gives the tokens' defaults)."""
    parser = argparse.ArgumentParser(
        prog="telemetry-sim", description=__doc__.split("\n\n")[0].strip()
    )
    parser.add_argument("--url", default="ws://127.0.0.1:9000/", help="the hub's WebSocket URL")
    parser.add_argument(
        "--token",
        default=os.environ.get("TELEMETRY_TOKEN"),
        help="a connector token for every simulated node (env TELEMETRY_TOKEN)",
    )
    parser.add_argument(
        "--viewer-token",
        default=os.environ.get("TELEMETRY_VIEWER_TOKEN"),
        help="a viewer token for --measure (env TELEMETRY_VIEWER_TOKEN)",
    )
    parser.add_argument("--nodes", type=int, default=5, help="number of connectors (default 5)")
    parser.add_argument(
        "--topology",
        choices=TOPOLOGIES,
        default="linear",
        help="linear, mesh (every pair), hub (hub-and-spoke) or sparse (each node peers "
        "with 2 earlier ones at random); default linear",
    )
    parser.add_argument("--rate", type=float, default=5.0, help="packets per second (default 5)")
    parser.add_argument(
        "--no-route", type=float, default=0.1, help="share of packets with no route (default 0.1)"
    )
    parser.add_argument(
        "--duration", type=float, default=0.0, help="seconds to run; 0 = until stopped"
    )
    parser.add_argument(
        "--prefix", default="connector", help="node name prefix (default connector)"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed, for repeatable runs")
    parser.add_argument(
        "--hop-ms",
        type=float,
        default=2.0,
        help="milliseconds each hop takes to forward a packet (default 2)",
    )
    parser.add_argument(
        "--packets-only",
        action="store_true",
        help="send only NODE_STATUS and the packet events: no LOG, balances, settlements or "
        "payment channels",
    )
    parser.add_argument(
        "--settlement-threshold",
        type=int,
        default=DEFAULT_SETTLEMENT_THRESHOLD,
        help="settle with a peer once a node owes it this much "
        f"(default {DEFAULT_SETTLEMENT_THRESHOLD}, in {TOKEN}'s smallest unit)",
    )
    parser.add_argument(
        "--measure",
        action="store_true",
        help="also connect as a dashboard and report end-to-end latency",
    )
    parser.add_argument(
        "--report-every",
        type=float,
        default=10.0,
        help="seconds between progress lines on stderr (0: none)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """
    C{telemetry-sim}: run the simulation until C{--duration} is up or it is stopped.

    @raise SystemExit: with one line on what is wrong, for a bad URL, network or threshold.
    """
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        HubURL.parse(args.url)
        topology = Topology.build(args.topology, args.nodes, args.prefix)
        if args.settlement_threshold < 1:
            raise ValueError("--settlement-threshold must be at least 1")
    except ValueError as e:
        raise SystemExit(f"telemetry-sim: {e}") from None
    task.react(_run, (args, topology))


async def _run(reactor: Any, args: argparse.Namespace, topology: Topology) -> None:
    simulation = Simulation(
        reactor,
        args.url,
        topology,
        args.rate,
        args.no_route,
        args.seed,
        args.hop_ms / 1000,
        args.token,
        packets_only=args.packets_only,
        settlement_threshold=args.settlement_threshold,
    )
    meter = LatencyMeter()
    measuring = None
    if args.measure:
        measuring = meter.service(reactor, args.url, args.viewer_token)
        measuring.startService()
        await task.deferLater(reactor, 0.3, lambda: None)
    simulation.start()
    print(
        f"telemetry-sim: {len(topology.nodes)} connectors ({args.topology}) -> {args.url} "
        f"at {args.rate:g} packets/s",
        file=sys.stderr,
        flush=True,
    )
    progress = None
    if args.report_every > 0:
        progress = task.LoopingCall(
            lambda: print(json.dumps(simulation.report()), file=sys.stderr, flush=True)
        )
        progress.clock = reactor
        progress.start(args.report_every, now=False)
    done: defer.Deferred[None] = defer.Deferred()
    finished: defer.Deferred[None] = defer.Deferred()
    if args.duration > 0:
        reactor.callLater(args.duration, lambda: None if done.called else done.callback(None))

    def on_shutdown() -> defer.Deferred[None]:
        # Ctrl-C or SIGTERM: stop sending, disconnect, print the report, then exit
        if not done.called:
            done.callback(None)
        return finished

    reactor.addSystemEventTrigger("before", "shutdown", on_shutdown)
    await done
    if progress is not None and progress.running:
        progress.stop()
    await simulation.stop()
    if measuring is not None:
        await task.deferLater(reactor, 0.3, lambda: None)
        await measuring.stopService()
    result = simulation.report()
    if args.measure:
        result["latency"] = meter.summary()
    print(json.dumps(result), flush=True)
    finished.callback(None)


if __name__ == "__main__":
    main()
