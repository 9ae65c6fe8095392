"""
The listening sockets: where connectors, dashboards and browsers reach the hub.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.logger import Logger

from telemetry_service.config import Settings
from telemetry_service.errors import ConfigurationError
from telemetry_service.websocket import TelemetryServerFactory


class Listener(StreamServerEndpointService):
    """
    Twisted's endpoint service, with one line naming the port when it cannot be had.

    A port that fails while the service starts (in use, no permission, a bad address) raises
    L{ConfigurationError} at once, so twistd and twist end with one line on stderr; an
    endpoint that finishes listening later is simply waited for, and logged when it does.
    """

    _log = Logger()
    #: what the log line calls this listener
    what = "server"

    def __init__(self, endpoint: Any, description: str, factory: Any) -> None:
        super().__init__(endpoint, factory)
        self._description = description
        # As strports.service does: a failure while starting is raised, not only logged.
        self._raiseSynchronously = True
        self.port: IListeningPort | None = None

    @property
    def port_number(self) -> int | None:
        if self.port is None:
            return None
        number = getattr(self.port.getHost(), "port", None)
        return number if isinstance(number, int) else None

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except Exception as e:
            raise ConfigurationError(f"cannot listen on {self._description}: {e}") from None
        waiting: Any = self._waitingForPort
        waiting.addCallback(self._listening)

    def _listening(self, port: IListeningPort | None) -> IListeningPort | None:
        if port is None:  # failed after the start, and logged by Twisted
            return None
        self.port = port
        address: Any = port.getHost()
        number = getattr(address, "port", None)
        where = f"{address.host}:{number}" if number is not None else str(address)
        self._log.info(
            "Telemetry {what} listening on {address} (port {port})",
            what=self.what,
            address=where,
            port=number,
            endpoint=self._description,
        )
        return port

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        yield super().stopService()
        self.port = None


class WebSocketListener(Listener):
    """
    The WebSocket port; on stop, it also closes every connection with 1001 and waits
    briefly for the closing handshakes.
    """

    what = "WebSocket server"

    def __init__(
        self,
        endpoint: Any,
        description: str,
        factory: TelemetryServerFactory,
        settings: Settings,
        clock: IReactorTime,
    ) -> None:
        super().__init__(endpoint, description, factory)
        self._settings = settings
        self._clock = clock

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        yield super().stopService()
        factory: TelemetryServerFactory = self.factory
        connections = list(factory.connections)
        if not connections:
            return
        self._log.info("Closing {count} connections with 1001 (going away)", count=len(connections))
        for protocol in connections:
            protocol.go_away()
        deadline = self._clock.seconds() + self._settings.shutdown_grace
        while factory.connections and self._clock.seconds() < deadline:
            yield _sleep(self._clock, 0.05)
        for protocol in list(factory.connections):
            protocol.dropConnection(abort=True)


def _sleep(clock: IReactorTime, seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    clock.callLater(seconds, d.callback, None)
    return d
