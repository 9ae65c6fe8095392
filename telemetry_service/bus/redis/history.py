"""
The history as a hub on Redis sees it: the newest messages of the shared log, in memory,
and which history (epoch) that is.

A hub keeps the newest messages it read from the stream in a L{MemoryStore}, so that a
resume is answered at once, from memory. After every (re)connection it asks Redis which
history Redis has (L{SharedHistory.resync}): at start-up it loads it; when Redis lost its
data, the history is a new one, and so is the ring; when Redis lost only its last writes
(it came back from a disk a second behind), seqs this hub delivered would be given to
other messages, so it makes a new epoch rather than that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from telemetry_service.history.memory import MemoryStore, StoredMessage, new_epoch

#: entries per XREAD, and a tenth of a chunk of the history read at start-up
READ_COUNT = 1000


class HubSide(Protocol):
    """
    What the bus needs of the hub.
    """

    def deliver(self, stored: StoredMessage, message: dict[str, Any] | None = None) -> None: ...

    def restore(
        self, statuses: Iterable[tuple[str, int, bytes]], online: Iterable[str]
    ) -> None: ...

    def reset_presence(self, online: Iterable[str]) -> None: ...


class BusSide(Protocol):
    """
    What the history needs of the bus (L{RedisBus<telemetry_service.bus.redis.bus.RedisBus>}).
    """

    @property
    def degraded(self) -> str | None: ...

    def forget_status(self, node_id: str) -> None: ...

    def close(self) -> Deferred[None]: ...


class Resynced(NamedTuple):
    """
    What a resync found, for the batches on their way.
    """

    #: the history in Redis is another one than this hub's (Redis lost its data): what was
    #: on its way goes again as new batches, and the reading starts again from the new
    #: history's first entry
    new_epoch: bool
    #: the last batch of this hub that Redis applied, in the history this hub knows (0 at
    #: start-up, when nothing was on its way yet)
    applied: int = 0


class SharedHistory:
    """
    The hub's view of the history in Redis (a L{MessageStore} for the hub's resumes). Its
    ring is replaced when the epoch changes or the stream skipped ahead of it.

    @ivar known_epoch: the epoch of the history this hub loaded, or None before; the ring
        before that has an epoch no client can name, so every resume says not_recovered.
    @ivar epoch_changes: epochs seen change since start (Redis lost its data).
    """

    _log = Logger()

    def __init__(
        self,
        bus: BusSide,
        hub: HubSide,
        *,
        history_messages: int,
        history_bytes: int,
        prefix: bytes,
        hub_id: str,
    ) -> None:
        self._bus = bus
        self._hub = hub
        self._messages = history_messages
        self._bytes = history_bytes
        self._prefix = prefix
        self._hub_id = hub_id.encode()
        self.ring = MemoryStore(history_messages, history_bytes)
        self.known_epoch: str | None = None
        self.epoch_changes = 0
        self._kinds: dict[bytes, str] = {}

    # -- MessageStore

    @property
    def epoch(self) -> str:
        return self.ring.epoch

    @property
    def last_seq(self) -> int:
        return self.ring.last_seq

    def __len__(self) -> int:
        return len(self.ring)

    @property
    def size_bytes(self) -> int:
        return self.ring.size_bytes

    @property
    def degraded(self) -> str | None:
        return self._bus.degraded

    def append(self, message: StoredMessage) -> None:
        self.ring.append(message)

    def after(self, seq: int, limit: int) -> Sequence[StoredMessage] | None:
        return self.ring.after(seq, limit)

    def commit(self) -> None:
        # nothing to do: a message is delivered only once Redis has it
        pass

    def node_statuses(self) -> Sequence[tuple[str, int, bytes]]:
        return ()

    def node_status_changed(self, node_id: str, seq: int, payload: bytes | None) -> None:
        # new statuses are written by the submit script; a forgotten node is forgotten in
        # Redis too (every hub forgets the same nodes: they see the same messages)
        if payload is None:
            self._bus.forget_status(node_id)

    def close(self) -> Deferred[None]:
        return self._bus.close()

    # -- the log

    def parse(self, entry: Any) -> StoredMessage:
        """
        A message of the log as Redis gives it: C{[b"<seq>-0", [b"<type>\\0<nodeId>",
        payload, ...]]}.
        """
        entry_id, values = entry
        field, payload = values[0], values[1]
        kind, _, node = field.partition(b"\0")
        type_name = self._kinds.get(kind)
        if type_name is None:
            type_name = self._kinds[kind] = kind.decode()
        return StoredMessage(
            int(entry_id[:-2]), type_name, node.decode() if node else None, payload
        )

    def skipped(self, count: int) -> None:
        """
        The stream was trimmed past messages this hub had not read (it lagged by more than
        the history): they are gone; start the ring again after them.
        """
        self._log.error(
            "Redis bus: {count} messages were trimmed from Redis before this hub read them; "
            "its dashboards miss them, and resumes from before them say not_recovered",
            count=count,
        )
        ring = self.ring
        self.ring = MemoryStore(self._messages, self._bytes, ring.epoch, ring.last_seq + count)

    # -- which history Redis has

    @defer.inlineCallbacks
    def resync(self, conn: Any, scripts: Mapping[str, bytes], current: Callable[[], bool]) -> Any:
        """
        Find which history Redis has, after a (re)connection, and take it up.

        @param conn: the command connection.
        @param scripts: the SHA-1 of each script, loaded on C{conn}.
        @param current: whether the connection is still the one to resync; once it is
            not, nothing more is done.
        @return: (a L{Deferred} of) a L{Resynced}, or None if C{current} stopped being
            true.
        """
        epoch = (yield self._init(conn, scripts)).decode()
        if not current():
            return None
        if self.known_epoch is None:
            yield self._load(conn, epoch, scripts, current)
            return Resynced(new_epoch=False) if current() else None
        if epoch != self.known_epoch:
            online = yield conn.execute_command(b"SMEMBERS", self._prefix + b"online")
            if not current():
                return None
            self._new_epoch(epoch, online)
            return Resynced(new_epoch=True)
        seq = int((yield conn.execute_command(b"GET", self._prefix + b"seq")) or 0)
        if seq >= self.ring.last_seq:
            applied = yield conn.execute_command(
                b"GET", self._prefix + b"batch:%s:%s" % (epoch.encode(), self._hub_id)
            )
            return Resynced(new_epoch=False, applied=int(applied or 0))
        # Redis came back from its disk without its last writes (appendfsync everysec loses
        # up to a second): seqs this hub delivered would be given to other messages. A new
        # epoch, for every hub, rather than that.
        self._log.error(
            "Redis bus: Redis is at seq {seq} but this hub delivered up to {last}: "
            "it lost its last writes; starting a new epoch",
            seq=seq,
            last=self.ring.last_seq,
        )
        epoch = (yield self._init(conn, scripts, epoch)).decode()
        if not current():
            return None
        online = yield conn.execute_command(b"SMEMBERS", self._prefix + b"online")
        if not current():
            return None
        self._new_epoch(epoch, online)
        return Resynced(new_epoch=True)

    def _init(self, conn: Any, scripts: Mapping[str, bytes], replace: str = "") -> Any:
        """
        The epoch in Redis, made (with a fresh history) if Redis has none or has
        C{replace}.
        """
        args = (replace.encode(),) if replace else ()
        return conn.execute_command(
            b"EVALSHA", scripts["init"], b"0", self._prefix, new_epoch().encode(), *args
        )

    @defer.inlineCallbacks
    def _load(
        self, conn: Any, epoch: str, scripts: Mapping[str, bytes], current: Callable[[], bool]
    ) -> Any:
        """
        At start-up: the replay cache, presence and history as of one seq.
        """
        seq, flat, online = yield conn.execute_command(
            b"EVALSHA", scripts["load"], b"0", self._prefix
        )
        seq = int(seq)
        statuses = []
        for i in range(0, len(flat), 2):
            node, value = flat[i].decode(), flat[i + 1]
            status_seq, _, payload = value.partition(b" ")
            statuses.append((node, int(status_seq), payload))
        # the newest messages up to seq, newest first, in chunks
        entries: list[Any] = []
        end = f"{seq}-0".encode()
        while len(entries) < self._messages:
            count = min(READ_COUNT * 10, self._messages - len(entries))
            chunk = yield conn.execute_command(
                b"XREVRANGE", self._prefix + b"log", end, b"-", b"COUNT", str(count).encode()
            )
            entries.extend(chunk)
            if len(chunk) < count:
                break
            end = b"(" + chunk[-1][0]
        if not current():
            return
        first = int(entries[-1][0][:-2]) if entries else seq + 1
        ring = MemoryStore(self._messages, self._bytes, epoch, first - 1)
        for entry in reversed(entries):
            ring.append(self.parse(entry))
        self.ring = ring
        self.known_epoch = epoch
        self._hub.restore(statuses, [n.decode() for n in online])
        self._log.info(
            "Redis bus: loaded {count} messages (to seq {seq}), {nodes} node statuses, "
            "{online} nodes online elsewhere",
            count=len(ring),
            seq=seq,
            nodes=len(statuses),
            online=len(online),
        )

    def _new_epoch(self, epoch: str, online: Iterable[bytes]) -> None:
        """
        Redis lost its data: a new history, from seq 1. Presence is what Redis says now
        (C{online}, then the presence events of the new history): the old one's events
        this hub did not read are gone with it.
        """
        self._log.warn(
            "Redis bus: Redis lost its data (epoch {old} is gone, now {new}); dashboards "
            "that resume from before are told not_recovered",
            old=self.known_epoch,
            new=epoch,
        )
        self.epoch_changes += 1
        self.known_epoch = epoch
        self.ring = MemoryStore(self._messages, self._bytes, epoch)
        self._hub.reset_presence(node.decode() for node in online)
