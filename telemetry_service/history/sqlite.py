"""
The hub's state in one SQLite file, so that a restart (a deploy, a crash, C{kill -9})
loses nothing: the history with its epoch and last C{seq}, and the replay cache.

The invariant: B{within one epoch, a seq always names the same message}. So a message goes
out to clients only once it is stored durably enough to survive the process dying: the
hub calls L{SqliteStore.commit} at the end of every reactor pass, before that pass's
frames leave (see C{websocket.WriteBatcher}).

Committing a pass straight into SQLite costs more than everything else the hub does for a
message (its cost per transaction and per byte, measured: a quarter of the hub's
throughput). So a commit is one C{write()} of the pass's messages to a journal file beside
the database, which hands them to the operating system: enough for a process crash. About
once a second the journal is absorbed into the database in a thread of the store's own
(SQLite lets go of Python's lock while it works), in one transaction of few, large rows;
then that journal file is deleted. At start-up the database is read, then whatever
journal is left is replayed on top of it.

A machine crash or power loss can lose what the operating system had not written to disk
(no C{fsync} per commit). The hub cannot prove the invariant then, so it starts a new
epoch. It tells the two cases apart by the kernel's boot id, kept in the database while the
hub runs: a file not closed cleanly by a hub of this same boot means the machine went down.

Reads never touch the files: the history is also held in a L{MemoryStore} (the same
bounds), filled at start-up.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
from twisted.internet import defer, threads
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from telemetry_service.errors import ConfigurationError
from telemetry_service.history.memory import MemoryStore, StoredMessage, new_epoch
from telemetry_service.vocabulary import message_node

#: the layout of the files; a database of another version is migrated, or set aside
FORMAT = 2
FILENAME = "hub-state.sqlite3"
JOURNAL = "hub-state.journal"
#: the journal being absorbed into the database (or left by a crash while it was)
ABSORBING = "hub-state.journal.absorbing"
#: seconds between absorbing the journal into the database: within a second of a node's
#: status changing (after a machine crash the journal is not read, so this is what such a
#: crash can lose of the replay cache), and every ABSORB_EVERY seconds (or past
#: ABSORB_BYTES of journal) otherwise: only what the history still holds is written then,
#: so the less often, the less work
ABSORB_STATUSES_EVERY = 1.0
ABSORB_EVERY = 5.0
ABSORB_BYTES = 64 * 1024 * 1024
#: history rows in the database hold up to this many bytes of messages each: few rows, so
#: few transitions in and out of SQLite for the store's thread, but small enough that
#: joining one (which holds Python's lock) never keeps the reactor waiting long
_ROW_BYTES = 64 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS history (
    first_seq INTEGER PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    messages BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS node_status (
    node_id TEXT PRIMARY KEY,
    first_report INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    payload BLOB NOT NULL
);
"""

# -- the message chunk: messages with contiguous seqs, in one blob

_COUNT = struct.Struct("<I")


def encode_chunk(payloads: Sequence[bytes]) -> bytes:
    """
    Messages as broadcast, in one blob: their count, their lengths, then the messages. What
    else the history keeps of a message (its type and node) is in the message itself.
    """
    count = len(payloads)
    lengths = struct.pack(f"<{count}I", *map(len, payloads))
    return b"".join([_COUNT.pack(count), lengths, *payloads])


def decode_chunk(first_seq: int, data: bytes) -> list[StoredMessage]:
    """
    The messages of a chunk, or of several chunks joined (a database row), seqs from
    C{first_seq} on.
    """
    messages = []
    pos, seq = 0, first_seq
    while pos < len(data):
        (count,) = _COUNT.unpack_from(data, pos)
        lengths = struct.unpack_from(f"<{count}I", data, pos + _COUNT.size)
        pos += _COUNT.size + 4 * count
        for length in lengths:
            payload = data[pos : pos + length]
            if len(payload) != length:
                raise ValueError("a history chunk ends inside a message")
            kind, node_id = _type_and_node(payload)
            messages.append(StoredMessage(seq, kind, node_id, payload))
            pos += length
            seq += 1
    return messages


def _type_and_node(payload: bytes) -> tuple[str, str | None]:
    """
    A message's type, and the node it counts as (for filters).
    """
    message = orjson.loads(payload)
    return str(message.get("type")), message_node(message)


# -- the journal: records, each with its length and checksum

#: kind and body length. No checksum: the journal is read only after the process died
#: (after a machine crash it is not trusted at all, see SqliteStore._load), and then its
#: records are exactly what was written, but for the last one, which may be cut short.
_RECORD = struct.Struct("<cI")
_HISTORY = b"H"  # body: first seq, last seq, then a message chunk
_STATUS = b"S"  # body: seq, first report, nodeId length, nodeId, then the status
_FORGET = b"F"  # body: the nodeId
_SEQS = struct.Struct("<qq")
_STATUS_HEAD = struct.Struct("<qqH")


def _record(kind: bytes, *body: bytes) -> list[bytes]:
    """
    One journal record as the pieces to write (no copy of a chunk just to frame it).
    """
    return [_RECORD.pack(kind, sum(len(p) for p in body)), *body]


def read_journal(path: Path) -> Iterator[tuple[bytes, bytes]]:
    """
    (kind, body) of every whole record in a journal file. A record cut short at the end
    (a write the process did not finish) is not one: nothing was sent for it.

    @raise ValueError: a record of an unknown kind (the file is not what it should be).
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    pos, header = 0, _RECORD.size
    while pos + header <= len(data):
        kind, length = _RECORD.unpack_from(data, pos)
        if kind not in (_HISTORY, _STATUS, _FORGET):
            raise ValueError(f"{path.name}: not a journal record at byte {pos}")
        end = pos + header + length
        if end > len(data):
            return  # cut short: the last write never finished
        yield kind, data[pos + header : end]
        pos = end


def boot_id() -> str | None:
    """
    The kernel's id of this boot (Linux), or None where there is none to read.
    """
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


class UnusableStateError(Exception):
    """
    The state files cannot be used as they are (corrupt, unreadable, another format).
    """


class _DaemonThread(threading.Thread):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, daemon=True, **kwargs)


RunInThread = Callable[[Callable[[], None]], defer.Deferred[None]]


class SqliteStore(MemoryStore):
    """
    A L{MessageStore} kept in C{state_dir}: C{hub-state.sqlite3} and its journal. It is the
    in-memory history (it reads from it), loaded from the files, that also writes them.

    @ivar degraded: why the files are no longer written, or None while they are.
    @ivar recovery: what start-up found: C{"new"}, C{"continued"}, C{"new epoch: ..."}.
    """

    _log = Logger()

    def __init__(
        self,
        state_dir: Path,
        max_messages: int,
        max_bytes: int,
        clock: IReactorTime,
        this_boot: str | None = None,
        run_in_thread: RunInThread | None = None,
    ) -> None:
        """
        @param clock: the reactor (a fake clock in tests); absorbing runs on it.
        @param this_boot: the boot id to compare with the file's (default: the kernel's).
        @param run_in_thread: runs an absorb away from the reactor; by default a thread of
            the store's own (tests pass one that runs it at once).
        @raise ConfigurationError: the state folder cannot be made or written, another hub
            holds it, or another process has the database open.
        """
        self._dir = state_dir
        self._path = state_dir / FILENAME
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._clock = clock
        self._boot = this_boot if this_boot is not None else boot_id()
        self._pool: ThreadPool | None = None
        self._run_in_thread = run_in_thread or self._own_thread(clock)
        # this pass's messages and status changes, not yet in the journal
        self._pass: list[bytes] = []
        self._pass_first = 0
        self._pass_statuses: dict[str, tuple[int, bytes | None]] = {}
        # in the journal, not yet in the database: message chunks and the statuses
        self._unabsorbed: deque[tuple[int, int, bytes]] = deque()
        self._journal_bytes = 0
        self._unabsorbed_statuses: dict[str, tuple[int, int, bytes | None]] = {}
        self._first_reports: dict[str, int] = {}
        self._next_first_report = 1
        self._scheduled: IDelayedCall | None = None
        #: asks for the end of the reactor pass (set by the write batcher)
        self.on_pending: Callable[[], None] | None = None
        self._absorbing: defer.Deferred[None] | None = None
        self._journal_fd = -1
        self.degraded: str | None = None
        self._lock = self._take_lock()
        try:
            try:
                self._conn, loaded, self._statuses, self.recovery = self._open()
            except UnusableStateError as e:
                self._set_aside(str(e))
                self._conn, loaded, self._statuses, self.recovery = self._open()
                self.recovery = f"new epoch: {e}"
            self._journal_fd = os.open(
                self._dir / JOURNAL, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
            )
        except BaseException:
            self._lock.close()
            raise
        # what was loaded is this store's history now
        self.__dict__.update(loaded.__dict__)
        self._last_absorb = clock.seconds()
        self._absorber = LoopingCall(self._absorb_when_due)
        self._absorber.clock = clock
        self._absorber.start(ABSORB_STATUSES_EVERY, now=False)
        self._log.info(
            "State in {path}: {recovery} (epoch {epoch}, seq {seq}, {messages} messages, "
            "{nodes} nodes)",
            path=str(self._path),
            recovery=self.recovery,
            epoch=self.epoch,
            seq=self.last_seq,
            messages=len(self),
            nodes=len(self._statuses),
        )

    # -- start-up

    def _own_thread(self, reactor: Any) -> RunInThread:
        """
        One thread of the store's own, so that absorbs run one at a time, beside the reactor
        rather than in its way. It is a daemon: a hub that ends is never held up by it (an
        absorb cut short is rolled back by SQLite; the journal still holds it all).
        """
        pool = self._pool = ThreadPool(minthreads=1, maxthreads=1, name="hub-store")
        pool.threadFactory = _DaemonThread

        def run(work: Callable[[], None]) -> defer.Deferred[None]:
            if not pool.started:
                pool.start()
            return threads.deferToThreadPool(reactor, pool, work)

        return run

    def _take_lock(self) -> Any:
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            lock = open(self._dir / "hub.lock", "a+")  # noqa: SIM115 (held while the hub runs)
        except OSError as e:
            raise ConfigurationError(f"cannot use state folder {self._dir}: {e}") from None
        import fcntl

        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise ConfigurationError(
                f"state folder {self._dir} is in use by another hub; give each hub its own "
                "--state-dir"
            ) from None
        return lock

    def _open(
        self,
    ) -> tuple[sqlite3.Connection, MemoryStore, list[tuple[str, int, bytes]], str]:
        existed = self._path.exists()
        try:
            # written by the store's thread while the hub runs, by the reactor's only at
            # start-up and at the close, never both at once
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise UnusableStateError(f"cannot open it ({e})") from None
        try:
            conn.execute("PRAGMA busy_timeout=2000")
            # one hub per file (hub.lock says so): no file locking on every transaction
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            if existed:
                check = conn.execute("PRAGMA quick_check").fetchone()
                if check is None or check[0] != "ok":
                    raise UnusableStateError(f"it is corrupt ({check and check[0]})")
            conn.executescript(_SCHEMA)
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if meta:
                version = int(meta.get("format", "0"))
                if version != FORMAT:
                    raise UnusableStateError(
                        f"it is in format {version}, this hub reads format {FORMAT}"
                    )
            journal_left = any((self._dir / name).exists() for name in (ABSORBING, JOURNAL))
            memory, statuses, recovery = self._load(conn, meta)
            # What start-up found is the new starting point: in the database, not the
            # journal. After a clean stop the database holds exactly that already, and
            # writing the whole history again would double the time to start.
            if journal_left or recovery != "continued":
                self._rewrite(conn, memory, statuses)
        except sqlite3.OperationalError as e:
            conn.close()
            if "locked" in str(e) or "busy" in str(e):
                # another process has the file open: nothing is wrong with it
                raise ConfigurationError(
                    f"state file {self._path} is in use by another process ({e})"
                ) from None
            raise UnusableStateError(f"it cannot be read ({e})") from None
        except (sqlite3.Error, ValueError) as e:
            conn.close()
            raise UnusableStateError(f"it cannot be read ({e})") from None
        except UnusableStateError:
            conn.close()
            raise
        # This hub holds the files now, and has not closed them cleanly yet.
        self._write_meta(
            conn,
            format=str(FORMAT),
            epoch=memory.epoch,
            last_seq=str(memory.last_seq),
            boot=self._boot or "",
            clean="0",
        )
        return conn, memory, statuses, recovery

    def _load(
        self, conn: sqlite3.Connection, meta: dict[str, str]
    ) -> tuple[MemoryStore, list[tuple[str, int, bytes]], str]:
        statuses: dict[str, tuple[int, bytes]] = {}
        for node_id, first_report, seq, payload in conn.execute(
            "SELECT node_id, first_report, seq, payload FROM node_status ORDER BY first_report"
        ):
            statuses[node_id] = (seq, bytes(payload))
            self._first_reports[node_id] = first_report
            self._next_first_report = first_report + 1
        if not meta:
            if (self._dir / JOURNAL).exists() or (self._dir / ABSORBING).exists():
                raise UnusableStateError("a journal was left without its database")
            return MemoryStore(self._max_messages, self._max_bytes), [], "new"
        epoch, last_seq = meta["epoch"], int(meta["last_seq"])
        memory = self._load_history(conn, epoch, last_seq)
        why_not = self._why_not_continue(meta)
        if memory is not None and why_not is None:
            # The process died, the operating system kept every write: what the journal
            # holds on top of the database, statuses included. After a machine crash its
            # tail may be anything, so it is not read: the statuses are the database's (at
            # most a second old, see ABSORB_EVERY).
            try:
                self._replay_journal(memory, statuses)
            except (ValueError, struct.error, UnicodeDecodeError) as e:
                why_not = str(e)
        elif why_not is None:
            why_not = "its history does not end where its last seq says"
        for node_id in statuses:
            if node_id not in self._first_reports:
                self._first_reports[node_id] = self._next_first_report
                self._next_first_report += 1
        listed = [(n, seq, payload) for n, (seq, payload) in statuses.items()]
        if why_not is None and memory is not None:
            return memory, listed, "continued"
        # The seqs in the files cannot be trusted: a new epoch, going on from the last seq
        # (so that numbers only grow), with no history; the nodes' statuses still hold.
        last = max(last_seq, memory.last_seq if memory is not None else 0)
        conn.execute("DELETE FROM history")
        memory = MemoryStore(self._max_messages, self._max_bytes, new_epoch(), last)
        self._log.warn(
            "State in {path}: starting a new epoch, {why}", path=str(self._path), why=why_not
        )
        return memory, listed, f"new epoch: {why_not}"

    def _why_not_continue(self, meta: dict[str, str]) -> str | None:
        if meta.get("clean") == "1":
            return None
        if self._boot is None:
            return "the last hub did not stop cleanly and this system has no boot id"
        if meta.get("boot") != self._boot:
            return "the machine went down while the last hub ran (its last writes may be lost)"
        return None  # the process died, the operating system kept every write

    def _load_history(
        self, conn: sqlite3.Connection, epoch: str, last_seq: int
    ) -> MemoryStore | None:
        rows = conn.execute(
            "SELECT first_seq, last_seq, messages FROM history ORDER BY first_seq"
        ).fetchall()
        first = rows[0][0] if rows else last_seq + 1
        memory = MemoryStore(self._max_messages, self._max_bytes, epoch, first - 1)
        for first_seq, row_last, data in rows:
            if first_seq != memory.last_seq + 1:
                return None
            for message in decode_chunk(first_seq, bytes(data)):
                memory.append(message)
            if memory.last_seq != row_last:
                return None
        return memory if memory.last_seq == last_seq else None

    def _replay_journal(self, memory: MemoryStore, statuses: dict[str, tuple[int, bytes]]) -> None:
        """
        Apply the journal files left behind (an absorb that never finished, then the
        journal proper) to what the database held.
        """
        for name in (ABSORBING, JOURNAL):
            for kind, body in read_journal(self._dir / name):
                if kind == _HISTORY:
                    first, last = _SEQS.unpack_from(body)
                    if last <= memory.last_seq:
                        continue  # already in the database
                    if first != memory.last_seq + 1:
                        raise ValueError(f"{name}: seq {first} does not follow {memory.last_seq}")
                    for message in decode_chunk(first, body[_SEQS.size :]):
                        memory.append(message)
                elif kind == _STATUS:
                    seq, first_report, size = _STATUS_HEAD.unpack_from(body)
                    node_id = body[_STATUS_HEAD.size : _STATUS_HEAD.size + size].decode()
                    statuses[node_id] = (seq, body[_STATUS_HEAD.size + size :])
                    self._first_reports.setdefault(node_id, first_report)
                    self._next_first_report = max(self._next_first_report, first_report + 1)
                elif kind == _FORGET:
                    node_id = body.decode()
                    statuses.pop(node_id, None)
                    self._first_reports.pop(node_id, None)
        # the replayed statuses in first-report order
        ordered = sorted(statuses.items(), key=lambda item: self._first_reports[item[0]])
        statuses.clear()
        statuses.update(ordered)

    def _rewrite(
        self,
        conn: sqlite3.Connection,
        memory: MemoryStore,
        statuses: list[tuple[str, int, bytes]],
    ) -> None:
        """
        At start-up: put what was found (database and journal) in the database, and start
        with an empty journal.
        """
        messages = list(memory.after(memory.first_seq - 1, len(memory)) or ())
        conn.execute("BEGIN")
        conn.execute("DELETE FROM history")
        conn.executemany("INSERT INTO history VALUES (?, ?, ?)", _rows(messages))
        conn.execute("DELETE FROM node_status")
        conn.executemany(
            "INSERT INTO node_status (node_id, first_report, seq, payload) VALUES (?, ?, ?, ?)",
            [(n, self._first_reports[n], seq, payload) for n, seq, payload in statuses],
        )
        conn.execute("COMMIT")
        for name in (ABSORBING, JOURNAL):
            with contextlib.suppress(FileNotFoundError):
                (self._dir / name).unlink()

    def _set_aside(self, why: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock.seconds()))
        for name in (FILENAME, JOURNAL, ABSORBING):
            path = self._dir / name
            aside = self._dir / f"{name}.unusable-{stamp}"
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(f"{path}{suffix}", f"{aside}{suffix}")
        self._log.error(
            "State file {path} set aside as {aside}: {why}; starting a new epoch",
            path=str(self._path),
            aside=f"{self._path}.unusable-{stamp}",
            why=why,
        )

    @staticmethod
    def _write_meta(conn: sqlite3.Connection, **values: str) -> None:
        conn.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(values.items())
        )

    # -- MessageStore (reading is the in-memory history's)

    def append(self, message: StoredMessage) -> None:
        MemoryStore.append(self, message)
        if self.degraded is None:
            payloads = self._pass
            if not payloads:
                self._pass_first = message.seq
                self._schedule()
            payloads.append(message.payload)

    def node_statuses(self) -> Sequence[tuple[str, int, bytes]]:
        return self._statuses

    def node_status_changed(self, node_id: str, seq: int, payload: bytes | None) -> None:
        if self.degraded is None:
            self._pass_statuses[node_id] = (seq, payload)
            self._schedule()

    def _schedule(self) -> None:
        # The pass's writes are committed at its end, sent to any dashboard or not: by the
        # write batcher, which ends every pass anyway (on_pending), or on our own.
        if self.on_pending is not None:
            self.on_pending()
        elif self._scheduled is None:
            self._scheduled = self._clock.callLater(0, self._scheduled_commit)

    def _scheduled_commit(self) -> None:
        self._scheduled = None
        self.commit()

    def commit(self) -> None:
        """
        Hand this pass's messages and status changes to the operating system: one record
        each for the journal, in one write.
        """
        if not (self._pass or self._pass_statuses) or self.degraded is not None:
            return
        records: list[bytes] = []
        payloads, self._pass = self._pass, []
        if payloads:
            first = self._pass_first
            last = first + len(payloads) - 1
            chunk = encode_chunk(payloads)
            records += _record(_HISTORY, _SEQS.pack(first, last), chunk)
            unabsorbed = self._unabsorbed
            unabsorbed.append((first, last, chunk))
            # what the history no longer holds need not go into the database: memory for
            # the next absorb stays within the history's bounds
            keep_from = self.first_seq
            while unabsorbed[0][1] < keep_from:
                unabsorbed.popleft()
        changes, self._pass_statuses = self._pass_statuses, {}
        for node_id, (seq, payload) in changes.items():
            node = node_id.encode()
            if payload is None:
                records += _record(_FORGET, node)
                self._first_reports.pop(node_id, None)
                self._unabsorbed_statuses[node_id] = (0, 0, None)
                continue
            first_report = self._first_reports.get(node_id)
            if first_report is None:
                first_report = self._first_reports[node_id] = self._next_first_report
                self._next_first_report += 1
            head = _STATUS_HEAD.pack(seq, first_report, len(node))
            records += _record(_STATUS, head, node, payload)
            self._unabsorbed_statuses[node_id] = (seq, first_report, payload)
        try:
            written = _write_all(self._journal_fd, records)
        except OSError as e:
            self._fail(e)
            return
        self._journal_bytes += written
        if self._journal_bytes > ABSORB_BYTES:
            self._absorb()

    # -- absorbing the journal into the database

    def _absorb_when_due(self) -> None:
        if self._clock.seconds() - self._last_absorb >= ABSORB_EVERY:
            self._absorb()
        elif self._unabsorbed_statuses or self._pass_statuses:
            self._absorb_statuses()

    def _absorb_statuses(self) -> None:
        """
        Only the nodes' statuses into the database (the journal keeps everything, and is
        absorbed whole later): what a machine crash could lose of the replay cache is a
        second's worth at most.
        """
        if self._absorbing is not None or self.degraded is not None:
            return
        self.commit()
        statuses, self._unabsorbed_statuses = self._unabsorbed_statuses, {}
        done = self._absorbing = self._run_in_thread(lambda: self._write(None, statuses, 0, 0))
        done.addCallbacks(self._statuses_absorbed, self._absorb_failed)

    def _statuses_absorbed(self, _: object) -> None:
        self._absorbing = None

    def _absorb(self) -> defer.Deferred[None]:
        """
        Move what the journal holds into the database, in the store's thread: the journal
        is renamed aside for it (the hub goes on writing a new one), and deleted once the
        database has it.
        """
        if self._absorbing is not None:
            return self._absorbing
        self.commit()
        if not (self._unabsorbed or self._unabsorbed_statuses) or self.degraded is not None:
            return defer.succeed(None)
        self._last_absorb = self._clock.seconds()
        try:
            os.close(self._journal_fd)
            os.replace(self._dir / JOURNAL, self._dir / ABSORBING)
            self._journal_fd = os.open(
                self._dir / JOURNAL, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
            )
        except OSError as e:
            self._fail(e)
            return defer.succeed(None)
        # only what the history still holds: older messages would be trimmed at once
        keep_from = self.first_seq
        chunks = [c for c in self._unabsorbed if c[1] >= keep_from]
        self._unabsorbed.clear()
        statuses, self._unabsorbed_statuses = self._unabsorbed_statuses, {}
        self._journal_bytes = 0
        last = self.last_seq
        done = self._absorbing = self._run_in_thread(
            lambda: self._write(chunks, statuses, keep_from, last)
        )
        done.addCallbacks(self._absorbed, self._absorb_failed)
        return done

    def _write(
        self,
        chunks: list[tuple[int, int, bytes]] | None,
        statuses: dict[str, tuple[int, int, bytes | None]],
        keep_from: int,
        last_seq: int,
    ) -> None:
        """
        One transaction, in the store's thread: few, large history rows, the statuses, the
        history's new start, the last seq (the statuses only when C{chunks} is None).
        """
        conn = self._conn
        conn.execute("BEGIN")
        try:
            if chunks is not None:
                conn.executemany(
                    "INSERT OR REPLACE INTO history (first_seq, last_seq, messages) "
                    "VALUES (?, ?, ?)",
                    _merged(chunks),
                )
                conn.execute("DELETE FROM history WHERE last_seq < ?", (keep_from,))
                self._write_meta(conn, last_seq=str(last_seq))
            for node_id, (seq, first_report, payload) in statuses.items():
                if payload is None:
                    conn.execute("DELETE FROM node_status WHERE node_id = ?", (node_id,))
                else:
                    conn.execute(
                        "INSERT INTO node_status (node_id, first_report, seq, payload) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT (node_id) DO UPDATE SET "
                        "seq = excluded.seq, payload = excluded.payload",
                        (node_id, first_report, seq, payload),
                    )
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def _absorbed(self, _: object) -> None:
        self._absorbing = None
        with contextlib.suppress(FileNotFoundError):
            (self._dir / ABSORBING).unlink()

    def _absorb_failed(self, failure: Failure) -> None:
        self._absorbing = None
        error = failure.value
        if not isinstance(error, sqlite3.Error):
            self._log.failure("Absorbing the journal into the database failed", failure)
        self._fail(error if isinstance(error, Exception) else RuntimeError(str(error)))

    # -- failure and the end

    def _fail(self, error: Exception) -> None:
        """
        The files can no longer be written (a full disk, say). The hub carries on from
        memory, and the files are set aside so that no later start continues the epoch:
        clients may already have seen seqs the files do not hold.
        """
        if self.degraded is not None:
            return
        self.degraded = f"cannot write {self._dir}: {error}"
        self._pass.clear()
        self._pass_statuses.clear()
        self._unabsorbed.clear()
        self._unabsorbed_statuses.clear()
        if self._absorber.running:
            self._absorber.stop()
        with contextlib.suppress(OSError):
            os.close(self._journal_fd)
        if self._absorbing is None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
        self._set_aside(f"writing it failed ({error})")

    def close(self) -> defer.Deferred[None]:
        """
        Absorb what is left, mark the database closed cleanly, synced to disk, and let go
        of the folder.
        """
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None
        if self._absorber.running:
            self._absorber.stop()
        return defer.ensureDeferred(self._close())

    async def _close(self) -> None:
        if self.degraded is None:
            self.commit()
            if self._absorbing is not None:
                await self._absorbing
            await self._absorb()
        if self.degraded is None:
            try:
                self._write_meta(self._conn, last_seq=str(self.last_seq), clean="1")
                # with synchronous=NORMAL a checkpoint syncs the WAL, then the database
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._conn.close()
                os.close(self._journal_fd)
                (self._dir / JOURNAL).unlink()
            except (sqlite3.Error, OSError) as e:
                self._fail(e)
        # whatever comes now (nothing should) stays in memory
        self.degraded = self.degraded or "closed"
        if self._pool is not None and self._pool.started:
            self._pool.stop()
        self._lock.close()


#: the most pieces one writev() takes (POSIX's IOV_MAX, 1024 on Linux); a pass may hold more
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


def _write_all(fd: int, parts: list[bytes]) -> int:
    """
    Write the pieces in order, in one system call unless there are more than one call
    takes (a pass with hundreds of node statuses) or the file takes less.
    """
    if len(parts) > _IOV_MAX:
        return sum(_write_all(fd, parts[i : i + _IOV_MAX]) for i in range(0, len(parts), _IOV_MAX))
    total = sum(len(p) for p in parts)
    written = os.writev(fd, parts)
    if written < total:
        rest = memoryview(b"".join(parts))[written:]
        while rest:
            rest = rest[os.write(fd, rest) :]
    return total


def _rows(messages: Sequence[StoredMessage]) -> list[tuple[int, int, bytes]]:
    """
    History rows of up to C{_ROW_BYTES} of messages each.
    """
    rows: list[tuple[int, int, bytes]] = []
    start = 0
    size = 0
    for index, message in enumerate(messages):
        size += len(message.payload)
        if size >= _ROW_BYTES or index == len(messages) - 1:
            part = messages[start : index + 1]
            rows.append((part[0].seq, part[-1].seq, encode_chunk([m.payload for m in part])))
            start, size = index + 1, 0
    return rows


def _merged(chunks: list[tuple[int, int, bytes]]) -> list[tuple[int, int, bytes]]:
    """
    Contiguous journal chunks joined into rows of up to C{_ROW_BYTES}.
    """
    rows: list[tuple[int, int, bytes]] = []
    parts: list[bytes] = []
    first = last = size = 0
    for chunk_first, chunk_last, data in chunks:
        if parts and (chunk_first != last + 1 or size + len(data) > _ROW_BYTES):
            rows.append((first, last, b"".join(parts)))
            parts, size = [], 0
        if not parts:
            first = chunk_first
        parts.append(data)
        last = chunk_last
        size += len(data)
    if parts:
        rows.append((first, last, b"".join(parts)))
    return rows
