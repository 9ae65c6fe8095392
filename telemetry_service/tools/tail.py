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
from typing import IO, Any, cast

from twisted.internet import defer, task
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from telemetry_service.tools.wsclient import HubURL, NoDelayClientProtocol, UnsupportedURLError

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


class _TailProtocol(NoDelayClientProtocol):
    """
    Sends the hello once open, hands every message to the printer, and fires its factory's
    C{closed} with the line that says how the connection ended.
    """

    _opened = False
    #: why a connection that never opened failed, as Twisted tells it
    _failed: str | None = None

    def onOpen(self) -> None:
        self._opened = True
        self.sendMessage(json.dumps(self.factory.hello).encode())

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.printer(payload)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # Autobahn reports a connection that failed before its WebSocket opened (a hub's TLS
        # certificate refused, say) as a mere 1006 "peer dropped": Twisted's reason says why
        if not self._opened and not reason.check(ConnectionDone):
            self._failed = reason.getErrorMessage()
        super().connectionLost(reason)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        closed: defer.Deferred[str] = self.factory.closed
        if closed.called:
            return
        if self._failed is not None:
            closed.callback(f"cannot connect to {self.factory.url}: {self._failed}")
        else:
            closed.callback(f"the hub closed the connection ({code}: {reason})")


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
    """
    C{telemetry-tail}: print the hub's events until C{--count} of them or the hub closes.

    @raise SystemExit: with one line, when the URL is not a WebSocket URL, the hub cannot
        be reached, or it closes the connection.
    """
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        hub = HubURL.parse(args.url)
    except UnsupportedURLError as e:
        raise SystemExit(f"telemetry-tail: {e}") from None
    task.react(_run, (args, hub))


async def _run(reactor: Any, args: argparse.Namespace, hub: HubURL) -> None:
    printer = Printer(sys.stdout, args.json, sys.stdout.isatty() and not args.json, args.count)
    factory = hub.factory(_TailProtocol, args.token)
    factory.hello = hello(args)  # type: ignore[attr-defined]
    factory.printer = printer  # type: ignore[attr-defined]
    closed: defer.Deferred[str] = defer.Deferred()
    factory.closed = closed  # type: ignore[attr-defined]
    try:
        protocol = cast(_TailProtocol, await hub.endpoint(reactor).connect(factory))
    except Exception as e:
        raise SystemExit(f"telemetry-tail: cannot connect to {args.url}: {e}") from None
    ends: list[defer.Deferred[Any]] = [printer.done, closed]
    result, which = await defer.DeferredList(ends, fireOnOneCallback=True)
    if which == 0:
        protocol.sendClose(1000)
        await closed
        return
    raise SystemExit(f"telemetry-tail: {result}")


if __name__ == "__main__":
    main()
