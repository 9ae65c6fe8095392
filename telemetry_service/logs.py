"""
Log observers: a readable one for people and a JSON-lines one for machines, both filtered
by level. Structured fields given to C{Logger} calls are kept in the JSON output.
"""

from __future__ import annotations

import time
from typing import IO, Any

import orjson
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    formatTime,
)
from zope.interface import implementer

LEVELS = ("debug", "info", "warn", "error", "critical")
FORMATS = ("text", "json")

# Keys twisted.logger adds to every event; the JSON observer writes them under short names.
_INTERNAL = {
    "log_logger",
    "log_source",
    "log_level",
    "log_namespace",
    "log_format",
    "log_time",
    "log_failure",
    "log_system",
    "log_io",
    "log_text",
    "log_flattened",
    "log_trace",
    "log_legacy",
    "format",
    "message",
    "isError",
    "system",
    "time",
    "failure",
    "why",
}


def _jsonable(value: object) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


@implementer(ILogObserver)
class JSONLinesObserver:
    """
    One JSON object per line: time, level, namespace, the formatted message, then every
    structured field of the event.
    """

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        record: dict[str, Any] = {
            "time": time.strftime(
                "%Y-%m-%dT%H:%M:%S", time.gmtime(event.get("log_time", time.time()))
            )
            + "Z",
            "level": level.name if isinstance(level, type(LogLevel.info)) else "info",
            "namespace": event.get("log_namespace", ""),
            "message": formatEvent(event),
        }
        for key, value in event.items():
            if key not in _INTERNAL and not key.startswith("log_"):
                record[key] = _jsonable(value)
        failure = event.get("log_failure")
        if failure is not None:
            record["error"] = failure.getErrorMessage()
            record["traceback"] = failure.getTraceback()
        self._out.write(orjson.dumps(record).decode("utf-8") + "\n")
        self._out.flush()


def _escapes(codes: list[int]) -> dict[int, str]:
    return {c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" for c in codes}


#: Characters a client could use to forge or hide log lines in a terminal or a grep: C0 and
#: C1 controls (CR, LF, ESC for ANSI sequences), DEL, Unicode line and paragraph separators,
#: and the bidirectional overrides. Written as escapes, e.g. \x1b.
_CONTROLS = _escapes(
    [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F)]
)
_CONTROLS.update(_escapes([*range(0x2066, 0x206A)]))
#: ... and in a traceback, which is ours and spans lines, all but the line feed
_TRACEBACK_CONTROLS = {c: e for c, e in _CONTROLS.items() if c != 0x0A}


def escape_controls(text: str) -> str:
    return text.translate(_CONTROLS)


@implementer(ILogObserver)
class TextObserver:
    """
    Readable lines: C{2026-11-27T10:00:00+0000 [namespace#level] message}. What clients sent
    (node ids, reasons) reaches the message through its fields, so control characters in the
    message are escaped: one event is always one line, plus its traceback, if any, indented.
    """

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def __call__(self, event: dict[str, Any]) -> None:
        message = escape_controls(formatEvent(event))
        failure = event.get("log_failure")
        if failure is not None:
            traceback = failure.getTraceback().translate(_TRACEBACK_CONTROLS)
            message = f"{message}\n{traceback}".rstrip("\n").replace("\n", "\n\t")
        if not message:
            return
        stamp = formatTime(event.get("log_time"), timeFormat="%Y-%m-%dT%H:%M:%S%z")
        system = event.get("log_system")
        if not isinstance(system, str):
            level = event.get("log_level")
            level_name = level.name if isinstance(level, type(LogLevel.info)) else "-"
            system = f"{event.get('log_namespace', '-')}#{level_name}"
        self._out.write(f"{stamp} [{escape_controls(system)}] {message}\n")
        self._out.flush()


def make_observer(level: str, format: str, out: IO[str]) -> ILogObserver:
    """
    The hub's log observer: C{format} is C{text} or C{json}, C{level} the lowest level shown.
    """
    inner: ILogObserver = JSONLinesObserver(out) if format == "json" else TextObserver(out)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    observer: ILogObserver = FilteringLogObserver(inner, [predicate])
    return observer
