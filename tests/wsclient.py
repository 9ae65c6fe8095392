"""
A small Autobahn WebSocket client for the in-process end-to-end tests, plus a server
harness that runs the real hub service on a loopback port.
"""

from __future__ import annotations

import json
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import deferLater

from telemetry_service.options import Options
from telemetry_service.schemas import SchemaCatalog, shipped_schemas_dir
from telemetry_service.service import TelemetryHubService
from telemetry_service.tap import build_service
from telemetry_service.transport.listeners import WebSocketListener

from .fakes import telemetry_only

TIMEOUT = 5.0


class WsClient(WebSocketClientProtocol):
    """
    Collects every message it receives; knows how its connection closed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.inbox: defer.DeferredQueue[Any] = defer.DeferredQueue()
        self.received: list[Any] = []
        self.closed: defer.Deferred[tuple[int | None, str | None]] = defer.Deferred()
        self.opened: defer.Deferred[None] = defer.Deferred()

    def onOpen(self) -> None:
        self.opened.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = json.loads(payload)
        self.received.append(message)
        self.inbox.put(message)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"closed before open: {code} {reason}"))
        if not self.closed.called:
            self.closed.callback((code, reason))

    # -- helpers

    def send(self, message: Any, binary: bool = False) -> None:
        payload = message if isinstance(message, bytes) else json.dumps(message).encode()
        self.sendMessage(payload, isBinary=binary)

    async def next(self, timeout: float = TIMEOUT) -> Any:
        d = self.inbox.get()
        d.addTimeout(timeout, reactor)
        return await d

    async def take(self, count: int, timeout: float = TIMEOUT) -> list[Any]:
        return [await self.next(timeout) for _ in range(count)]

    async def telemetry(self, timeout: float = TIMEOUT) -> Any:
        """The next message from a connector, as it sent it (see fakes.telemetry_only)."""
        while True:
            message = await self.next(timeout)
            (stripped,) = telemetry_only([message]) or [None]
            if stripped is not None:
                return stripped

    async def take_telemetry(self, count: int, timeout: float = TIMEOUT) -> list[Any]:
        return [await self.telemetry(timeout) for _ in range(count)]

    async def quiet(self, seconds: float = 0.2) -> list[Any]:
        """Wait, then return whatever arrived meanwhile (expected: nothing)."""
        await deferLater(reactor, seconds, lambda: None)
        arrived = list(self.inbox.pending)
        return arrived

    async def close_code(self, timeout: float = TIMEOUT) -> int | None:
        d = self.closed
        if not d.called:
            d.addTimeout(timeout, reactor)
        code, _ = await d
        return code

    async def leave(self) -> None:
        if not self.closed.called:
            self.sendClose(1000)
            await self.close_code()


async def connect(port: int, path: str = "/") -> WsClient:
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}{path}")
    factory.protocol = WsClient
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    client: WsClient = await endpoint.connect(factory)
    d = client.opened
    d.addTimeout(TIMEOUT, reactor)
    await d
    return client


async def settle(seconds: float = 0.05) -> None:
    await deferLater(reactor, seconds, lambda: None)


class RunningHub:
    """
    The real hub service (as makeService wires it) listening on 127.0.0.1, in this process.
    """

    def __init__(self, *argv: str) -> None:
        options = Options(environ={})
        options.parseOptions(
            [
                "--port",
                "tcp:0:interface=127.0.0.1",
                "--http-port",
                "tcp:0:interface=127.0.0.1",
                # in-process hubs keep their state in memory unless a test says otherwise;
                # the real process's tests use the default, the sqlite store
                "--store",
                "memory",
                *argv,
            ]
        )
        catalog = SchemaCatalog.load(options.schemas_dir or shipped_schemas_dir())
        self.service: TelemetryHubService = build_service(options, reactor, catalog)
        self.hub = self.service.hub
        self.listener: WebSocketListener = self.service.getServiceNamed("websocket")  # type: ignore[assignment]
        self.clients: list[WsClient] = []

    def start(self) -> RunningHub:
        self.service.privilegedStartService()
        self.service.startService()
        return self

    @property
    def port(self) -> int:
        assert self.listener.port is not None
        return int(self.listener.port.getHost().port)

    @property
    def http_port(self) -> int:
        web: Any = self.service.getServiceNamed("http")
        return int(web.port_number)

    @property
    def factory(self) -> Any:
        return self.listener.factory

    async def connect(self, path: str = "/") -> WsClient:
        client = await connect(self.port, path)
        self.clients.append(client)
        return client

    async def dashboard(self, hello: Any = None) -> WsClient:
        client = await self.connect()
        client.send(hello or {"type": "CLIENT_CONNECT"})
        return client

    async def stop(self) -> None:
        if self.service.running:
            await self.service.stopService()
        for client in self.clients:
            if not client.closed.called:
                client.dropConnection(abort=True)
