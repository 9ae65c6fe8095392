"""
The hub's state in one SQLite file, so that a restart (a deploy, a crash, C{kill -9})
loses nothing: the history with its epoch and last C{seq}, and the replay cache.

The invariant: B{within one epoch, a seq always names the same message}. So a message goes
out to clients only once it is stored durably enough to survive the process dying: the
hub calls L{SqliteStore.commit} at the end of every reactor pass, before that pass's
frames leave (see L{telemetry_service.endofpass.EndOfPass}).

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
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from telemetry_service.endofpass import EndOfPass
from telemetry_service.history.journal import (
    Journal,
    encode_chunk,
    forget_record,
    history_record,
    status_record,
)
from telemetry_service.history.memory import StoredMessage
from telemetry_service.history.recovery import (
    FILENAME,
    ROW_BYTES,
    Recovery,
    UnusableStateError,
    boot_id,
    set_aside,
    take_lock,
    write_meta,
)

#: seconds between absorbing the journal into the database: within a second of a node's
#: status changing (after a machine crash the journal is not read, so this is what such a
#: crash can lose of the replay cache), and every ABSORB_EVERY seconds (or past
#: ABSORB_BYTES of journal) otherwise: only what the history still holds is written then,
#: so the less often, the less work
ABSORB_STATUSES_EVERY = 1.0
ABSORB_EVERY = 5.0
ABSORB_BYTES = 64 * 1024 * 1024


class _DaemonThread(threading.Thread):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, daemon=True, **kwargs)


RunInThread = Callable[[Callable[[], None]], defer.Deferred[None]]


class SqliteStore:
    """
    A L{MessageStore} kept in C{state_dir}: C{hub-state.sqlite3} and its journal. It reads
    from an in-memory history (a L{MemoryStore}, the same bounds), filled from the files at
    start-up, and writes what it is given to the files too.

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
        end_of_pass: EndOfPass | None = None,
    ) -> None:
        """
        @param clock: the reactor (a fake clock in tests); absorbing runs on it.
        @param end_of_pass: where a pass's writes are committed, before its frames go out
            (the write batcher's); by default one of the store's own.
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
        self._unabsorbed_statuses: dict[str, tuple[int, int, bytes | None]] = {}
        self._end_of_pass = end_of_pass or EndOfPass(clock)
        self._end_of_pass.commit_with(self.commit)
        self._absorbing: defer.Deferred[None] | None = None
        self._journal = Journal(state_dir)
        self.degraded: str | None = None
        self._lock = take_lock(state_dir)
        try:
            recovery = Recovery(state_dir, max_messages, max_bytes, self._boot)
            try:
                self._conn, self._memory, self._statuses, self.recovery = recovery.open()
            except UnusableStateError as e:
                set_aside(state_dir, str(e), clock.seconds(), self._log)
                recovery = Recovery(state_dir, max_messages, max_bytes, self._boot)
                self._conn, self._memory, self._statuses, self.recovery = recovery.open()
                self.recovery = f"new epoch: {e}"
            self._journal.open()
        except BaseException:
            self._lock.close()
            raise
        # each node's place in first-report order, the next node's after them
        self._first_reports = recovery.first_reports
        self._next_first_report = recovery.next_first_report
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
            messages=len(self._memory),
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

    # -- MessageStore (reading is the in-memory history's)

    @property
    def epoch(self) -> str:
        return self._memory.epoch

    @property
    def last_seq(self) -> int:
        return self._memory.last_seq

    @property
    def first_seq(self) -> int:
        return self._memory.first_seq

    def __len__(self) -> int:
        return len(self._memory)

    @property
    def size_bytes(self) -> int:
        return self._memory.size_bytes

    def after(self, seq: int, limit: int) -> Sequence[StoredMessage] | None:
        return self._memory.after(seq, limit)

    def append(self, message: StoredMessage) -> None:
        self._memory.append(message)
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
        # the pass's writes are committed at its end, sent to any dashboard or not
        self._end_of_pass.ask()

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
            records += history_record(first, last, chunk)
            unabsorbed = self._unabsorbed
            unabsorbed.append((first, last, chunk))
            # what the history no longer holds need not go into the database: memory for
            # the next absorb stays within the history's bounds
            keep_from = self.first_seq
            while unabsorbed[0][1] < keep_from:
                unabsorbed.popleft()
        changes, self._pass_statuses = self._pass_statuses, {}
        for node_id, (seq, payload) in changes.items():
            if payload is None:
                records += forget_record(node_id)
                self._first_reports.pop(node_id, None)
                self._unabsorbed_statuses[node_id] = (0, 0, None)
                continue
            first_report = self._first_reports.get(node_id)
            if first_report is None:
                first_report = self._first_reports[node_id] = self._next_first_report
                self._next_first_report += 1
            records += status_record(node_id, seq, first_report, payload)
            self._unabsorbed_statuses[node_id] = (seq, first_report, payload)
        try:
            self._journal.write(records)
        except OSError as e:
            self._fail(e)
            return
        if self._journal.bytes > ABSORB_BYTES:
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
            self._journal.set_aside()
        except OSError as e:
            self._fail(e)
            return defer.succeed(None)
        # only what the history still holds: older messages would be trimmed at once
        keep_from = self.first_seq
        chunks = [c for c in self._unabsorbed if c[1] >= keep_from]
        self._unabsorbed.clear()
        statuses, self._unabsorbed_statuses = self._unabsorbed_statuses, {}
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
                write_meta(conn, last_seq=str(last_seq))
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
        self._journal.absorbed()

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
        self._journal.close()
        if self._absorbing is None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
        set_aside(self._dir, f"writing it failed ({error})", self._clock.seconds(), self._log)

    def close(self) -> defer.Deferred[None]:
        """
        Absorb what is left, mark the database closed cleanly, synced to disk, and let go
        of the folder.
        """
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
                write_meta(self._conn, last_seq=str(self.last_seq), clean="1")
                # with synchronous=NORMAL a checkpoint syncs the WAL, then the database
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._conn.close()
                self._journal.remove()
            except (sqlite3.Error, OSError) as e:
                self._fail(e)
        # whatever comes now (nothing should) stays in memory
        self.degraded = self.degraded or "closed"
        if self._pool is not None and self._pool.started:
            self._pool.stop()
        self._lock.close()


def _merged(chunks: list[tuple[int, int, bytes]]) -> list[tuple[int, int, bytes]]:
    """
    Contiguous journal chunks joined into rows of up to C{ROW_BYTES}.
    """
    rows: list[tuple[int, int, bytes]] = []
    parts: list[bytes] = []
    first = last = size = 0
    for chunk_first, chunk_last, data in chunks:
        if parts and (chunk_first != last + 1 or size + len(data) > ROW_BYTES):
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
