from __future__ import annotations

import pytest

from telemetry_service.codec import decode, encode
from telemetry_service.errors import Rejection


def reason(payload: bytes, max_depth: int = 32) -> str:
    with pytest.raises(Rejection) as caught:
        decode(payload, max_depth)
    return caught.value.reason


def test_object_round_trips_compactly() -> None:
    message = {"type": "X", "data": {"a": [1, 2.5, None, True, "é"]}}
    assert decode(encode(message), 32) == message
    assert encode({"a": 1}) == b'{"a":1}'


@pytest.mark.parametrize(
    "payload",
    [
        b"{",
        b"not json",
        b"",
        b"{'a':1}",
        b'{"a":1}}',
        b"NaN",
        b'{"a":NaN}',
        b'{"a":Infinity}',
        b'{"a":1e999}',
    ],
)
def test_invalid_json(payload: bytes) -> None:
    assert reason(payload) == "INVALID_JSON"


def test_invalid_utf8() -> None:
    assert reason(b'{"type":"\xff\xfe\xc3("}') == "INVALID_UTF8"


@pytest.mark.parametrize("payload", [b"[1,2,3]", b"null", b"12345", b'"str"', b"true"])
def test_not_an_object(payload: bytes) -> None:
    assert reason(payload) == "NOT_AN_OBJECT"


def test_depth_limit_is_exact() -> None:
    assert decode(b'{"a":' * 3 + b"1" + b"}" * 3, 3) == {"a": {"a": {"a": 1}}}
    assert reason(b'{"a":' * 4 + b"1" + b"}" * 4, 3) == "TOO_DEEP"
    assert reason(b'{"a":[[[1]]]}', 3) == "TOO_DEEP"


@pytest.mark.parametrize("depth", [100, 1_000, 10_000, 100_000])
def test_very_deep_nesting_is_refused_not_crashing(depth: int) -> None:
    assert reason(b'{"a":' * depth + b"1" + b"}" * depth) == "TOO_DEEP"
    assert reason(b"[" * depth + b"]" * depth) in ("TOO_DEEP", "NOT_AN_OBJECT")


def test_many_brackets_side_by_side_are_not_deep() -> None:
    payload = b'{"a":[' + b",".join([b"{}"] * 500) + b"]}"
    assert len(decode(payload, 3)["a"]) == 500
