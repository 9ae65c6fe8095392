"""
Who may open a WebSocket: the limits on open connections (in all, and from one address),
counted from the TCP connection on, so that connections that never complete a handshake or
never say what they are count too; and, at the handshake, the browser origin and the token
against the hub's access rules. A refusal is an HTTP status at the handshake (503, 429,
403, 401), counted by reason and logged at most once a second with a count of the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autobahn.websocket.types import ConnectionDeny
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from telemetry_service.auth import Access, Grant, presented_token
from telemetry_service.config import Settings
from telemetry_service.errors import shorten
from telemetry_service.ratelimit import TokenBucket


class Admission:
    """
    @ivar connections: every connection counted and not lost yet, in any state.
    @ivar refused: connections refused at the handshake, by reason.
    """

    _log = Logger()

    def __init__(
        self,
        settings: Settings,
        clock: IReactorTime,
        access: Callable[[], Access],
        page_port: Callable[[], int | None],
    ) -> None:
        """
        @param access: the access rules in force (they change on a reload).
        @param page_port: the port of the hub's own page, whose origin may always connect.
        """
        self._max_connections = settings.max_connections
        self._max_per_address = settings.max_connections_per_address
        self._access = access
        self._page_port = page_port
        self.connections: set[Any] = set()
        self._per_address: dict[str, int] = {}
        self.refused: dict[str, int] = {
            "total": 0,
            "per_address": 0,
            "unauthorized": 0,
            "origin": 0,
        }
        self._refusal_log = TokenBucket(clock, 1.0, 5)

    def admit(self, protocol: Any, address: str) -> tuple[int, str] | None:
        """
        Count a new connection; say why it must be refused, if it must.
        """
        self.connections.add(protocol)
        count = self._per_address[address] = self._per_address.get(address, 0) + 1
        if len(self.connections) > self._max_connections:
            return self._refuse(
                "total", 503, f"the hub is at its limit of {self._max_connections} connections"
            )
        if count > self._max_per_address:
            return self._refuse(
                "per_address",
                429,
                f"more than {self._max_per_address} connections from {address}",
            )
        return None

    def leave(self, protocol: Any, address: str | None) -> None:
        if protocol not in self.connections:
            return
        self.connections.discard(protocol)
        if address is not None:
            count = self._per_address.get(address, 1) - 1
            if count:
                self._per_address[address] = count
            else:
                self._per_address.pop(address, None)

    def admit_request(self, request: Any) -> Grant | None:
        """
        Check a handshake's origin and token against the hub's access rules.

        @return: what its token allows (None: it presented none).
        @raise ConnectionDeny: 403 for a foreign origin, 401 for a wrong or missing token.
        """
        access = self._access()
        origin = request.headers.get("origin")
        if not access.origin_allowed(origin, self._own_origins(request.host)):
            raise ConnectionDeny(
                *self._refuse("origin", 403, f"origin {shorten(origin, 100)} is not allowed")
            )
        token = presented_token(request.headers.get("authorization"), request.params.get("token"))
        if token is not None:
            grant = access.authenticate(token)
            if grant is None:
                raise ConnectionDeny(*self._refuse("unauthorized", 401, "unknown token"))
            return grant
        if access.publishing_needs_a_token and access.reading_needs_a_token:
            raise ConnectionDeny(
                *self._refuse("unauthorized", 401, "this hub needs a connector or viewer token")
            )
        return None

    def _own_origins(self, host: str | None) -> tuple[str, ...]:
        port = self._page_port()
        if not host or port is None:
            return ()
        hostname = host.rsplit(":", 1)[0] if host.count(":") == 1 or "]" in host else host
        hostname = hostname.lower()
        origins = [f"http://{hostname}:{port}", f"https://{hostname}:{port}"]
        if port == 80:
            origins.append(f"http://{hostname}")
        if port == 443:
            origins.append(f"https://{hostname}")
        return tuple(origins)

    def _refuse(self, kind: str, status: int, reason: str) -> tuple[int, str]:
        self.refused[kind] += 1
        if self._refusal_log.allow():
            self._log.warn(
                "Refusing a connection at the handshake ({status}): {reason} "
                "({suppressed} more refusals not logged)",
                status=status,
                reason=reason,
                suppressed=self._refusal_log.take_suppressed(),
            )
        return status, reason


def address_key(transport: Any) -> str:
    """
    What the per-address limit counts by: the remote host of a TCP connection (a UNIX
    socket's peers all count as one).
    """
    host = getattr(transport.getPeer(), "host", None)
    return host if isinstance(host, str) else "local"
