"""
C{telemetry-validate SCHEMA_DIR [MESSAGE_FILE ...]}: check an edited schema folder, and
sample messages against it, offline, before the hub is told to reload (SIGHUP).

The folder is loaded exactly as the hub loads it, and each message is read by the hub's own
intake (JSON, depth, batches, sizes) and validated by its catalog, so the verdicts and the
error text are the hub's own (with the default limits). A message
file holds one JSON message, a C{{"batch": [...]}} as connectors send it, a JSON array of
messages, or one message per line; C{-} reads standard input.

Exit status: 0 when the folder and every message pass, 1 when a message is refused, 2 when
the folder or a file cannot be used.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from telemetry_service.config import Settings
from telemetry_service.errors import MESSAGE_TOO_BIG, ConfigurationError, Rejection
from telemetry_service.intake import Limits, read
from telemetry_service.schemas import SchemaCatalog


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="telemetry-validate",
        description="Check a schema folder, and messages against it, as the hub would.",
    )
    parser.add_argument("schemas", type=Path, help="the schema folder")
    parser.add_argument(
        "messages", nargs="*", help="files of messages to check against it (- for stdin)"
    )
    parser.add_argument(
        "--quiet", action="store_true", help="print only what is refused, and the summary"
    )
    return parser.parse_args(argv)


def messages_in(name: str, text: str) -> Iterator[tuple[str, bytes]]:
    """
    (where, payload) for every message in a file's text, as the hub would receive it.
    """
    stripped = text.strip()
    if not stripped:
        return
    if stripped.startswith("["):
        import json

        try:
            items = json.loads(stripped)
        except ValueError:
            yield f"{name}", stripped.encode()
            return
        for index, item in enumerate(items):
            yield f"{name}[{index}]", json.dumps(item).encode()
        return
    lines = [line for line in text.splitlines() if line.strip()]
    whole_is_one = len(lines) > 1 and not all(line.lstrip().startswith("{") for line in lines)
    if len(lines) == 1 or whole_is_one or _is_one_document(stripped):
        yield name, stripped.encode()
        return
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            yield f"{name}:{number}", line.strip().encode()


def _is_one_document(text: str) -> bool:
    import json

    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def verdicts(catalog: SchemaCatalog, payload: bytes, limits: Limits) -> Iterator[dict[str, Any]]:
    """
    What the hub says to one message (or to each event of a batch), read with the hub's own
    L{intake}: C{{"ok": True, "type"}}, the error frame the hub would send, or
    C{{"close": 1009, "detail"}} where the hub would close the connection.
    """
    intake = read(payload, limits)
    if intake.refusal is not None:
        yield intake.refusal.to_frame()
        return
    if intake.too_big is not None:
        yield {"close": MESSAGE_TOO_BIG, "detail": intake.too_big}
        return
    for index, event in intake.events():
        try:
            if isinstance(event, Rejection):
                raise event
            message_type = catalog.validate(event)
        except Rejection as rejection:
            if index is not None:
                rejection.extra["index"] = index
            yield rejection.to_frame()
            continue
        result: dict[str, Any] = {"ok": True, "type": message_type}
        if index is not None:
            result["index"] = index
        yield result


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        catalog = SchemaCatalog.load(args.schemas)
    except ConfigurationError as e:
        print(f"telemetry-validate: {e}", file=err)
        return 2
    print(f"{args.schemas}: {len(catalog.types)} message types, all valid", file=out)
    limits = Limits.of(Settings())
    checked = refused = 0
    for name in args.messages:
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            print(f"telemetry-validate: cannot read {name}: {e}", file=err)
            return 2
        for where, payload in messages_in(name, text):
            for verdict in verdicts(catalog, payload, limits):
                checked += 1
                at = where if "index" not in verdict else f"{where} event {verdict['index']}"
                if verdict.get("ok"):
                    if not args.quiet:
                        print(f"{at}: accepted {verdict['type']}", file=out)
                    continue
                refused += 1
                if "close" in verdict:
                    what = f"the connection is closed with {verdict['close']}"
                else:
                    what = verdict["reason"]
                print(f"{at}: refused {what}: {verdict['detail']}", file=out)
    if args.messages:
        print(f"{checked} checked, {checked - refused} accepted, {refused} refused", file=out)
    return 1 if refused else 0


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    raise SystemExit(run(args, sys.stdout, sys.stderr))


if __name__ == "__main__":
    main()
