"""
C{twistd telemetry [options]}: the plugin's L{Options} (options.py) and L{makeService},
which only builds the objects and connects them, in one straight line of constructor calls.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping

from twisted.internet.interfaces import IReactorCore, IReactorTime

from telemetry_service.auth import Access, load_tokens
from telemetry_service.bus.base import Bus
from telemetry_service.endofpass import EndOfPass
from telemetry_service.errors import ConfigurationError
from telemetry_service.history.memory import MemoryStore, MessageStore
from telemetry_service.history.sqlite import SqliteStore
from telemetry_service.http.metrics import registry as metrics_registry
from telemetry_service.http.site import build_site
from telemetry_service.hub import Hub
from telemetry_service.logs import make_observer
from telemetry_service.options import Options
from telemetry_service.restart import InPlaceRestart, RestartNote
from telemetry_service.schemas import SchemaCatalog
from telemetry_service.service import TelemetryHubService
from telemetry_service.settlement import TYPES as SETTLEMENT_TYPES
from telemetry_service.settlement import SettlementState
from telemetry_service.transport.listeners import (
    HTTP,
    WEBSOCKET,
    Listener,
    Ports,
    WebSocketListener,
    inherited_sockets,
    listening_endpoint,
)
from telemetry_service.transport.outbound import prepared_fanout
from telemetry_service.transport.websocket import TelemetryServerFactory

#: what twistd's plugin reads of this module
__all__ = ["Options", "build_service", "check_configuration", "makeService"]


def check_configuration(options: Options) -> None:
    """
    Read what a start with these options reads besides them, as it would (the check
    before an in-place restart): the schema folder, the token file, and the modules that
    only some options import.

    @raise ConfigurationError: saying what would stop the start.
    """
    from twisted.internet import reactor

    SchemaCatalog.load(options.schemas_dir)
    if options.tokens_file is not None:
        load_tokens(options.tokens_file)
    if options.redis is not None:
        import telemetry_service.bus.redis.bus  # noqa: F401
    for option, description in (
        ("--port", options.endpoint),
        ("--http-port", options.http_endpoint),
    ):
        # parsed, never listened on (an ssl: endpoint reads its key and certificate now);
        # a systemd: one names sockets only the hub itself holds
        if description is not None and not description.startswith("systemd:"):
            listening_endpoint(reactor, option, description, None)


def build_service(
    options: Options,
    reactor: IReactorCore,
    catalog: SchemaCatalog,
    handle_signals: bool = False,
    inherited: Mapping[str, int] | None = None,
    restart: InPlaceRestart | None = None,
    restarted: RestartNote | None = None,
) -> TelemetryHubService:
    """
    Wire schemas, hub, factory and listeners under one service.

    @param inherited: listening sockets this process was given, by name (see listeners).
    @param restart: how the service restarts in place on SIGUSR2.
    @param restarted: the note of the process this one replaced, if it did.
    """
    settings = options.settings
    inherited = inherited or {}
    clock = IReactorTime(reactor)
    ports = Ports()
    end_of_pass = EndOfPass(clock)
    access = Access(
        load_tokens(options.tokens_file) if options.tokens_file else (),
        options.allowed_origins,
        options.tokens_file,
    )
    hub = Hub(
        catalog,
        settings,
        clock=clock,
        fanout=prepared_fanout,
        store=_store(options, clock, end_of_pass),
        log_broadcasts=options.log_level == "debug",
        access=access,
        bus=_redis_bus(options, clock, reactor),
    )
    settlement = SettlementState(clock)
    hub.add_observer(settlement.observe, SETTLEMENT_TYPES)
    factory = TelemetryServerFactory(
        hub, settings, clock, end_of_pass, page_port=lambda: ports.number(HTTP)
    )
    service = TelemetryHubService(
        hub=hub,
        observer=make_observer(options.log_level, options.log_format, sys.stdout),
        summary={"count": len(catalog.types), "schemas": str(catalog.source)},
        reactor=reactor if handle_signals else None,
        restart=restart,
        restarted=restarted,
    )
    WebSocketListener(
        listening_endpoint(reactor, "--port", options.endpoint, inherited.get(WEBSOCKET)),
        options.endpoint,
        factory,
        settings,
        clock,
        ports,
        WEBSOCKET in inherited,
    ).setServiceParent(service)
    if options.http_endpoint is not None:
        site = build_site(
            hub,
            settlement,
            lambda: ports.number(WEBSOCKET),
            clock,
            metrics=metrics_registry(hub, factory, lambda: service.reloads),
        )
        Listener(
            HTTP,
            "page and /health",
            listening_endpoint(reactor, "--http-port", options.http_endpoint, inherited.get(HTTP)),
            options.http_endpoint,
            site,
            ports,
            HTTP in inherited,
        ).setServiceParent(service)
    return service


def _store(options: Options, clock: IReactorTime, end_of_pass: EndOfPass) -> MessageStore | None:
    """
    The history of a hub on its own (None with --redis: the Redis bus brings its own).
    """
    settings = options.settings
    if options.redis is not None:
        return None
    if options.store == "memory":
        return MemoryStore(settings.history_messages, settings.history_bytes)
    return SqliteStore(
        options.state_dir,
        settings.history_messages,
        settings.history_bytes,
        clock,
        end_of_pass=end_of_pass,
    )


def _redis_bus(
    options: Options, clock: IReactorTime, reactor: IReactorCore
) -> Callable[[Hub], Bus] | None:
    """
    With --redis, what makes the bus the hub shares with the other hubs; else None.
    """
    address = options.redis
    if address is None:
        return None
    from telemetry_service.bus.redis.bus import RedisBus

    settings = options.settings

    def bus(hub: Hub) -> Bus:
        return RedisBus(
            hub,
            address,
            clock,
            reactor,
            history_messages=settings.history_messages,
            history_bytes=settings.history_bytes,
            max_nodes=settings.max_nodes,
            buffer_bytes=settings.redis_buffer_bytes,
        )

    return bus


def makeService(options: Options, reactor: IReactorCore | None = None) -> TelemetryHubService:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    assert reactor is not None
    try:
        catalog = SchemaCatalog.load(options.schemas_dir)
        return build_service(
            options,
            reactor,
            catalog,
            handle_signals=True,
            inherited=inherited_sockets(reactor),
            restart=InPlaceRestart(options.arguments),
            restarted=RestartNote.from_environment(),
        )
    except ConfigurationError as e:
        raise SystemExit(f"telemetry: {e}") from None
