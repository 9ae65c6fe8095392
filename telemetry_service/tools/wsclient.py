"""
The command-line tools' end of a WebSocket connection to a hub: where a C{ws://} or
C{wss://} URL leads, the token that goes with it, and the socket option they all want.

C{telemetry-tail} and the simulator's connectors and latency meter connect through it, so a
C{wss://} URL is TLS for every one of them, its certificate checked against the URL's host
name. C{telemetry-healthcheck} does not: it checks a C{ws://} handshake with the standard
library alone, so that it runs where only Python is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.util import parse_url
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS

from telemetry_service.transport.tcp import set_no_delay

#: what the tools accept, for the error that refuses anything else
EXPECTED = "expected ws://HOST[:PORT][/PATH] or wss://HOST[:PORT][/PATH]"


class UnsupportedURLError(ValueError):
    """
    A URL the tools cannot connect to: not C{ws://} or C{wss://}, no host, a bad port.
    """


@dataclass(frozen=True)
class HubURL:
    """
    A hub's WebSocket URL, and what it takes to connect to it.

    @ivar url: the URL as given, which the WebSocket opening handshake sends.
    @ivar secure: C{True} for C{wss://}: TLS, the certificate checked for C{host}.
    @ivar host: the host name or address, lower case, without brackets around IPv6.
    @ivar port: the URL's port, else 80 for C{ws://} and 443 for C{wss://}.
    """

    url: str
    secure: bool
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> HubURL:
        """
        Read a C{ws://} or C{wss://} URL, with the rules Autobahn's handshake applies.

        @raise UnsupportedURLError: for any other URL; its message says what is wrong, in
            one line.
        """
        try:
            secure, host, port, _, _, _ = parse_url(url)
        except ValueError as e:
            reason = str(e).removeprefix("invalid WebSocket URL: ")
            raise UnsupportedURLError(
                f"not a WebSocket URL: {url!r} ({reason}; {EXPECTED})"
            ) from None
        if not isinstance(port, int):
            # Autobahn reads ws://unix:/path as a Unix socket's path
            raise UnsupportedURLError(
                f"not a WebSocket URL: {url!r} (a Unix socket, which the tools do not open; "
                f"{EXPECTED})"
            )
        return cls(url, secure, host, port)

    def endpoint(self, reactor: Any) -> IStreamClientEndpoint:
        """
        Where to connect: TCP for C{ws://}; for C{wss://}, TLS over TCP, which checks the
        hub's certificate against the platform's trusted authorities and the URL's host.
        """
        if self.secure:
            return wrapClientTLS(
                optionsForClientTLS(self.host), HostnameEndpoint(reactor, self.host, self.port)
            )
        return TCP4ClientEndpoint(reactor, self.host, self.port)

    def factory(
        self, protocol: type[WebSocketClientProtocol], token: str | None = None
    ) -> WebSocketClientFactory:
        """
        A client factory of C{protocol} for this URL, sending C{token} (if any) as a
        bearer token.
        """
        factory = WebSocketClientFactory(self.url, headers=bearer(token))
        factory.protocol = protocol
        return factory


def bearer(token: str | None) -> dict[str, str] | None:
    """
    The opening handshake's extra headers for C{token}: C{Authorization: Bearer TOKEN}, as
    the real connector sends its token; C{None} without one.
    """
    return {"Authorization": f"Bearer {token}"} if token else None


class NoDelayClientProtocol(WebSocketClientProtocol):
    """
    A WebSocket client that sends each message at once.

    Autobahn never turns Nagle off itself; without it a small message can wait ~40 ms for
    the ACK of the one before, and a simulated hop's event arrives out of step with the
    other connectors'.
    """

    def connectionMade(self) -> None:
        super().connectionMade()
        set_no_delay(self.transport)
