"""
What one WebSocket message holds, before anything about the connection counts: one event,
or the events of a C{{"batch": [...]}}, or the reason it holds none. JSON, UTF-8 and depth
(L{codec.decode}), the batch's shape and length, and each event's size are checked here.

It is pure (bytes and limits in, data out), so the hub and C{telemetry-validate} read a
payload with the same function and give the same verdicts. What depends on the connection
(its message rate, its role, its node) and on the schemas is the hub's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from telemetry_service.codec import decode, encode
from telemetry_service.config import Settings
from telemetry_service.errors import (
    INVALID_BATCH,
    MESSAGE_TOO_LARGE,
    NOT_AN_OBJECT,
    Rejection,
)


@dataclass(frozen=True, slots=True)
class Limits:
    """
    The limits a payload is read with (from L{Settings}).
    """

    max_message_bytes: int
    max_batch: int
    max_depth: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(settings.max_message_bytes, settings.max_batch, settings.max_depth)


@dataclass(frozen=True, slots=True)
class Intake:
    """
    One message read: exactly one of C{refusal} (the whole message is refused, with an
    error frame), C{too_big} (a lone event over the size limit: the connection is closed
    with 1009, and this says why), C{message} (a lone event) or C{batch} (its events,
    checked one by one as L{events} yields them).
    """

    limit: int
    refusal: Rejection | None = None
    too_big: str | None = None
    message: dict[str, Any] | None = None
    batch: list[Any] | None = None

    def events(self) -> Iterator[tuple[int | None, dict[str, Any] | Rejection]]:
        """
        (index in the batch, or None for a lone event; the event, or why it is refused).
        Lazily: an event the caller does not take (over its rate) is never sized.
        """
        if self.message is not None:
            yield None, self.message
            return
        for index, event in enumerate(self.batch or ()):
            if not isinstance(event, dict):
                yield (
                    index,
                    Rejection(NOT_AN_OBJECT, "a batch event must be a JSON object", index=index),
                )
            elif (size := len(encode(event))) > self.limit:
                yield (
                    index,
                    Rejection(
                        MESSAGE_TOO_LARGE,
                        f"a batch event of {size} bytes is over the limit of {self.limit}",
                        index=index,
                    ),
                )
            else:
                yield index, event


def read(payload: bytes, limits: Limits) -> Intake:
    """
    Read one complete WebSocket message (text or binary).
    """
    limit = limits.max_message_bytes
    try:
        message = decode(payload, limits.max_depth)
    except Rejection as rejection:
        return Intake(limit, refusal=rejection)
    batch = message.get("batch") if "type" not in message else None
    if batch is None:
        if len(payload) > limit:
            return Intake(
                limit,
                too_big=f"message of {len(payload)} bytes over the limit of {limit} "
                "(only a batch may be larger)",
            )
        return Intake(limit, message=message)
    if not isinstance(batch, list) or len(batch) > limits.max_batch:
        return Intake(
            limit,
            refusal=Rejection(
                INVALID_BATCH, f"'batch' must be an array of at most {limits.max_batch} events"
            ),
        )
    return Intake(limit, batch=batch)
