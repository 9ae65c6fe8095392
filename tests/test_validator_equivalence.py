"""
The fast validator (jsonschema-rs) gives the same verdict as the reference (jsonschema) on
the shipped schemas, over the real clients' messages and many thousands of mutations of
them.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from telemetry_service.errors import ConfigurationError, Rejection
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


def reference_validator(catalog: SchemaCatalog, message_type: str) -> Draft202012Validator:
    """
    The pure-Python C{jsonschema} validator of a type: the reference that the fast one is
    tested against.
    """
    registry: Registry[Any] = Registry().with_resources(
        (uri, Resource.from_contents(doc, DRAFT202012)) for uri, doc in catalog.documents.items()
    )
    return Draft202012Validator(
        catalog.documents[catalog.type_uris[message_type]], registry=registry
    )


def test_fast_and_reference_validators_agree(catalog: SchemaCatalog) -> None:
    rng = random.Random(20261127)
    seeds = [m for _, m in GOOD] + [m for _, m, _, _ in BAD]
    reference = {t: reference_validator(catalog, t) for t in catalog.types}
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


#: schema files, valid and not, at the edges of the metaschema and its formats
SCHEMA_FILES: list[Any] = [
    {"type": "object"},
    {"type": 12},
    {"type": "banana"},
    {"type": ["string", "string"]},
    {"properties": {"x": {"minLength": -1}}},
    {"properties": {"x": {"pattern": "^[a-z]+$"}}},
    {"properties": {"x": {"pattern": "("}}},
    {"pattern": "[a-"},
    {"required": ["a", "a"]},
    {"required": "a"},
    {"enum": []},
    {"enum": [1, 1]},
    {"$defs": {"x": {"maximum": "3"}}},
    {"additionalProperties": {"type": "string"}},
    {"additionalProperties": 3},
    {"format": 5},
    {"$id": 5},
    {"items": [{"type": "string"}]},
    {"prefixItems": [{"type": "string"}]},
    {"const": None},
    {"minItems": 1.5},
    {"minItems": 2.0},
]


@pytest.mark.parametrize("document", SCHEMA_FILES, ids=str)
def test_the_load_time_check_refuses_what_jsonschema_refuses(document: Any, tmp_path: Path) -> None:
    """
    The hub checks schema files with jsonschema-rs (fast enough for every start); the
    verdict on a file is the reference's, jsonschema's check_schema.
    """
    try:
        Draft202012Validator.check_schema(document)
        expected = True
    except SchemaError:
        expected = False
    (tmp_path / "THING.json").write_text(json.dumps(document))
    try:
        SchemaCatalog.load(tmp_path)
        verdict = True
    except ConfigurationError as e:
        assert "THING.json: not a valid JSON Schema" in str(e)
        verdict = False
    assert verdict == expected
