"""
The message catalogue, loaded from JSON Schema files on disk.

Every C{*.json} file directly in the schema folder describes one message type, named by the
file (C{NODE_STATUS.json} is the type C{NODE_STATUS}); the set of accepted types is the set
of files. Files in subfolders (C{common/definitions.json}) are shared definitions that the
type files reference with relative C{$ref}s; they are not types.

Everything is checked at load time: each file must be valid JSON, a valid Draft 2020-12
schema, and every C{$ref} in it must resolve. A folder that fails any check raises
L{ConfigurationError} naming the file, so a bad edit stops the hub at start-up instead of
dropping traffic later.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError, best_match
from referencing import Registry, Resource
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from telemetry_service.errors import (
    MISSING_TYPE,
    SCHEMA_VIOLATION,
    UNKNOWN_TYPE,
    ConfigurationError,
    Rejection,
    shorten,
)

TYPE_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


def shipped_schemas_dir() -> Path:
    """
    The schema folder that ships with the package.

    An installed wheel carries it as C{telemetry_service/schemas}; a source checkout has the
    repository's top-level C{schemas/} beside the package.
    """
    here = Path(__file__).resolve().parent
    installed = here / "schemas"
    if installed.is_dir():
        return installed
    return here.parent / "schemas"


class SchemaCatalog:
    """
    One compiled validator per message type.
    """

    def __init__(self, validators: Mapping[str, Draft202012Validator], source: Path) -> None:
        self._validators = dict(validators)
        self.source = source

    @property
    def types(self) -> list[str]:
        return sorted(self._validators)

    def validate(self, message: Mapping[str, Any]) -> str:
        """
        Check a parsed message against the schema of its type.

        @return: the message type.
        @raise Rejection: with reason C{MISSING_TYPE}, C{UNKNOWN_TYPE} or C{SCHEMA_VIOLATION}.
        """
        message_type = message.get("type")
        if not isinstance(message_type, str) or not message_type:
            raise Rejection(MISSING_TYPE, "message has no non-empty string field 'type'")
        validator = self._validators.get(message_type)
        if validator is None:
            raise Rejection(
                UNKNOWN_TYPE,
                f"no schema for message type {shorten(message_type, 64)!r}",
                messageType=shorten(message_type, 64),
            )
        error = best_match(validator.iter_errors(message))
        if error is not None:
            raise _violation(message_type, error)
        return message_type

    @classmethod
    def load(cls, folder: Path) -> SchemaCatalog:
        """
        Load and check every schema file in C{folder}.

        @raise ConfigurationError: naming the first file that is unreadable, not JSON, not
            a valid schema, or holds a reference that does not resolve.
        """
        if not folder.is_dir():
            raise ConfigurationError(f"schema folder {folder} does not exist or is not a folder")
        documents: dict[Path, dict[str, Any]] = {}
        for path in sorted(folder.rglob("*.json")):
            documents[path] = _read_schema(path)
        type_files = {p.stem: p for p in documents if p.parent == folder}
        if not type_files:
            raise ConfigurationError(f"schema folder {folder} holds no *.json message schemas")
        for name, path in type_files.items():
            if not TYPE_NAME.match(name):
                raise ConfigurationError(
                    f"schema file {path}: a message type file must be named like "
                    f"NODE_STATUS.json (upper case, digits, underscores)"
                )
        registry: Registry[Any] = Registry().with_resources(
            (path.resolve().as_uri(), Resource.from_contents(doc, DRAFT202012))
            for path, doc in documents.items()
        )
        validators = {}
        for name, path in type_files.items():
            schema = documents[path]
            _check_references(path, schema, registry)
            validators[name] = Draft202012Validator(schema, registry=registry)
        return cls(validators, folder)


def _read_schema(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigurationError(f"schema file {path}: cannot be read: {e}") from None
    try:
        document = json.loads(text)
    except ValueError as e:
        raise ConfigurationError(f"schema file {path}: not valid JSON: {e}") from None
    if not isinstance(document, dict):
        raise ConfigurationError(f"schema file {path}: a schema must be a JSON object")
    try:
        Draft202012Validator.check_schema(document)
    except SchemaError as e:
        where = "/".join(str(p) for p in e.path) or "(top level)"
        raise ConfigurationError(
            f"schema file {path}: not a valid JSON Schema at {where}: {shorten(e.message, 200)}"
        ) from None
    # Relative $refs resolve against the file's own location, like links between files.
    document.setdefault("$id", path.resolve().as_uri())
    return document


def _check_references(path: Path, schema: dict[str, Any], registry: Registry[Any]) -> None:
    resolver = registry.resolver(base_uri=schema["$id"])
    for ref in _references(schema):
        try:
            resolver.lookup(ref)
        except Unresolvable as e:
            raise ConfigurationError(
                f"schema file {path}: $ref {ref!r} does not resolve ({type(e).__name__})"
            ) from None


def _references(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item)


def _violation(message_type: str, error: ValidationError) -> Rejection:
    path = error.json_path
    rule = str(error.validator)
    if rule == "pattern":
        # The raw regex tells a connector developer little; the schema's description more.
        what = f"{shorten(error.instance, 60)!s} does not have the required format"
    else:
        what = shorten(error.message)
    description = error.schema.get("description") if isinstance(error.schema, dict) else None
    if isinstance(description, str):
        what = f"{what}; expected {shorten(description, 100)}"
    return Rejection(
        SCHEMA_VIOLATION,
        f"{message_type} at {shorten(path, 80)}: {what} (rule {rule!r})",
        messageType=message_type,
        path=shorten(path, 80),
        rule=rule,
    )
