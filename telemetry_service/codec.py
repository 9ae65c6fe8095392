"""
Bytes to a JSON object and back.

orjson validates UTF-8 while it parses, refuses NaN and Infinity (which browsers' JSON.parse
refuses too) and serializes in a fraction of the stdlib's time. Its own nesting limit is
1024 for parsing but about 255 for serializing, so the hub enforces a much smaller depth of
its own on the way in: anything accepted can always be serialized again.
"""

from __future__ import annotations

from typing import Any

import orjson

from telemetry_service.errors import (
    INVALID_JSON,
    INVALID_UTF8,
    NOT_AN_OBJECT,
    TOO_DEEP,
    Rejection,
)


def decode(payload: bytes, max_depth: int) -> dict[str, Any]:
    """
    Parse one frame's payload (text or binary) as a UTF-8 JSON object.

    @raise Rejection: if it is not UTF-8, not JSON, not an object, or nested deeper than
        C{max_depth}.
    """
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        text = str(e)
        if "UTF-8" in text:
            raise Rejection(INVALID_UTF8, "payload is not valid UTF-8") from None
        if "depth limit" in text or "recursion" in text:
            raise Rejection(TOO_DEEP, f"JSON nested deeper than {max_depth} levels") from None
        raise Rejection(INVALID_JSON, f"payload is not valid JSON: {text}") from None
    if not isinstance(message, dict):
        raise Rejection(
            NOT_AN_OBJECT,
            f"expected a JSON object, got {_json_kind(message)}",
        )
    # Depth cannot exceed the number of brackets, and bytes.count is cheap: only payloads with
    # many brackets (large NODE_STATUS, hostile input) pay for the walk.
    if payload.count(b"{") + payload.count(b"[") > max_depth and _depth(message) > max_depth:
        raise Rejection(TOO_DEEP, f"JSON nested deeper than {max_depth} levels")
    return message


def encode(message: dict[str, Any]) -> bytes:
    """
    Serialize a message compactly as UTF-8 JSON.
    """
    result: bytes = orjson.dumps(message)
    return result


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    return "a number"


def _depth(root: object) -> int:
    """
    Nesting depth of a parsed JSON value, without recursion (an object or array is one level).
    """
    deepest = 0
    stack: list[tuple[object, int]] = [(root, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > deepest:
            deepest = depth
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return deepest
