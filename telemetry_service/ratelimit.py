"""
Rate limiting for things a misbehaving peer can make the hub do: messages, snapshots, log
lines and error frames.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime


class TokenBucket:
    """
    Allows C{burst} events at once and C{rate} per second on average; counts what it refuses
    so the caller can say how much it suppressed.

    @ivar suppressed: events refused since the last one allowed.
    """

    __slots__ = ("_burst", "_clock", "_last", "_rate", "_tokens", "suppressed")

    def __init__(self, clock: IReactorTime, rate: float, burst: int) -> None:
        self._clock = clock
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = clock.seconds()
        self.suppressed = 0

    def allow(self) -> bool:
        now = self._clock.seconds()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.suppressed += 1
        return False

    def allow_lazily(self) -> bool:
        """
        As L{allow}, but the clock is read only when the tokens run out (once per burst,
        not once per event): for the per-message path. It may grant up to one burst more
        over a stretch of time than L{allow} would.
        """
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return self.allow()

    def take(self, count: int) -> int:
        """
        Take up to C{count} tokens at once; return how many were granted (the rest count as
        refused).
        """
        now = self._clock.seconds()
        tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        granted = min(count, int(tokens))
        self._tokens = tokens - granted
        self.suppressed += count - granted
        return granted

    def take_suppressed(self) -> int:
        """
        Return the number of refused events and start counting again from zero.
        """
        count, self.suppressed = self.suppressed, 0
        return count
