"""
What the hub says to a connection that sends what it must not, each within its budget, so
that no client can make the hub flood it, the log or itself: one error frame per refused
message (at most 10 a second per connection), one warning in the log (at most 1 a second per
connection, with a count of those held back), the message rate (a connection over it for
5 seconds without a break is closed), and the closes themselves.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from telemetry_service.codec import encode
from telemetry_service.config import Settings
from telemetry_service.connections import Connection, Role
from telemetry_service.errors import POLICY_VIOLATION, RATE_LIMITED, Rejection
from telemetry_service.ratelimit import TokenBucket
from telemetry_service.rates import MessageRates
from telemetry_service.stats import HubStats
from telemetry_service.vocabulary import CLIENT_CONNECT


class Refusals:
    """
    The refusals of one hub, and the per-connection budgets they are held to.
    """

    def __init__(
        self,
        settings: Settings,
        clock: IReactorTime,
        stats: HubStats,
        rates: MessageRates,
        stop_hearing: Callable[[Connection], None],
        log: Logger,
    ) -> None:
        """
        @param stats: counts each refusal, by reason; C{rates}, by second (the chart).
        @param stop_hearing: a listener that sends what a reader never sends is a producer:
            the broadcast stops going to it.
        @param log: the hub's log.
        """
        self._settings = settings
        self._clock = clock
        self._stats = stats
        self._rates = rates
        self._stop_hearing = stop_hearing
        self._log = log

    def message_rate(self, connection: Connection) -> TokenBucket:
        """
        The connection's message-rate budget (made on first use: most connections of a
        large hub are dashboards, which never send more than a CLIENT_CONNECT).
        """
        messages = connection.messages
        if messages is None:
            s = self._settings
            messages = connection.messages = TokenBucket(
                self._clock, s.messages_per_second, s.messages_burst
            )
        return messages

    def rate_limited(self, connection: Connection, index: int | None, is_binary: bool) -> None:
        """
        Refuse what is over the connection's message rate; close it once that has gone on
        for C{rate_abuse_seconds} seconds with no second free of refusals.

        @param index: the first event of a batch that was dropped (None: the whole frame).
        """
        s = self._settings
        detail = f"over the limit of {s.messages_per_second:g} events per second"
        if index is not None:
            detail = f"events from index {index} on dropped: {detail}"
        rejection = Rejection(RATE_LIMITED, detail)
        if index is not None:
            rejection.extra["index"] = index
        self.refuse(connection, rejection, None, is_binary)
        now = self._clock.seconds()
        if now - connection.over_rate_last > 1.0:  # a new stretch over the rate
            connection.over_rate_since = now
        connection.over_rate_last = now
        if now - connection.over_rate_since >= s.rate_abuse_seconds:
            self.close(
                connection,
                POLICY_VIOLATION,
                f"over its message rate for {s.rate_abuse_seconds} seconds without a break",
            )

    def close(self, connection: Connection, code: int, reason: str) -> None:
        connection.closing = True
        self.warn(
            connection, "Closing {peer} ({nodeId}) with {code}: {reason}", code=code, reason=reason
        )
        connection.peer.close(code, reason)

    def refuse(
        self,
        connection: Connection,
        rejection: Rejection,
        message_type: object,
        is_binary: bool,
    ) -> None:
        """
        Count a refused message, say so in the log and to its sender, within budget.

        @param message_type: its C{type}, if it had one.
        """
        if connection.role is Role.LISTENER and message_type != CLIENT_CONNECT:
            connection.role = Role.UNIDENTIFIED
            self._stop_hearing(connection)
        stats = self._stats
        stats.rejected += 1
        self._rates.count("rejected")
        reasons = stats.rejected_by_reason
        reasons[rejection.reason] = reasons.get(rejection.reason, 0) + 1
        self.warn(
            connection,
            "Rejected {frame} message from {peer} ({nodeId}): {reason}: {detail}",
            frame="binary" if is_binary else "text",
            reason=rejection.reason,
            detail=rejection.detail,
            **rejection.extra,
        )
        peer = connection.peer
        if not self._settings.error_frames or peer.congested:
            return
        if connection.error_frames is None:
            s = self._settings
            connection.error_frames = TokenBucket(
                self._clock, s.error_frames_per_second, s.error_frames_burst
            )
        if connection.error_frames.allow():
            peer.send(encode(rejection.to_frame()))

    def warn(self, connection: Connection, format: str, **fields: object) -> None:
        """
        Log a warning about a connection, at most as often as its budget allows.
        """
        if connection.warnings is None:
            s = self._settings
            connection.warnings = TokenBucket(self._clock, s.warnings_per_second, s.warnings_burst)
        if not connection.warnings.allow():
            return
        self.flush_suppressed(connection)
        context: dict[str, object] = {"peer": connection.peer.address, "nodeId": connection.node_id}
        context.update(fields)
        self._log.warn(format, **context)

    def flush_suppressed(self, connection: Connection) -> None:
        """
        Say how many warnings about the connection were held back, if any were.
        """
        count = connection.warnings.take_suppressed() if connection.warnings else 0
        if count:
            self._log.warn(
                "Suppressed {count} warnings about {peer} ({nodeId}) to protect the log",
                count=count,
                peer=connection.peer.address,
                nodeId=connection.node_id,
            )
