"""
Who may publish and who may read: connector and viewer tokens, and the browser origins
allowed to open a WebSocket.

The token file holds one token per line, as a hash, never the token itself::

    # role      name          sha256 of the token                                  nodeIds
    connector   connector-a   sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b...  connector-a
    connector   fleet-west    sha256:60303ae22b998861bce3b28f33eec1be758a213c86c9...  west-*,hub-?
    viewer      ops-team      sha256:fd61a03af4f77d870fc21e05e7e80678095c92d808cf...

A connector token may publish only for the nodeIds its patterns match (C{*} and C{?}
wildcards); a viewer token may only read. C{telemetry-token} makes a token and prints its
line (L{telemetry_service.tools.token}). Tokens are compared by their hash, in constant time
over the whole file.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from telemetry_service.errors import ConfigurationError

CONNECTOR = "connector"
VIEWER = "viewer"
NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_HASH = re.compile(r"^(sha256:)?([0-9a-f]{64})$")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True, eq=False)
class Grant:
    """
    What one token allows.
    """

    role: str
    name: str
    digest: str
    patterns: tuple[str, ...] = ()
    _match: re.Pattern[str] | None = field(default=None, repr=False)

    def may_publish_for(self, node_id: str) -> bool:
        return (
            self.role == CONNECTOR and self._match is not None and bool(self._match.match(node_id))
        )


@dataclass(frozen=True)
class Access:
    """
    The access rules in force: which tokens exist, and which origins may connect.
    """

    grants: tuple[Grant, ...] = ()
    #: None: every origin may connect (the default); else glob patterns of origins
    origins: tuple[str, ...] | None = None
    source: Path | None = None
    #: worked out once: the hub asks for every message
    publishing_needs_a_token: bool = field(init=False)
    reading_needs_a_token: bool = field(init=False)

    def __post_init__(self) -> None:
        roles = {g.role for g in self.grants}
        object.__setattr__(self, "publishing_needs_a_token", CONNECTOR in roles)
        object.__setattr__(self, "reading_needs_a_token", VIEWER in roles)

    @property
    def is_open(self) -> bool:
        return not self.grants and self.origins is None

    def authenticate(self, token: str) -> Grant | None:
        """
        The grant of C{token}, or None; every grant is compared, so the time taken does not
        tell which one (or whether any) matched.
        """
        digest = token_hash(token)
        found = None
        for grant in self.grants:
            if hmac.compare_digest(digest, grant.digest):
                found = grant
        return found

    def may_read(self, grant: Grant | None) -> bool:
        """
        Whether a connection that presented C{grant} (None: no token) may be sent telemetry.
        """
        return not self.reading_needs_a_token if grant is None else grant.role == VIEWER

    def may_publish(self, grant: Grant | None) -> bool:
        """
        Whether a connection that presented C{grant} (None: no token) may send telemetry
        (for some node: see L{Grant.may_publish_for}).
        """
        return not self.publishing_needs_a_token if grant is None else grant.role == CONNECTOR

    def still_valid(self, grant: Grant) -> bool:
        return any(
            g.digest == grant.digest and g.role == grant.role and g.patterns == grant.patterns
            for g in self.grants
        )

    def origin_allowed(self, origin: str | None, own_origins: Sequence[str] = ()) -> bool:
        """
        A request without an Origin header (connectors, command-line clients) is always
        allowed; a browser's only from an allowed origin or the hub's own page.
        """
        if origin is None or self.origins is None:
            return True
        origin = origin.lower().rstrip("/")
        if origin in own_origins:
            return True
        return any(fnmatch.fnmatchcase(origin, pattern) for pattern in self.origins)


def presented_token(authorization: str | None, query: Sequence[str] | None) -> str | None:
    """
    The token a request presents: C{Authorization: Bearer TOKEN}, else (for clients that
    cannot set headers: browsers) C{?token=TOKEN}; None if neither.

    @param authorization: the Authorization header, if any.
    @param query: the values of the C{token} query parameter, if any.
    """
    if authorization and authorization[:7].lower() == "bearer ":
        token = authorization[7:].strip()
        if token:
            return token
    return query[0] if query else None


def parse_origins(text: str) -> tuple[str, ...]:
    origins = tuple(o.strip().lower().rstrip("/") for o in text.split(",") if o.strip())
    if not origins:
        raise ValueError("no origin given")
    for origin in origins:
        if "://" not in origin:
            raise ValueError(f"{origin!r} is not an origin like https://dash.example.com")
    return origins


def load_tokens(path: Path) -> tuple[Grant, ...]:
    """
    Read a token file.

    @raise ConfigurationError: naming the file and line of the first problem; a broken file
        is refused whole.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigurationError(f"token file {path}: cannot be read: {e}") from None
    grants: list[Grant] = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"token file {path}, line {number}"
        if len(fields) < 3:
            raise ConfigurationError(f"{where}: expected 'ROLE NAME sha256:HASH [NODE_IDS]'")
        role, name, digest, *rest = fields
        if role not in (CONNECTOR, VIEWER):
            raise ConfigurationError(f"{where}: role must be connector or viewer, not {role!r}")
        if not NAME.match(name):
            raise ConfigurationError(f"{where}: name {name!r} must be 1-64 of A-Z a-z 0-9 . _ -")
        matched = _HASH.match(digest.lower())
        if matched is None:
            raise ConfigurationError(f"{where}: the hash must be sha256: and 64 hex digits")
        patterns: tuple[str, ...] = ()
        regex = None
        if role == CONNECTOR:
            if len(rest) != 1:
                raise ConfigurationError(
                    f"{where}: a connector token names the nodeIds it may publish for, "
                    "comma-separated (wildcards * and ?)"
                )
            patterns = tuple(p for p in rest[0].split(",") if p)
            regex = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))
        elif rest:
            raise ConfigurationError(f"{where}: a viewer token names no nodeIds")
        grants.append(Grant(role, name, matched.group(2), patterns, regex))
    digests = [g.digest for g in grants]
    if len(set(digests)) != len(digests):
        raise ConfigurationError(f"token file {path}: the same token appears twice")
    return tuple(grants)


def token_line(role: str, name: str, token: str, node_ids: Sequence[str]) -> str:
    line = f"{role:<10} {name:<14} sha256:{token_hash(token)}"
    if role == CONNECTOR:
        line += f"  {','.join(node_ids)}"
    return line
