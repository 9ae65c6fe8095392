"""
How the parts of the Redis bus log what goes wrong with Redis. An outage repeats the same
errors many times a second; the log says each kind at most once per L{LOG_EVERY} seconds,
with how many like it were held back. Shared by the bus and its parts, hence a module of
its own.
"""

from __future__ import annotations

from typing import Any

import txredisapi
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

#: an error of one kind is logged at most once in this many seconds
LOG_EVERY = 10.0


class ErrorLog:
    """
    The Redis bus's errors, into the bus's log.
    """

    def __init__(self, log: Logger, clock: IReactorTime) -> None:
        self._log = log
        self._clock = clock
        # kind of error -> when it was last logged, how many were held back since
        self._last: dict[str, tuple[float, int]] = {}

    def error(self, kind: str, text: str, failure: Failure | None = None, **fields: Any) -> None:
        """
        Log an error, unless one of the same C{kind} was logged less than L{LOG_EVERY}
        seconds ago.

        @param failure: logged with its traceback, if given.
        """
        now = self._clock.seconds()
        last, held = self._last.get(kind, (float("-inf"), 0))
        if now - last < LOG_EVERY:
            self._last[kind] = (last, held + 1)
            return
        self._last[kind] = (now, 0)
        if held:
            text += " ({held} more like it held back)"
        if failure is not None:
            self._log.failure(text, failure, held=held, **fields)
        else:
            self._log.error(text, held=held, **fields)

    def unless_lost(self, failure: Failure) -> None:
        """
        The errback of a command whose failure changes nothing: a lost connection says so
        itself (and is made good when it is back); anything else is a warning.
        """
        if not failure.check(txredisapi.ConnectionError):
            self._log.warn("Redis bus: {error}", error=failure.getErrorMessage())
