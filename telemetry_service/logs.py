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
    formatEventAsClassicLogText,
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


@implementer(ILogObserver)
class TextObserver:
    """
    Readable lines: C{2026-11-27T10:00:00+0000 [namespace#level] message}.
    """

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def __call__(self, event: dict[str, Any]) -> None:
        text = formatEventAsClassicLogText(
            event,
            formatTime=lambda t: formatTime(t, timeFormat="%Y-%m-%dT%H:%M:%S%z"),
        )
        if text:
            self._out.write(text)
            self._out.flush()


def make_observer(level: str, format: str, out: IO[str]) -> ILogObserver:
    """
    The hub's log observer: C{format} is C{text} or C{json}, C{level} the lowest level shown.
    """
    inner: ILogObserver = JSONLinesObserver(out) if format == "json" else TextObserver(out)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    observer: ILogObserver = FilteringLogObserver(inner, [predicate])
    return observer
