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

Messages are validated by C{jsonschema-rs}, a compiled validator about 400 times faster
than the C{jsonschema} package on these schemas (about 1 us a message instead of 400 us,
most of it C{$ref} resolution). It checks the schema files at load time too (the
metaschema, formats such as C{regex}, and every C{$ref}): the pure-Python C{jsonschema}
took most of the hub's start-up for that. The test suite keeps C{jsonschema} as the
reference, and proves the two give the same verdict on the shipped schemas.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import jsonschema_rs
import orjson

from telemetry_service.errors import (
    MISSING_TYPE,
    SCHEMA_VIOLATION,
    UNKNOWN_TYPE,
    ConfigurationError,
    Rejection,
    shorten,
)

TYPE_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
#: types only the hub itself emits (see hub.py); no schema file may let a connector send them
RESERVED_TYPES = frozenset({"NODE_PRESENCE", "RESUME", "ERROR"})


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

    @ivar documents: every schema file's contents, by its C{file:} URI.
    @ivar type_uris: the URI of each message type's file, by type name.
    """

    def __init__(
        self,
        documents: Mapping[str, dict[str, Any]],
        type_uris: Mapping[str, str],
        source: Path,
    ) -> None:
        self.documents = dict(documents)
        self.type_uris = dict(type_uris)
        self.source = source
        registry = jsonschema_rs.Registry(list(self.documents.items()))
        self._validators = {
            name: _compile(uri, self.documents[uri], registry)
            for name, uri in self.type_uris.items()
        }

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
        if not validator.is_valid(message):
            raise self._violation(message_type, validator, message)
        return message_type

    def _violation(self, message_type: str, validator: Any, message: Any) -> Rejection:
        """
        Describe the first error: where (a JSONPath), which rule (the schema keyword), what.
        """
        error = next(iter(validator.iter_errors(message)))
        path = _json_path(error.instance_path)
        rule = str(error.schema_path[-1]) if error.schema_path else "schema"
        if rule == "pattern":
            # The raw regex tells a connector developer little; the schema's description more.
            what = f"{shorten(_json_text(error.instance), 60)} does not have the required format"
        else:
            what = shorten(error.message)
        description = self._description(error.absolute_keyword_location)
        if description:
            what = f"{what}; expected {shorten(description, 100)}"
        return Rejection(
            SCHEMA_VIOLATION,
            f"{message_type} at {shorten(path, 80)}: {what} (rule {rule!r})",
            messageType=message_type,
            path=shorten(path, 80),
            rule=rule,
        )

    def _description(self, location: str | None) -> str | None:
        """
        The C{description} of the subschema whose keyword failed, if it has one.
        """
        if not location or "#" not in location:
            return None
        uri, pointer = location.split("#", 1)
        node: Any = self.documents.get(uri)
        for token in pointer.split("/")[1:-1]:
            token = token.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict):
                node = node.get(token)
            elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
                node = node[int(token)]
            else:
                return None
        description = node.get("description") if isinstance(node, dict) else None
        return description if isinstance(description, str) else None

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
            if name in RESERVED_TYPES:
                raise ConfigurationError(
                    f"schema file {path}: {name} is sent by the hub itself and cannot be "
                    f"accepted from connectors"
                )
            if not TYPE_NAME.match(name):
                raise ConfigurationError(
                    f"schema file {path}: a message type file must be named like "
                    f"NODE_STATUS.json (upper case, digits, underscores)"
                )
        registry = _registry(folder, documents)
        for path, schema in documents.items():
            _check_references(path, schema, registry)
            if path.parent != folder:
                # a shared file is compiled only through the types that use it: compile it
                # whole, so that what no type uses yet is checked too (a bad regex, say)
                _compile(schema["$id"], schema, registry)
        return cls(
            {path.resolve().as_uri(): doc for path, doc in documents.items()},
            {name: path.resolve().as_uri() for name, path in type_files.items()},
            folder,
        )


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
        jsonschema_rs.meta.validate(document)
    except jsonschema_rs.ValidationError as e:
        raise _not_a_schema(path.resolve().as_uri(), e) from None
    # Relative $refs resolve against the file's own location, like links between files.
    document.setdefault("$id", path.resolve().as_uri())
    return document


def _compile(uri: str, schema: dict[str, Any], registry: jsonschema_rs.Registry) -> Any:
    """
    The compiled validator of one schema file; compiling also checks what the metaschema
    alone does not (formats such as C{regex}).
    """
    try:
        return jsonschema_rs.validator_for(schema, registry=registry)
    except jsonschema_rs.ValidationError as e:
        raise _not_a_schema(uri, e) from None
    except (jsonschema_rs.ReferencingError, ValueError) as e:
        raise ConfigurationError(
            f"schema file {_file_of(uri)}: cannot be used: {shorten(str(e), 200)}"
        ) from None


def _not_a_schema(uri: str, error: jsonschema_rs.ValidationError) -> ConfigurationError:
    where = "/".join(str(p) for p in error.instance_path) or "(top level)"
    return ConfigurationError(
        f"schema file {_file_of(uri)}: not a valid JSON Schema at {where}: "
        f"{shorten(error.message, 200)}"
    )


def _file_of(uri: str) -> str:
    return uri.removeprefix("file://")


def _registry(folder: Path, documents: dict[Path, dict[str, Any]]) -> jsonschema_rs.Registry:
    """
    Every file by its URI, for C{$ref}s between them. A file that a C{$ref} names but the
    folder does not hold is named with the file that refers to it.
    """
    missing: list[str] = []

    def retrieve(uri: str) -> Any:
        missing.append(uri)
        raise LookupError(uri)

    try:
        return jsonschema_rs.Registry(
            [(doc["$id"], doc) for doc in documents.values()], retriever=retrieve
        )
    except ValueError as e:
        for path, schema in documents.items():
            for ref in _references(schema):
                if urljoin(schema["$id"], ref).split("#", 1)[0] in missing:
                    raise ConfigurationError(
                        f"schema file {path}: $ref {ref!r} does not resolve (Unresolvable)"
                    ) from None
        raise ConfigurationError(f"schema folder {folder}: {shorten(str(e), 200)}") from None


def _check_references(path: Path, schema: dict[str, Any], registry: jsonschema_rs.Registry) -> None:
    resolver = registry.resolver(schema["$id"])
    for ref in _references(schema):
        try:
            resolver.lookup(ref)
        except jsonschema_rs.ReferencingError:
            raise ConfigurationError(
                f"schema file {path}: $ref {ref!r} does not resolve (Unresolvable)"
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


def _json_path(parts: list[str | int]) -> str:
    path = "$"
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.isidentifier():
            path += f".{part}"
        else:
            path += f"[{part!r}]"
    return path


def _json_text(value: object) -> str:
    text: str = orjson.dumps(value).decode("utf-8") if _is_json(value) else repr(value)
    return text


def _is_json(value: object) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, list, dict))
