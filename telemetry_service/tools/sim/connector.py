"""
One simulated connector's WebSocket connection: it announces itself once, sends what the
simulation gives it, drops what it cannot send, and comes back after a disconnection with the
real connector's backoff.
"""

from __future__ import annotations

import json
from typing import Any

from autobahn.exception import Disconnected
from autobahn.twisted.websocket import WebSocketClientProtocol
from twisted.application.internet import ClientService
from twisted.internet import defer

from telemetry_service.tools.wsclient import HubURL, NoDelayClientProtocol

#: the real connector's backoff between reconnects, in seconds: 1, 2, 4, 8, 16, then 16
BACKOFF_SECONDS = (1.0, 2.0, 4.0, 8.0, 16.0)


class _ConnectorProtocol(NoDelayClientProtocol):
    """Tells its L{SimulatedConnector} when the WebSocket opens and closes."""

    def onOpen(self) -> None:
        self.factory.connector.opened(self)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.connector.closed(self)


class SimulatedConnector:
    """
    One connector node: a connection that comes back with backoff, and what it sends.

    A message for a connection that is gone or closing (the hub sent its close frame, the
    TCP connection is not down yet) is dropped, as a real connector drops it, and counted
    in C{dropped}: one per message not sent. Sending never raises.
    """

    def __init__(
        self,
        node_id: str,
        url: str,
        reactor: Any,
        status: dict[str, Any],
        token: str | None = None,
    ) -> None:
        self.node_id = node_id
        self.status = status
        self.sent: dict[str, int] = {}
        self.dropped = 0
        #: how many times its WebSocket opened (1 + the reconnects)
        self.opens = 0
        self._protocol: _ConnectorProtocol | None = None
        self._announced = False
        self._retries = 0
        self._waiting_for_open: list[defer.Deferred[None]] = []
        hub = HubURL.parse(url)
        # a connector token goes as real connectors would send it: an Authorization header
        factory = hub.factory(_ConnectorProtocol, token)
        factory.connector = self  # type: ignore[attr-defined]
        self.service = ClientService(hub.endpoint(reactor), factory, retryPolicy=self._retry_delay)

    def _retry_delay(self, attempt: int) -> float:
        # ClientService counts attempts from its last TCP connection (and starts at 1 s * 2);
        # the real connector counts from its last open WebSocket: 1, 2, 4, 8, 16, 16, ... s
        self._retries += 1
        return BACKOFF_SECONDS[min(self._retries, len(BACKOFF_SECONDS)) - 1]

    def when_open(self) -> defer.Deferred[None]:
        """Fires once its WebSocket has opened (at once if it has before)."""
        if self.opens:
            return defer.succeed(None)
        waiting: defer.Deferred[None] = defer.Deferred()
        self._waiting_for_open.append(waiting)
        return waiting

    def opened(self, protocol: _ConnectorProtocol) -> None:
        """Its WebSocket is open on C{protocol}: announce the node the first time."""
        self._protocol = protocol
        self.opens += 1
        self._retries = 0
        if not self._announced:
            # NODE_STATUS goes out once, at start-up, as soon as the WebSocket is open (so
            # that the hub stops treating the connection as a listener), not after a reconnect
            self._announced = True
            self.send(self.status)
        waiting, self._waiting_for_open = self._waiting_for_open, []
        for d in waiting:
            d.callback(None)

    def closed(self, protocol: _ConnectorProtocol) -> None:
        """The WebSocket on C{protocol} closed: what is sent meanwhile is dropped."""
        if self._protocol is protocol:
            self._protocol = None

    def send(self, message: dict[str, Any]) -> None:
        """Send C{message} as this node, or drop it if the connection is not open."""
        protocol = self._protocol
        # closing counts as gone: autobahn refuses to send once a close frame has come in,
        # and the connection comes back with the backoff once it is down (see closed)
        if protocol is None or protocol.state != WebSocketClientProtocol.STATE_OPEN:
            self.dropped += 1
            return
        try:
            protocol.sendMessage(json.dumps(message, separators=(",", ":")).encode())
        except Disconnected:
            self.dropped += 1
            return
        self.sent[message["type"]] = self.sent.get(message["type"], 0) + 1
