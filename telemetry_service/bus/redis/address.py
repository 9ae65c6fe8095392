"""
Where Redis is, as C{--redis} says it. Kept apart from the bus, and free of txredisapi:
parsing the option must not import the client (a good part of a start's imports).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint

from telemetry_service.errors import ConfigurationError


@dataclass(frozen=True)
class RedisAddress:
    """
    Where Redis is: C{redis://[[user]:password@]host[:port][/db]} or
    C{unix:///path/to/redis.sock[?db=N]}.
    """

    url: str
    host: str | None
    port: int
    path: str | None
    db: int
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        """
        @raise ConfigurationError: C{url} is not one of the two forms.
        """
        parts = urlsplit(url.strip())
        try:
            if parts.scheme == "redis":
                db = int(parts.path.strip("/") or 0)
                return cls(
                    url,
                    parts.hostname or "localhost",
                    parts.port or 6379,
                    None,
                    db,
                    unquote(parts.username) if parts.username else None,
                    unquote(parts.password) if parts.password else None,
                )
            if parts.scheme == "unix" and parts.path:
                query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
                return cls(url, None, 0, parts.path, int(query.get("db", 0)), None, None)
        except ValueError as e:
            raise ConfigurationError(f"bad --redis {url!r}: {e}") from None
        raise ConfigurationError(
            f"bad --redis {url!r}: expected redis://host:port/db or unix:///path/redis.sock"
        )

    def endpoint(self, reactor: Any) -> IStreamClientEndpoint:
        if self.path is not None:
            return UNIXClientEndpoint(reactor, self.path, timeout=5)
        assert self.host is not None
        return HostnameEndpoint(reactor, self.host, self.port, timeout=5)

    def __str__(self) -> str:
        # never the password, which goes to logs and /health
        if self.path is not None:
            return f"unix://{self.path} db {self.db}"
        return f"{self.host}:{self.port} db {self.db}"
