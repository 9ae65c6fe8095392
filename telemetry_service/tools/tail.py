"""
C{telemetry-tail}: connect to a hub as a dashboard and print its events, one per line.

Readable by a person (in colour on a terminal) or, with C{--json}, one JSON object per line
for a pipe. C{--type} and C{--node} ask the hub to filter (both may be repeated).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, task
from twisted.internet.endpoints import clientFromString

_COLOURS = {
    "NODE_STATUS": "36",  # cyan
    "NODE_PRESENCE": "35",  # magenta
    "PACKET_RECEIVED": "32",  # green
    "ROUTE_LOOKUP": "34",  # blue
    "PACKET_SENT": "33",  # yellow
    "ERROR": "31",  # red
    "RESUME": "35",
}


def summary(message: dict[str, Any]) -> str:
    """The part of a line after type and node: what a person wants to see of each type."""
    kind = message.get("type")
    raw = message.get("data")
    data: dict[str, Any] = raw if isinstance(raw, dict) else {}
    if kind == "NODE_STATUS":
        peers = data.get("peers") or []
        connected = sum(1 for p in peers if isinstance(p, dict) and p.get("connected"))
        online = message.get("online")
        state = "" if online is None else (" online" if online else " offline")
        routes = len(data.get("routes") or [])
        return f"{data.get('health')}{state} peers {connected}/{len(peers)} routes {routes}"
    if kind == "NODE_PRESENCE":
        return "online" if message.get("online") else "offline"
    if kind == "PACKET_RECEIVED":
        return (
            f"{data.get('packetType')} {str(data.get('packetId'))[:12]} {data.get('amount')} "
            f"from {data.get('source')} to {data.get('destination')}"
        )
    if kind == "ROUTE_LOOKUP":
        peer = data.get("selectedPeer")
        chosen = peer if peer is not None else "NO ROUTE"
        return f"{data.get('destination')} -> {chosen} ({data.get('reason')})"
    if kind == "PACKET_SENT":
        return f"{str(data.get('packetId'))[:12]} -> {data.get('nextHop')}"
    if kind == "RESUME":
        return f"{message.get('status')} epoch {message.get('epoch')} seq {message.get('seq')}"
    rest = {k: v for k, v in message.items() if k not in ("type", "nodeId", "timestamp", "seq")}
    return json.dumps(rest, separators=(",", ":"))[:200]


def format_line(message: dict[str, Any], colour: bool) -> str:
    kind = str(message.get("type"))
    stamp = datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3]
    seq = message.get("seq")
    node = str(message.get("nodeId", "-"))
    head = f"{kind:<16}"
    if colour:
        head = f"\x1b[{_COLOURS.get(kind, '0')}m{head}\x1b[0m"
    number = f"#{seq}" if seq is not None else "-"
    return f"{stamp} {number:>8} {head} {node:<16} {summary(message)}"


class _TailProtocol(WebSocketClientProtocol):
    def onOpen(self) -> None:
        self.sendMessage(json.dumps(self.factory.hello).encode())

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.printer(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        closed: defer.Deferred[Any] = self.factory.closed
        if not closed.called:
            closed.callback((code, reason))


class Printer:
    def __init__(self, out: IO[str], as_json: bool, colour: bool, count: int) -> None:
        self.out, self.as_json, self.colour = out, as_json, colour
        self.remaining = count
        self.done: defer.Deferred[None] = defer.Deferred()

    def __call__(self, payload: bytes) -> None:
        if self.done.called:
            return
        try:
            message = json.loads(payload)
        except ValueError:
            return
        if self.as_json:
            self.out.write(json.dumps(message, separators=(",", ":")) + "\n")
        else:
            self.out.write(format_line(message, self.colour) + "\n")
        self.out.flush()
        self.remaining -= 1
        if self.remaining == 0:
            self.done.callback(None)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="telemetry-tail", description=__doc__.split("\n\n")[0].strip()
    )
    parser.add_argument("--url", default="ws://127.0.0.1:9000/", help="the hub's WebSocket URL")
    parser.add_argument(
        "--token",
        default=os.environ.get("TELEMETRY_VIEWER_TOKEN"),
        help="a viewer token, where the hub needs one (env TELEMETRY_VIEWER_TOKEN)",
    )
    parser.add_argument(
        "--type",
        action="append",
        dest="types",
        metavar="TYPE",
        help="only this message type (repeatable)",
    )
    parser.add_argument(
        "--node",
        action="append",
        dest="nodes",
        metavar="NODE_ID",
        help="only this node (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--count", type=int, default=0, help="exit after this many events")
    return parser.parse_args(argv)


def hello(args: argparse.Namespace) -> dict[str, Any]:
    # it prints nodes coming and going too, which are the hub's own events: ask for them
    message: dict[str, Any] = {"type": "CLIENT_CONNECT", "hubEvents": ["NODE_PRESENCE"]}
    wanted: dict[str, Any] = {}
    if args.types:
        wanted["types"] = args.types
    if args.nodes:
        wanted["nodeIds"] = args.nodes
    if wanted:
        message["filter"] = wanted
    return message


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    task.react(_run, (args,))


async def _run(reactor: Any, args: argparse.Namespace) -> None:
    printer = Printer(sys.stdout, args.json, sys.stdout.isatty() and not args.json, args.count)
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else None
    factory = WebSocketClientFactory(args.url, headers=headers)
    factory.protocol = _TailProtocol
    factory.hello = hello(args)  # type: ignore[attr-defined]
    factory.printer = printer  # type: ignore[attr-defined]
    factory.closed = defer.Deferred()  # type: ignore[attr-defined]
    parts = urlsplit(args.url)
    endpoint = clientFromString(reactor, f"tcp:{parts.hostname}:{parts.port or 80}")
    try:
        protocol = await endpoint.connect(factory)
    except Exception as e:
        raise SystemExit(f"telemetry-tail: cannot connect to {args.url}: {e}") from None
    closed: defer.Deferred[Any] = factory.closed  # type: ignore[attr-defined]
    result, which = await defer.DeferredList([printer.done, closed], fireOnOneCallback=True)
    if which == 0:
        protocol.sendClose(1000)
        await closed
        return
    code, reason = result
    raise SystemExit(f"telemetry-tail: the hub closed the connection ({code}: {reason})")


if __name__ == "__main__":
    main()
