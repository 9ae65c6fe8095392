"""
The fast validator (jsonschema-rs) gives the same verdict as the reference (jsonschema) on
the shipped schemas, over the real clients' messages and many thousands of mutations of
them.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from typing import Any

from telemetry_service.errors import Rejection
from telemetry_service.schemas import SchemaCatalog

from .test_schemas import BAD, GOOD

# Values chosen to sit on the edges of the shipped rules: types, enums, patterns, lengths.
ODD_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1.5,
    2**53,
    -(2**63),
    1e308,
    "",
    "x",
    "1000",
    "-5",
    "12.5",
    "0" * 81,
    "n" * 257,
    "healthy",
    "sick",
    "PREPARE",
    "IDLE",
    "cooperative",
    "prepare",
    "outgoing",
    "pending",
    "confirmed",
    "2025-12-27T10:00:00.000Z",
    "2025-12-27T10:00:00Z",
    "2025-12-27T10:00:00+01:00",
    "2025-13-27T10:00:00Z",
    "2025-12-27 10:00:00Z",
    "2025-12-27T24:00:00Z",
    "2025-12-27T10:00:60Z",
    "2025-12-27T10:00:00.1234567890Z",
    "2025-12-27T10:00:00z",
    "\u00e9\u2028\U0001f600",
    [],
    [1],
    ["a"],
    {},
    {"a": 1},
    {"id": "p", "connected": True},
    {"prefix": "g.a", "nextHop": "b"},
    1735992100000,
    -1735992100000,
]


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from paths(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from paths(child, (*prefix, i))


def mutate(message: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    result = copy.deepcopy(message)
    for _ in range(rng.randint(1, 3)):
        candidates = [p for p in paths(result) if p]
        if not candidates:
            break
        path = rng.choice(candidates)
        parent: Any = result
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        roll = rng.random()
        if roll < 0.15 and isinstance(parent, dict) and key != "type":
            del parent[key]
        elif roll < 0.25 and isinstance(parent, dict):
            parent[rng.choice(["extra", "seq", "data", "nodeId", "timestamp"])] = rng.choice(
                ODD_VALUES
            )
        else:
            parent[key] = copy.deepcopy(rng.choice(ODD_VALUES))
    return result


def test_fast_and_reference_validators_agree(catalog: SchemaCatalog) -> None:
    rng = random.Random(20261127)
    seeds = [m for _, m in GOOD] + [m for _, m, _, _ in BAD]
    reference = {t: catalog.reference_validator(t) for t in catalog.types}
    checked = accepted = 0
    exercised: set[str] = set()
    for seed in seeds:
        for message in [seed, *(mutate(seed, rng) for _ in range(400))]:
            message_type = message.get("type")
            if not isinstance(message_type, str) or message_type not in reference:
                continue
            expected = reference[message_type].is_valid(message)
            try:
                catalog.validate(message)
                verdict = True
            except Rejection:
                verdict = False
            assert verdict == expected, message
            checked += 1
            accepted += verdict
            exercised.add(message_type)
    # every shipped type is exercised, and the mutations exercise both verdicts substantially
    assert exercised == set(catalog.types)
    assert checked > 15_000
    assert 0.05 < accepted / checked < 0.95
