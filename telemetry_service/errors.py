"""
Errors as data.

Everything the hub refuses is a L{Rejection}: a stable machine-readable C{reason} code plus
a human-readable C{detail}. It crosses to the sender in exactly one shape, the error frame
built by L{Rejection.to_frame}, and to the log with the same fields.
"""

from __future__ import annotations

from typing import Any

# Reason codes, documented in the README's message catalogue.
INVALID_JSON = "INVALID_JSON"
INVALID_UTF8 = "INVALID_UTF8"
NOT_AN_OBJECT = "NOT_AN_OBJECT"
TOO_DEEP = "TOO_DEEP"
MISSING_TYPE = "MISSING_TYPE"
UNKNOWN_TYPE = "UNKNOWN_TYPE"
SCHEMA_VIOLATION = "SCHEMA_VIOLATION"
ROLE_VIOLATION = "ROLE_VIOLATION"
NODE_ID_MISMATCH = "NODE_ID_MISMATCH"
INVALID_BATCH = "INVALID_BATCH"
MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE"
RATE_LIMITED = "RATE_LIMITED"
REPLAY_BUSY = "REPLAY_BUSY"
UNAUTHORIZED = "UNAUTHORIZED"

# WebSocket close codes the hub sends (documented in the README's table of close codes).
#: the hub is shutting down (RFC 6455 "going away")
GOING_AWAY = 1001
#: the hub is restarting in place and will be back at once (RFC 6455 "service restart")
SERVICE_RESTART = 1012
#: a text frame that is not valid UTF-8 (RFC 6455 "invalid frame payload data")
INVALID_PAYLOAD = 1007
#: sustained abuse of a budget, e.g. the message rate (RFC 6455 "policy violation")
POLICY_VIOLATION = 1008
#: a message over its size limit (RFC 6455 "message too big")
MESSAGE_TOO_BIG = 1009
#: more bytes waited for the peer than its budget allows (it reads too slowly, or the hub's
#: total budget for waiting bytes ran out and its queue was among the biggest)
TOO_SLOW = 4008

# A detail never carries more than this many characters of what the sender sent, so that a
# 60 KiB string does not come back in an error frame or land in the log.
MAX_ECHO = 120


def shorten(value: object, limit: int = MAX_ECHO) -> str:
    """
    A printable, bounded rendering of C{value} for logs and error frames.
    """
    text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        return f"{text[:limit]}... ({len(text)} chars)"
    return text


class Rejection(Exception):  # noqa: N818 (a refusal is data, not a failure)
    """
    A message was refused; nothing else about the connection changes.

    @ivar reason: one of the reason codes above.
    @ivar detail: what was wrong, for a person.
    @ivar extra: reason-specific fields (C{messageType}, C{path}, C{rule}) that go into the
        error frame and the log line.
    """

    def __init__(self, reason: str, detail: str, **extra: str | int | None) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail
        self.extra = extra

    def to_frame(self) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "ERROR", "reason": self.reason, "detail": self.detail}
        frame.update(self.extra)
        return frame


class ConfigurationError(Exception):
    """
    The hub cannot start as configured (bad schema folder, bad option value). Its message is
    the one line an operator sees.
    """
