"""
L{RedisBus}: the bus of a hub that shares Redis with other hubs (see
L{telemetry_service.bus.redis} for the design and the keys), made of the parts beside it:
the L{Outbox} of what Redis has not applied yet, the L{Presence} of this hub's nodes, the
L{StreamReader} that delivers the shared log, and the L{SharedHistory} that resumes are
answered from. The bus holds the connections and says whether Redis is usable.

Redis going away (its connection closed, or a command left unanswered for
C{REPLY_TIMEOUT} seconds: a Redis frozen or cut off by the network): the hub keeps its
sockets and goes on accepting; what it accepts waits in the outbox, sent in order when
Redis is back. Nothing is delivered meanwhile, not even to this hub's own dashboards: their
order has to come from Redis. After every reconnection the bus resyncs: it loads the
scripts, asks which history Redis has, sends again what Redis did not apply, and says which
nodes this hub has. When Redis comes back without its data, the epoch changes: a resume
from before says C{not_recovered}.
"""

from __future__ import annotations

import secrets
from typing import Any

import txredisapi
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from telemetry_service.bus.redis.address import RedisAddress
from telemetry_service.bus.redis.client import LEAN_COMMANDS_MISSING, REPLY_TIMEOUT, connect
from telemetry_service.bus.redis.errorlog import ErrorLog
from telemetry_service.bus.redis.history import HubSide, SharedHistory
from telemetry_service.bus.redis.outbox import Outbox
from telemetry_service.bus.redis.presence import Presence
from telemetry_service.bus.redis.reader import StreamReader
from telemetry_service.bus.redis.scripts import SCRIPTS

PREFIX = "telemetry-hub:"


class RedisBus:
    """
    The bus of a hub that shares Redis with others.

    @ivar hub_id: this process, for presence and batches (a restarted hub is a new hub).
    """

    _log = Logger()
    shared = True

    def __init__(
        self,
        hub: HubSide,
        address: RedisAddress,
        clock: IReactorTime,
        reactor: Any,
        *,
        history_messages: int,
        history_bytes: int,
        max_nodes: int,
        buffer_bytes: int,
        heartbeat: float = 1.0,
        presence_ttl: float = 5.0,
        prefix: str = PREFIX,
    ) -> None:
        self._address = address
        self._clock = clock
        self._reactor = reactor
        self._max_nodes = str(max_nodes).encode()
        self._buffer_limit = buffer_bytes
        self._heartbeat_interval = heartbeat
        self._prefix = prefix.encode()
        self._maxlen = str(history_messages).encode()
        self.hub_id = secrets.token_hex(6)
        self._shas: dict[str, bytes] = {}
        self._commands: Any = None  # the command connection, once resynced
        # the resync under way: one whose session is no longer this one stops
        self._session: object | None = None
        self._flush_call: Any = None
        self._degraded: str | None = f"starting: connecting to Redis at {address}"
        self._down_since: float | None = clock.seconds()
        self._closing = False
        self._factories: list[Any] = []
        self._errors = ErrorLog(self._log, clock)
        self._history = SharedHistory(
            self,
            hub,
            history_messages=history_messages,
            history_bytes=history_bytes,
            prefix=self._prefix,
            hub_id=self.hub_id,
        )
        self._outbox = Outbox(buffer_bytes, clock, lambda: self._degraded, self._schedule_flush)
        self._presence = Presence(
            self._outbox,
            clock,
            presence_ttl,
            self._errors,
            script=self._script,
            usable=self._usable,
            epoch_changed=self._epoch_changed,
        )
        self._reader = StreamReader(
            self._history, hub, self._prefix, self._errors, self._epoch_changed
        )
        self._heartbeat = LoopingCall(self._presence.beat)
        self._heartbeat.clock = clock

    # -- Bus

    @property
    def store(self) -> SharedHistory:
        return self._history

    @property
    def degraded(self) -> str | None:
        return self._degraded

    @property
    def buffered_bytes(self) -> int:
        return self._outbox.buffered_bytes

    @property
    def dropped(self) -> int:
        """
        Messages refused since start: the buffer was full, or Redis refused them.
        """
        return self._outbox.dropped

    @property
    def epoch_changes(self) -> int:
        """
        Epochs seen change since start (Redis lost its data).
        """
        return self._history.epoch_changes

    @property
    def ready(self) -> bool:
        return self._history.known_epoch is not None

    def health(self) -> dict[str, Any]:
        return {
            "kind": "redis",
            "redis": str(self._address),
            "hubId": self.hub_id,
            "degraded": self._degraded,
            "bufferedBytes": self.buffered_bytes,
            "dropped": self.dropped,
        }

    def submit(self, message: dict[str, Any], message_type: str, node_id: str | None) -> None:
        self._outbox.submit(message, message_type, node_id)

    def node_joined(self, node_id: str, event: dict[str, Any]) -> None:
        self._presence.joined(node_id, event)

    def node_left(self, node_id: str, event: dict[str, Any]) -> None:
        self._presence.left(node_id, event)

    def forget_status(self, node_id: str) -> None:
        if self._usable():
            node = node_id.encode()
            self._send(b"HDEL", self._prefix + b"status", node).addErrback(self._errors.unless_lost)
            self._send(b"ZREM", self._prefix + b"order", node).addErrback(self._errors.unless_lost)

    # -- starting and stopping

    def start(self) -> None:
        """
        Connect (and keep reconnecting) to Redis: one connection for commands, one that
        waits in XREAD.
        """
        for up, down in (
            (self._commands_up, self._commands_down),
            (self._reader_up, self._reader_down),
        ):
            self._factories.append(connect(self._address, self._reactor, up, down))
        if LEAN_COMMANDS_MISSING:
            self._log.warn(
                "Redis bus: building commands as txredisapi does (slower): this version "
                "lacks what the lean way uses: {missing}",
                missing="; ".join(LEAN_COMMANDS_MISSING),
            )
        self._log.info(
            "Redis bus: connecting to {redis} as hub {hub}",
            redis=str(self._address),
            hub=self.hub_id,
        )

    @defer.inlineCallbacks
    def close(self) -> Any:
        """
        Send what is waiting, take this hub's nodes offline (unless other hubs have them),
        and disconnect; at most a few seconds.
        """
        self._closing = True
        if self._heartbeat.running:
            self._heartbeat.stop()
        if self._usable():
            self._flush()
            try:
                yield self._presence.goodbye().addTimeout(3.0, self._clock)
            except Exception as e:
                self._log.warn("Redis bus: could not say goodbye: {error}", error=str(e))
        if self.buffered_bytes or self.dropped:
            self._log.warn(
                "Redis bus: stopping with {bytes} bytes of messages not in Redis "
                "({dropped} dropped since start)",
                bytes=self.buffered_bytes,
                dropped=self.dropped,
            )
        for factory in self._factories:
            yield factory.disconnect()

    # -- the connections

    def _usable(self) -> bool:
        return self._commands is not None

    def _commands_up(self, conn: Any) -> None:
        self._resync_on(conn)

    def _commands_down(self, conn: Any) -> None:
        self._session = None
        if self._commands is conn or self._commands is None:
            self._commands = None
            self._went_down(
                f"the command connection to Redis was lost "
                f"(closed, or no answer for {REPLY_TIMEOUT:g} s)"
            )

    def _reader_up(self, conn: Any) -> None:
        self._reader.connected(conn)
        if self._history.known_epoch is not None and self._usable():
            self._reader.start()
            self._came_up()

    def _reader_down(self, conn: Any) -> None:
        if self._reader.lost(conn):
            self._went_down(
                f"the reading connection to Redis was lost "
                f"(closed, or no answer for {REPLY_TIMEOUT:g} s)"
            )

    def _went_down(self, why: str) -> None:
        if self._closing:
            return
        if self._degraded is None:
            self._down_since = self._clock.seconds()
            self._log.error(
                "Redis bus: degraded, {why}; accepting and buffering (up to {limit} bytes) "
                "until it is back",
                why=why,
                limit=self._buffer_limit,
            )
        self._degraded = f"{why} (Redis at {self._address})"

    def _came_up(self) -> None:
        if not self._usable() or self._reader.conn is None or self._degraded is None:
            return
        was = self._degraded
        self._degraded = None
        if was.startswith("starting"):
            self._log.info(
                "Redis bus: connected to {redis}, epoch {epoch}, seq {seq}",
                redis=str(self._address),
                epoch=self._history.known_epoch,
                seq=self._history.last_seq,
            )
        else:
            down = self._clock.seconds() - (self._down_since or self._clock.seconds())
            self._log.info(
                "Redis bus: back after {seconds:.1f} s; {dropped} messages dropped so far",
                seconds=down,
                dropped=self.dropped,
            )

    # -- (re)connecting: the scripts, the history, what was on its way, presence

    def _resync_on(self, conn: Any) -> None:
        session = self._session = object()
        self._resync(conn, session).addErrback(self._resync_failed, conn, session)

    @defer.inlineCallbacks
    def _resync(self, conn: Any, session: object) -> Any:
        def current() -> bool:
            return session is self._session

        for name, source in SCRIPTS.items():
            self._shas[name] = yield conn.execute_command(b"SCRIPT", b"LOAD", source)
        found = yield self._history.resync(conn, self._shas, current)
        if found is not None:
            self._outbox.requeue(found.applied, renumber=found.new_epoch)
            if found.new_epoch:
                # the XREAD waiting now is for entries after a seq of the old history: its
                # answer will be ignored, and the new one (queued behind it) reads from 0
                self._reader.start()
        if not current():
            return
        self._commands = conn
        yield self._presence.sync()
        if not self._heartbeat.running:
            self._heartbeat.start(self._heartbeat_interval, now=False)
        self._flush()
        if not self._reader.reading:
            self._reader.start()
        self._came_up()

    def _resync_failed(self, failure: Failure, conn: Any, session: object) -> None:
        if session is not self._session or self._closing:
            return  # the connection went (again); its return resyncs
        self._errors.error(
            "resync",
            "Redis bus: could not set up with {redis}: {error}; trying again",
            redis=str(self._address),
            error=failure.getErrorMessage(),
        )
        conn.transport.loseConnection()

    def _epoch_changed(self, failure: Failure) -> bool:
        """
        A script found another epoch in Redis (its data was flushed while we were
        connected), or Redis forgot the scripts: resync as after a reconnection.
        """
        if not failure.check(txredisapi.ResponseError):
            return False
        error = str(failure.value)
        # NOSCRIPT: Redis forgot the scripts (SCRIPT FLUSH, a failover to a replica that
        # never loaded them); the resync loads them again
        if not (error.startswith("EPOCH") or error.startswith("NOSCRIPT")):
            return False
        conn = self._commands
        if conn is not None and self._session is not None:
            self._commands = None
            self._resync_on(conn)
        return True

    # -- sending

    def _schedule_flush(self) -> None:
        if self._flush_call is None and self._usable():
            self._flush_call = self._clock.callLater(0, self._flush)

    def _flush(self) -> None:
        """
        Send what was queued during this reactor pass: one script call per batch,
        pipelined on the connection (Redis runs them in order).
        """
        self._flush_call = None
        if not self._usable():
            return
        for batch, args in self._outbox.take():
            d = self._script("submit", str(batch).encode(), self._max_nodes, *args)
            d.addCallbacks(
                self._applied,
                self._not_applied,
                callbackArgs=(batch,),
                errbackArgs=(batch,),
            )

    def _applied(self, last_seq: Any, batch: int) -> None:
        self._outbox.applied(batch)

    def _not_applied(self, failure: Failure, batch: int) -> None:
        if failure.check(txredisapi.ConnectionError):
            return  # still on its way: the resync after the reconnection decides
        if self._epoch_changed(failure):
            return
        count = self._outbox.refused(batch)
        if count is not None:
            self._errors.error(
                "refused",
                "Redis bus: Redis refused {count} messages: {error}",
                count=count,
                error=failure.getErrorMessage(),
            )

    def _script(self, name: str, *args: bytes) -> Deferred[Any]:
        """
        Run one of the scripts, with the arguments every one of them takes first.
        """
        return self._send(
            b"EVALSHA",
            self._shas[name],
            b"0",
            self._prefix,
            (self._history.known_epoch or "").encode(),
            self._maxlen,
            self.hub_id.encode(),
            *args,
        )

    def _send(self, *command: bytes) -> Deferred[Any]:
        conn = self._commands
        if conn is None:
            return defer.fail(txredisapi.ConnectionError("Not connected"))
        try:
            d: Deferred[Any] = conn.execute_command(*command)
        except txredisapi.ConnectionError as e:
            return defer.fail(e)
        return d
