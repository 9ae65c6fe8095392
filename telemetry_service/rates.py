"""
Messages per second by type over the last few minutes, for the page's chart: a page opened
(or reloaded) now draws the minutes before it too, from C{GET /api/rates}.

Memory is fixed: one ring of per-second counts per type, the types bounded (the schema
catalog's, the hub's own events and C{rejected}; past C{max_series} the rest count as
C{other}). On the per-message path a count is one clock read and one dict increment; the
rings are touched once a second.
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
        self._clock = clock
        self._size = seconds
        self._max_series = max_series
        self._rings: dict[str, list[int]] = {}
        #: the second being counted, and its counts so far
        self._second = int(clock.seconds())
        self._counts: dict[str, int] = {}

    def count(self, name: str, n: int = 1) -> None:
        second = int(self._clock.seconds())
        if second != self._second:
            self._roll(second)
        counts = self._counts
        counts[name] = counts.get(name, 0) + n

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
        second = int(self._clock.seconds())
        if second != self._second:
            self._roll(second)
        until = second - 1
        size = self._size
        order = [(until - size + 1 + i) % size for i in range(size)]
        return {
            "seconds": size,
            "until": until,
            "series": {name: [ring[i] for i in order] for name, ring in self._rings.items()},
        }
