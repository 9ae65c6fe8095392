"""
Messages per second by type over the last few minutes, for the page's chart: a page opened
(or reloaded) now draws the minutes before it too, from C{GET /api/rates}.

Memory is fixed: one ring of per-second counts per type, the types bounded (the schema
catalog's, the hub's own events and C{rejected}; past C{max_series} the rest count as
C{other}). On the per-message path a count is one dict increment: no clock read. The
counts go into their second's slot when L{roll} runs, once a second (the hub service's
timer; L{series} rolls too, so an answer is never stale).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime

#: the chart's window
SECONDS = 300
MAX_SERIES = 64


class MessageRates:
    def __init__(
        self, clock: IReactorTime, seconds: int = SECONDS, max_series: int = MAX_SERIES
    ) -> None:
        self.clock = clock
        self._size = seconds
        self._max_series = max_series
        self._rings: dict[str, list[int]] = {}
        #: the second being counted, and its counts so far
        self._second = int(clock.seconds())
        self._counts: dict[str, int] = {}

    def count(self, name: str, n: int = 1) -> None:
        counts = self._counts
        counts[name] = counts.get(name, 0) + n

    def roll(self) -> None:
        """Close the second being counted if the clock has moved past it."""
        second = int(self.clock.seconds())
        if second != self._second:
            self._roll(second)

    def _roll(self, second: int) -> None:
        """Put the finished second's counts in their rings, and clear those skipped."""
        size, rings = self._size, self._rings
        finished, self._counts = self._counts, {}
        for name, value in finished.items():
            ring = rings.get(name)
            if ring is None:
                if len(rings) >= self._max_series:
                    name = "other"
                    ring = rings.get(name)
                if ring is None:
                    ring = rings[name] = [0] * size
            ring[self._second % size] += value
        # the seconds after the finished one, up to this one, had nothing
        for skipped in range(self._second + 1, min(second, self._second + size) + 1):
            for ring in rings.values():
                ring[skipped % size] = 0
        self._second = second

    def series(self) -> dict[str, Any]:
        """
        The complete seconds of the window, oldest first, per type; C{until} is the last.
        """
        self.roll()
        until = self._second - 1
        size = self._size
        order = [(until - size + 1 + i) % size for i in range(size)]
        return {
            "seconds": size,
            "until": until,
            "series": {name: [ring[i] for i in order] for name, ring in self._rings.items()},
        }
