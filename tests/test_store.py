"""
The in-memory history: bounded by count and bytes, exact about what it still holds.
"""

from __future__ import annotations

import random

import pytest

from telemetry_service.history.memory import MemoryStore, StoredMessage


def message(
    seq: int, size: int = 10, kind: str = "PACKET_SENT", node: str | None = "n"
) -> StoredMessage:
    body = f"{seq}:".encode()
    return StoredMessage(seq, kind, node, (body * (size // len(body) + 1))[:size])


def test_empty_store() -> None:
    store = MemoryStore(10, 1000, epoch="e1")
    assert store.epoch == "e1"
    assert store.last_seq == 0
    assert store.after(0, 1000) == []
    assert store.after(1, 1000) is None  # ahead of the hub


def test_after_returns_exactly_the_newer_messages() -> None:
    store = MemoryStore(100, 10_000)
    for seq in range(1, 21):
        store.append(message(seq))
    assert [m.seq for m in store.after(15, 1000) or []] == [16, 17, 18, 19, 20]
    assert store.after(20, 1000) == []
    assert [m.payload for m in store.after(18, 1000) or []] == [
        message(19).payload,
        message(20).payload,
    ]
    assert store.after(21, 1000) is None
    assert store.after(-1, 1000) is None


def test_bounded_by_count() -> None:
    store = MemoryStore(5, 10_000)
    for seq in range(1, 11):
        store.append(message(seq))
    assert len(store) == 5
    assert store.first_seq == 6
    assert store.after(5, 1000) is not None
    assert store.after(4, 1000) is None  # seq 5 is gone


def test_bounded_by_bytes_across_wraparound() -> None:
    store = MemoryStore(1000, 100)
    for seq in range(1, 50):
        store.append(message(seq, size=30))
        assert store.size_bytes <= 100
    assert len(store) == 3
    assert [m.payload for m in store.after(46, 1000) or []] == [
        message(s, 30).payload for s in (47, 48, 49)
    ]


def test_a_message_larger_than_the_history_empties_it() -> None:
    store = MemoryStore(1000, 100)
    store.append(message(1))
    store.append(message(2, size=101))
    assert len(store) == 0
    assert store.after(1, 1000) is None
    assert store.after(2, 1000) == []
    store.append(message(3))
    assert [m.seq for m in store.after(2, 1000) or []] == [3]


def test_seq_must_follow() -> None:
    store = MemoryStore(10, 100)
    store.append(message(1))
    with pytest.raises(ValueError):
        store.append(message(3))


def test_matches_a_simple_model_under_random_sizes() -> None:
    rng = random.Random(7)
    capacity, count = 5_000, 300
    store = MemoryStore(count, capacity)
    held: list[StoredMessage] = []
    for seq in range(1, 20_000):
        m = message(seq, size=rng.choice([0, 1, 17, 250, 999, 2_000, 4_999]), node=f"n{seq % 7}")
        store.append(m)
        held.append(m)
        # the model: newest first, while within both bounds
        kept, total = [], 0
        for old in reversed(held):
            if len(kept) == count or total + len(old.payload) > capacity:
                break
            kept.append(old)
            total += len(old.payload)
        held = held[-len(kept) :] if kept else []
        got = store.after(store.first_seq - 1, 1000) or []
        # the ring may drop a little more than the model (the gap left at its end)
        assert len(got) <= len(kept)
        assert got == held[len(held) - len(got) :]
        assert len(got) >= 1 or len(m.payload) > capacity
