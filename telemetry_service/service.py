"""
The hub as a running service: starting, stopping, and what the signals ask of it
(SIGTERM and SIGINT stop it, SIGHUP reloads the schema folder and the token file, SIGUSR2
restarts it in place: see L{telemetry_service.restart}).
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorCore, IReactorThreads
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized

from telemetry_service import __version__
from telemetry_service.auth import load_tokens
from telemetry_service.errors import SERVICE_RESTART, ConfigurationError
from telemetry_service.hub import Hub
from telemetry_service.restart import InPlaceRestart, RestartNote, RestartRefused
from telemetry_service.schemas import SchemaCatalog
from telemetry_service.transport.listeners import Listener, WebSocketListener


class TelemetryHubService(MultiService):
    """
    The whole hub, as twistd runs it.
    """

    _log = Logger()
    _rates_timer: LoopingCall | None = None

    def __init__(
        self,
        hub: Hub,
        observer: ILogObserver,
        summary: dict[str, Any],
        reactor: IReactorCore | None = None,
        restart: InPlaceRestart | None = None,
        restarted: RestartNote | None = None,
    ) -> None:
        """
        @param hub: the hub this service runs (exposed for health checks and tests).
        @param reactor: when given, the service takes over SIGTERM and SIGINT from it (see
            L{_take_over_signals}); twistd's wiring passes it, in-process tests do not.
        @param restart: checks the code on disk and replaces this process (SIGUSR2).
        @param restarted: the note of the process this one replaced, to log.
        """
        super().__init__()
        self.hub = hub
        self._observer = observer
        self._summary = summary
        self._reactor = reactor
        self._restart = restart
        self._restarted = restarted
        self._stopping = False
        self._restarting = False
        self._said_starting = False
        #: SIGHUP reloads by outcome, for /metrics
        self.reloads = {"schemas_ok": 0, "schemas_failed": 0, "tokens_ok": 0, "tokens_failed": 0}

    def setServiceParent(self, parent: Any) -> None:
        # twistd builds its Application after makeService returns and then asks that
        # Application for an ILogObserver component; setting it here is how a plugin chooses
        # its own log format and level instead of twistd's default observer.
        if isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self._observer)
        super().setServiceParent(parent)

    def privilegedStartService(self) -> None:
        # twistd calls this first; twist goes straight to startService
        self._take_restart_signal()
        self._starting()
        with self._one_line_on_failure():
            super().privilegedStartService()

    def startService(self) -> None:
        self._starting()
        with self._one_line_on_failure():
            super().startService()
        self.hub.bus.start()
        # the chart's per-second counts close their second here, not per message
        self._rates_timer = LoopingCall(self.hub.rates.roll)
        self._rates_timer.clock = self.hub.rates.clock
        self._rates_timer.start(1.0, now=False)
        self._take_restart_signal()
        if self._reactor is not None:
            self._reactor.callWhenRunning(self._take_over_signals)
        if self._restarted is not None:
            self._said_restarted(self._restarted)

    def _take_restart_signal(self) -> None:
        # Before anything listens, not once the reactor runs: SIGUSR2's default is to end
        # the process, and twistd leaves it alone. (From the exec of a restart until here
        # it is ignored: the replaced process set it so, and exec keeps that.)
        if self._reactor is not None:
            signal.signal(signal.SIGUSR2, self._on_restart_signal)

    def _said_restarted(self, note: RestartNote) -> None:
        # the listeners serve the inherited sockets again by now: they adopt them at once
        now = self._clock_seconds()
        self._log.info(
            "Restarted in place: version {before} -> {after}, not serving for {paused_ms} ms "
            "({start_ms} ms of it starting the new process)",
            before=note.version,
            after=__version__,
            paused_ms=round((now - note.paused) * 1000),
            start_ms=round((now - note.replaced) * 1000),
            asked_ms=round((now - note.asked) * 1000),
        )

    def _clock_seconds(self) -> float:
        seconds: float = self.hub.rates.clock.seconds()
        return seconds

    def _starting(self) -> None:
        if self._said_starting:
            return
        self._said_starting = True
        self._log.info(
            "telemetry-hub {version} starting: {count} message types from {schemas}",
            version=__version__,
            **self._summary,
        )
        access = self.hub.access
        if access.is_open:
            self._log.warn(
                "No tokens and no origin list: anyone who can reach the hub may publish for any "
                "node and read everything (see --tokens and --allowed-origins)"
            )
        else:
            self._log.info(
                "Access: {connectors} connector tokens, {viewers} viewer tokens, origins {origins}",
                connectors=sum(g.role == "connector" for g in access.grants),
                viewers=sum(g.role == "viewer" for g in access.grants),
                origins="any" if access.origins is None else ", ".join(access.origins),
            )

    @contextlib.contextmanager
    def _one_line_on_failure(self) -> Iterator[None]:
        try:
            yield
        except ConfigurationError as e:
            # One clear line and a non-zero exit, not a traceback. twistd has pointed
            # sys.stderr into the log by now, so the line goes to the real stderr too.
            self._log.critical("telemetry: {error}", error=str(e))
            print(f"telemetry: {e}", file=sys.__stderr__, flush=True)
            raise SystemExit(1) from None

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        # the listeners first (every peer gets its 1001), then the store (or Redis), which
        # nothing writes to any more
        yield super().stopService()
        if self._rates_timer is not None and self._rates_timer.running:
            self._rates_timer.stop()
        yield self.hub.bus.close()
        stats = self.hub.stats
        self._log.info(
            "Stopped: {accepted} messages accepted and {rejected} refused since start",
            accepted=stats.accepted,
            rejected=stats.rejected,
        )

    def _take_over_signals(self) -> None:
        """
        Make SIGTERM and SIGINT a graceful stop that exits 0, and SIGHUP a schema reload.

        The reactor's own handlers stop it too, but twistd then re-raises the signal at
        exit, so the process dies "killed by SIGTERM" instead of exiting 0 after its
        orderly shutdown (1001 to every peer), which is what supervisors expect here.
        """
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_reload_signal)

    def _on_signal(self, number: int, frame: object) -> None:
        # A signal handler may run at any point of the reactor's loop; defer the real work.
        reactor = IReactorThreads(self._reactor)
        reactor.callFromThread(self._stop, signal.Signals(number).name)

    def _on_reload_signal(self, number: int, frame: object) -> None:
        IReactorThreads(self._reactor).callFromThread(self.reload)

    def _on_restart_signal(self, number: int, frame: object) -> None:
        IReactorThreads(self._reactor).callFromThread(self.restart)

    @defer.inlineCallbacks
    def restart(self) -> Any:
        """
        SIGUSR2: check the code, schemas and options on disk; if a hub would start with
        them, stop accepting (connections wait in the backlog), close every connection with
        1012, close the store, and replace this process with them, sockets handed over.
        If not, say why and go on serving.
        """
        if self._restart is None or self._stopping or self._restarting:
            why = "stopping" if self._stopping else "already restarting"
            if self._restart is None:
                why = "this hub was not started by twistd"
            self._log.warn("Restart asked for, not taken: {reason}", reason=why)
            return
        self._restarting = True
        asked = self._clock_seconds()
        self._log.info(
            "Restart asked for: checking the code, schemas and options on disk first "
            "(version {version} running)",
            version=__version__,
        )
        try:
            problems = [p for p in map(_handover_problem, self) if p is not None]
            if problems:
                raise RestartRefused("; ".join(problems))
            new_version = yield threads.deferToThread(self._restart.check)
        except RestartRefused as e:
            self._restarting = False
            self._log.error(
                "Restart refused, still serving version {version}: {reason}",
                version=__version__,
                reason=str(e),
            )
            return
        if self._stopping:
            return
        self._log.info(
            "Restarting in place: version {before} -> {after}; connections wait in the "
            "backlog, open ones are closed with 1012",
            before=__version__,
            after=new_version,
        )
        paused = self._clock_seconds()
        try:
            listeners = [s for s in self if isinstance(s, Listener)]
            sockets = {str(listener.name): listener.pause() for listener in listeners}
            for listener in listeners:
                if isinstance(listener, WebSocketListener):
                    yield listener.close_connections(SERVICE_RESTART, "hub restarting")
            if self._rates_timer is not None and self._rates_timer.running:
                self._rates_timer.stop()
            yield self.hub.bus.close()
            if self._stopping:
                return  # SIGTERM meanwhile: the stop goes on, the sockets are closing
            note = RestartNote(__version__, asked, paused, self._clock_seconds())
            self._restart.replace_process(sockets, note)
        except Exception as e:
            # Nothing is left to serve with (connections and store closed): stop, and let
            # the supervisor start the hub again (systemd keeps the sockets meanwhile).
            self._log.failure("Restart failed, stopping: {error}", error=repr(e))
            self._stop("the failed restart")

    def reload(self) -> None:
        """
        SIGHUP: read the schema folder and the token file again.
        """
        for what, reload in (("schemas", self.reload_schemas), ("tokens", self.reload_tokens)):
            self.reloads[f"{what}_{'ok' if reload() else 'failed'}"] += 1

    def reload_tokens(self) -> bool:
        """
        Read the token file again; a broken file is refused whole, keeping the tokens in
        use. Connections whose token is gone are closed.
        """
        current = self.hub.access
        if current.source is None:
            return True
        try:
            grants = load_tokens(current.source)
        except ConfigurationError as e:
            self._log.error(
                "Token reload failed, keeping the {count} tokens in use: {error}",
                count=len(current.grants),
                error=str(e),
            )
            return False
        self.hub.apply_access(replace(current, grants=grants))
        self._log.info(
            "Reloaded {count} tokens from {path}", count=len(grants), path=str(current.source)
        )
        return True

    def reload_schemas(self) -> bool:
        """
        Read the schema folder again and use it from the next message on. A folder that
        fails any check is not used: the hub keeps the schemas it has and says why.
        """
        current = self.hub.catalog
        try:
            fresh = SchemaCatalog.load(current.source)
        except ConfigurationError as e:
            self._log.error(
                "Schema reload failed, keeping the {count} types in use: {error}",
                count=len(current.types),
                error=str(e),
            )
            return False
        self.hub.catalog = fresh
        self._log.info(
            "Reloaded {count} message types from {schemas} (added {added}, removed {removed})",
            count=len(fresh.types),
            schemas=str(fresh.source),
            added=sorted(set(fresh.types) - set(current.types)),
            removed=sorted(set(current.types) - set(fresh.types)),
        )
        return True

    def _stop(self, name: str) -> None:
        assert self._reactor is not None
        if self._stopping:
            self._log.info("Received {signal} again; already shutting down", signal=name)
            return
        self._stopping = True
        self._log.info("Received {signal}, shutting down", signal=name)
        self._reactor.stop()


def _handover_problem(service: Any) -> str | None:
    return service.handover_problem() if isinstance(service, Listener) else None
