"""
The listening sockets: where connectors, dashboards and browsers reach the hub.

A listening socket can outlive the process that serves it. The hub serves one it inherited,
in place of binding its C{--port} or C{--http-port}, when it was given one under that
socket's name (L{WEBSOCKET}, L{HTTP}): by systemd's socket activation (C{LISTEN_FDS} with
C{LISTEN_FDNAMES}, read by Twisted), or by itself across an in-place restart
(L{LISTEN_FDS_ENV}, see L{telemetry_service.restart}). What the endpoint string layers over
the socket (TLS, the PROXY protocol) is kept. While no process accepts, new connections
wait in the kernel's backlog: a restart refuses nobody.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.abstract import FileDescriptor
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorSocket,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from telemetry_service.config import Settings
from telemetry_service.errors import GOING_AWAY, ConfigurationError
from telemetry_service.transport.websocket import TelemetryServerFactory

#: the names of the hub's two sockets, as systemd's FileDescriptorName gives them
WEBSOCKET = "websocket"
HTTP = "http"
#: listening sockets handed to this process by the hub it replaces: C{websocket=5,http=6}
LISTEN_FDS_ENV = "TELEMETRY_LISTEN_FDS"


def inherited_sockets(
    reactor: Any, environ: MutableMapping[str, str] | None = None
) -> dict[str, int]:
    """
    The listening sockets this process was given, by name: by the hub it replaces (read
    once, and taken out of the environment so that no child inherits the claim), else by
    systemd.
    """
    environ = os.environ if environ is None else environ
    handed = environ.pop(LISTEN_FDS_ENV, None)
    if handed is not None:
        try:
            pairs = [item.split("=", 1) for item in handed.split(",") if item]
            return {name: int(fd) for name, fd in pairs}
        except ValueError:
            raise ConfigurationError(f"{LISTEN_FDS_ENV}={handed!r} is not name=fd,...") from None
    found = {}
    for name in (WEBSOCKET, HTTP):
        # Twisted reads (and clears) systemd's variables when its endpoints module is
        # imported; its systemd endpoint is the public way to ask for a socket by name.
        try:
            endpoint = serverFromString(reactor, f"systemd:domain=INET:name={name}")
        except (KeyError, ValueError, IndexError):
            continue
        if isinstance(endpoint, AdoptedStreamServerEndpoint):
            found[name] = endpoint.fileno
    return found


def listening_endpoint(
    reactor: Any, option: str, description: str, inherited: int | None
) -> IStreamServerEndpoint:
    """
    The endpoint to serve C{description} on: bound as it says, or, given a socket this
    process inherited for it, that socket with the layers the description asks for.

    @param option: what the description came from (C{--port}), for the error line.
    @raise ConfigurationError: the description does not parse, or the inherited
        descriptor is not a listening stream socket.
    """
    try:
        if inherited is None:
            endpoint: IStreamServerEndpoint = serverFromString(reactor, description)
            return endpoint
        family = _listening_family(inherited)
        if description.startswith("systemd:"):
            return AdoptedStreamServerEndpoint(reactor, inherited, family)
        endpoint = serverFromString(_Adopting(reactor, inherited, family), description)
        return endpoint
    except (ValueError, TypeError, KeyError, IndexError, OSError) as e:
        raise ConfigurationError(f"bad {option} {description!r}: {e}") from None


def _listening_family(fd: int) -> socket.AddressFamily:
    try:
        with socket.socket(fileno=os.dup(fd)) as probe:
            listening = probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            family = probe.family
            kind = probe.type
    except OSError as e:
        raise ConfigurationError(f"inherited descriptor {fd} is not a socket ({e})") from None
    if kind != socket.SOCK_STREAM or not listening:
        raise ConfigurationError(f"inherited descriptor {fd} is not a listening stream socket")
    return family


class _Adopting:
    """
    A reactor whose C{listenTCP}, C{listenSSL} and C{listenUNIX} adopt one inherited socket
    instead of binding: given to C{serverFromString}, it makes any endpoint that listens
    through them (C{tcp:}, C{ssl:}, C{unix:}, and C{haproxy:} around them) serve that
    socket, with the endpoint's own TLS context or wrapping. Everything else is the reactor.
    """

    def __init__(self, reactor: Any, fd: int, family: socket.AddressFamily) -> None:
        self._reactor = reactor
        self._fd = fd
        self._family = family

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def _adopt(self, factory: Any) -> IListeningPort:
        os.set_blocking(self._fd, False)
        port: IListeningPort = IReactorSocket(self._reactor).adoptStreamPort(
            self._fd, self._family, factory
        )
        # the port holds its own copy; ours would leak into the next restart
        os.close(self._fd)
        return port

    def listenTCP(self, port: int, factory: Any, *args: Any, **kwargs: Any) -> IListeningPort:
        return self._adopt(factory)

    def listenUNIX(self, address: str, factory: Any, *args: Any, **kwargs: Any) -> Any:
        return self._adopt(factory)

    def listenSSL(
        self, port: int, factory: Any, contextFactory: Any, *args: Any, **kwargs: Any
    ) -> IListeningPort:
        return self._adopt(TLSMemoryBIOFactory(contextFactory, False, factory))


class Ports:
    """
    The port numbers the hub listens on, known once it does: the page's Content-Security-
    Policy names the WebSocket's, and the page's own origin may always open a WebSocket.
    Each listener records its own.
    """

    def __init__(self) -> None:
        self._numbers: dict[str, int | None] = {}

    def number(self, name: str) -> int | None:
        """
        The port of the listener called C{name} (L{WEBSOCKET}, L{HTTP}), once it listens.
        """
        return self._numbers.get(name)

    def record(self, name: str, number: int | None) -> None:
        self._numbers[name] = number


class Listener(Service):
    """
    A listening socket as a service (as Twisted's C{StreamServerEndpointService}), with one
    line naming the port when it cannot be had, and a socket that can be handed to the
    process that replaces this one.

    A port that fails while the service starts (in use, no permission, a bad address) raises
    L{ConfigurationError} at once, so twistd and twist end with one line on stderr; an
    endpoint that finishes listening later is simply waited for, and logged when it does.
    """

    _log = Logger()

    def __init__(
        self,
        name: str,
        what: str,
        endpoint: IStreamServerEndpoint,
        description: str,
        factory: Any,
        ports: Ports | None = None,
        inherited: bool = False,
    ) -> None:
        """
        @param name: the socket's name (L{WEBSOCKET}, L{HTTP}), as systemd's units and an
            in-place restart pass it.
        @param what: what the log line calls this listener.
        @param ports: where its port number is recorded once it listens.
        @param inherited: the endpoint serves a socket this process inherited.
        """
        self.setName(name)
        self.what = what
        self.endpoint = endpoint
        self.factory = factory
        self._description = description
        self._ports = ports or Ports()
        self._inherited = inherited
        self._listening: defer.Deferred[Any] | None = None
        self.port: IListeningPort | None = None

    @property
    def port_number(self) -> int | None:
        if self.port is None:
            return None
        number = getattr(self.port.getHost(), "port", None)
        return number if isinstance(number, int) else None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        if self._listening is None:  # twist starts services without the privileged step
            self._listen()

    def _listen(self) -> None:
        starting = True
        failed: list[Failure] = []

        def error(failure: Failure) -> None:
            if starting:
                failed.append(failure)
            elif not failure.check(defer.CancelledError):
                self._log.failure(
                    "Cannot listen on {endpoint}", failure, endpoint=self._description
                )

        listening = self._listening = self.endpoint.listen(self.factory)
        listening.addCallback(self._listened)
        listening.addErrback(error)
        starting = False
        if failed:
            raise ConfigurationError(
                f"cannot listen on {self._description}: {failed[0].value}"
            ) from None

    def _listened(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        address: Any = port.getHost()
        number = getattr(address, "port", None)
        self._ports.record(str(self.name), number)
        where = f"{address.host}:{number}" if number is not None else str(address)
        self._log.info(
            "Telemetry {what} listening on {address} (port {port}{how})",
            what=self.what,
            address=where,
            port=number,
            how=", an inherited socket" if self._inherited else "",
            endpoint=self._description,
        )
        return port

    def handover_problem(self) -> str | None:
        """
        Why this listener's socket could not be handed to a new process, if it could not.
        """
        if not isinstance(self.port, FileDescriptor):
            return f"the {self.what} on {self._description} is not listening on a socket"
        return None

    def pause(self) -> int:
        """
        Stop accepting connections (they wait in the backlog) and give the socket's
        descriptor, to be handed to the process that replaces this one.
        """
        port = self.port
        assert isinstance(port, FileDescriptor), self.handover_problem()
        port.stopReading()
        return port.fileno()

    def stopService(self) -> defer.Deferred[None]:
        """
        Stop listening (or cancel a listen still under way).
        """
        super().stopService()
        listening, self._listening = self._listening, None
        self.port = None
        self._ports.record(str(self.name), None)
        if listening is None:
            return defer.succeed(None)
        listening.cancel()

        def stop(port: IListeningPort | None) -> Any:
            return port.stopListening() if port is not None else None

        return listening.addCallback(stop)


class WebSocketListener(Listener):
    """
    The WebSocket port; on stop, it also closes every connection with 1001 and waits
    briefly for the closing handshakes.
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        description: str,
        factory: TelemetryServerFactory,
        settings: Settings,
        clock: IReactorTime,
        ports: Ports | None = None,
        inherited: bool = False,
    ) -> None:
        super().__init__(
            WEBSOCKET, "WebSocket server", endpoint, description, factory, ports, inherited
        )
        self._settings = settings
        self._clock = clock

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        yield super().stopService()
        yield self.close_connections(GOING_AWAY, "hub shutting down")

    @defer.inlineCallbacks
    def close_connections(self, code: int, reason: str) -> Any:
        """
        Close every connection with C{code}, wait at most C{--shutdown-grace} for the
        peers to answer, then drop whatever is left: a peer that does not answer never
        holds up a stop or a restart.

        A connection still in its opening handshake (a connector's reconnect that came
        just before the listener stopped accepting) is let finish it within that time and
        then closed the same way: it is answered, never reset, so that the client counts
        a closed connection, not a failed attempt (which makes the real connector exit).
        """
        factory: TelemetryServerFactory = self.factory
        factory.closing = (code, reason)
        connections = list(factory.connections)
        if not connections:
            return
        self._log.info(
            "Closing {count} connections with {code} ({reason})",
            count=len(connections),
            code=code,
            reason=reason,
        )
        for protocol in connections:
            if protocol.state != protocol.STATE_CONNECTING:
                protocol.go_away(code, reason)
        deadline = self._clock.seconds() + self._settings.shutdown_grace
        while factory.connections and self._clock.seconds() < deadline:
            yield _sleep(self._clock, 0.01)
        for protocol in list(factory.connections):
            protocol.dropConnection(abort=True)


def _sleep(clock: IReactorTime, seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    clock.callLater(seconds, d.callback, None)
    return d
