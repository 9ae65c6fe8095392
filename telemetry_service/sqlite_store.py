"""
The hub's state in one SQLite file, so that a restart (a deploy, a crash, C{kill -9})
loses nothing: the history with its epoch and last C{seq}, and the replay cache.

Reads never touch the file: the history is also held in a L{MemoryStore} (the same bounds),
filled from the file at start-up. Writes are batched: messages appended during one reactor
pass are written in one transaction, committed before any frame of that pass leaves the
hub (the hub calls L{SqliteStore.commit} first; see C{websocket.WriteBatcher}). A commit
hands the data to the operating system (WAL, C{synchronous=NORMAL}: no C{fsync} per
commit), which is enough to survive the process dying in any way.

The invariant: B{within one epoch, a seq always names the same message}. A message is sent
only once it is committed, so after a process crash the file holds every message any
client saw. A machine crash or power loss can lose the last commits before the operating
system wrote them to disk; the hub cannot prove the invariant then, so it starts a new
epoch. It tells the two cases apart by the kernel's boot id, kept in the file while the hub
runs: a file not closed cleanly by a hub of this same boot means the machine went down.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from telemetry_service.errors import ConfigurationError
from telemetry_service.store import MemoryStore, StoredMessage, new_epoch

#: the layout of the file; a file of another version is migrated, or set aside
FORMAT = 1
FILENAME = "hub-state.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    node_id TEXT,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS node_status (
    node_id TEXT PRIMARY KEY,
    first_report INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    payload BLOB NOT NULL
);
"""


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
    The state file cannot be used as it is (corrupt, unreadable, another format).
    """


class SqliteStore:
    """
    A L{MessageStore} kept in C{state_dir}/hub-state.sqlite3.

    @ivar degraded: why the file is no longer written, or None while it is.
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
    ) -> None:
        """
        @param this_boot: the boot id to compare with the file's (default: the kernel's).
        @raise ConfigurationError: the state folder cannot be made or written, or another
            hub holds it.
        """
        self._dir = state_dir
        self._path = state_dir / FILENAME
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._clock = clock
        self._boot = this_boot if this_boot is not None else boot_id()
        self._pending: list[tuple[int, str, str | None, bytes]] = []
        self._status_changes: dict[str, tuple[int, bytes | None]] = {}
        self._next_first_report = 0
        self._scheduled: IDelayedCall | None = None
        self.degraded: str | None = None
        self._lock = self._take_lock()
        try:
            self._conn, self._memory, self._statuses, self.recovery = self._open()
        except UnusableStateError as e:
            self._set_aside(str(e))
            self._conn, self._memory, self._statuses, self.recovery = self._open()
            self.recovery = f"new epoch: {e}"
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
            conn = sqlite3.connect(self._path, isolation_level=None)
        except sqlite3.Error as e:
            raise UnusableStateError(f"cannot open it ({e})") from None
        try:
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
            memory, statuses, recovery = self._load(conn, meta)
        except (sqlite3.Error, ValueError) as e:
            conn.close()
            raise UnusableStateError(f"it cannot be read ({e})") from None
        except UnusableStateError:
            conn.close()
            raise
        # This hub holds the file now, and has not closed it cleanly yet.
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
        statuses = [
            (node_id, seq, bytes(payload))
            for node_id, seq, payload in conn.execute(
                "SELECT node_id, seq, payload FROM node_status ORDER BY first_report"
            )
        ]
        row = conn.execute("SELECT MAX(first_report) FROM node_status").fetchone()
        self._next_first_report = (row[0] or 0) + 1
        if not meta:
            return MemoryStore(self._max_messages, self._max_bytes), statuses, "new"
        epoch, last_seq = meta["epoch"], int(meta["last_seq"])
        why_not = self._why_not_continue(meta)
        if why_not is None:
            memory = self._load_history(conn, epoch, last_seq)
            if memory is not None:
                return memory, statuses, "continued"
            why_not = "its history does not end where its last seq says"
        # The seqs in the file cannot be trusted: a new epoch, going on from the last seq
        # (so that numbers only grow), with no history; the nodes' statuses still hold.
        conn.execute("DELETE FROM history")
        memory = MemoryStore(self._max_messages, self._max_bytes, new_epoch(), last_seq)
        self._log.warn(
            "State in {path}: starting a new epoch, {why}", path=str(self._path), why=why_not
        )
        return memory, statuses, f"new epoch: {why_not}"

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
            "SELECT seq, type, node_id, payload FROM history ORDER BY seq"
        ).fetchall()
        first = rows[0][0] if rows else last_seq + 1
        if rows and (rows[-1][0] != last_seq or rows[-1][0] - first + 1 != len(rows)):
            return None
        memory = MemoryStore(self._max_messages, self._max_bytes, epoch, first - 1)
        for seq, kind, node_id, payload in rows:
            memory.append(StoredMessage(seq, kind, node_id, bytes(payload)))
        return memory

    def _set_aside(self, why: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock.seconds()))
        aside = self._path.with_name(f"{FILENAME}.unusable-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self._path}{suffix}", f"{aside}{suffix}")
        self._log.error(
            "State file {path} set aside as {aside}: {why}; starting a new epoch",
            path=str(self._path),
            aside=str(aside),
            why=why,
        )

    @staticmethod
    def _write_meta(conn: sqlite3.Connection, **values: str) -> None:
        conn.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(values.items())
        )

    # -- MessageStore

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

    def append(self, message: StoredMessage) -> None:
        self._memory.append(message)
        if self.degraded is None:
            self._pending.append((message.seq, message.type, message.node_id, message.payload))
            self._schedule()

    def after(self, seq: int, limit: int) -> Sequence[StoredMessage] | None:
        return self._memory.after(seq, limit)

    def node_statuses(self) -> Sequence[tuple[str, int, bytes]]:
        return self._statuses

    def node_status_changed(self, node_id: str, seq: int, payload: bytes | None) -> None:
        if self.degraded is None:
            self._status_changes[node_id] = (seq, payload)
            self._schedule()

    def _schedule(self) -> None:
        # No frame may wait for a commit that nothing asks for: without dashboards, the
        # pass's writes are committed at the start of the next pass all the same.
        if self._scheduled is None:
            self._scheduled = self._clock.callLater(0, self._scheduled_commit)

    def _scheduled_commit(self) -> None:
        self._scheduled = None
        self.commit()

    def commit(self) -> None:
        if not (self._pending or self._status_changes) or self.degraded is not None:
            return
        pending, self._pending = self._pending, []
        changes, self._status_changes = self._status_changes, {}
        conn = self._conn
        try:
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT OR REPLACE INTO history (seq, type, node_id, payload) VALUES (?,?,?,?)",
                pending,
            )
            conn.execute("DELETE FROM history WHERE seq < ?", (self._memory.first_seq,))
            for node_id, (seq, payload) in changes.items():
                if payload is None:
                    conn.execute("DELETE FROM node_status WHERE node_id = ?", (node_id,))
                    continue
                updated = conn.execute(
                    "UPDATE node_status SET seq = ?, payload = ? WHERE node_id = ?",
                    (seq, payload, node_id),
                ).rowcount
                if not updated:
                    conn.execute(
                        "INSERT INTO node_status (node_id, first_report, seq, payload) "
                        "VALUES (?, ?, ?, ?)",
                        (node_id, self._next_first_report, seq, payload),
                    )
                    self._next_first_report += 1
            self._write_meta(conn, last_seq=str(self._memory.last_seq))
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            self._fail(e)

    def _fail(self, error: Exception) -> None:
        """
        The file can no longer be written (a full disk, say). The hub carries on from
        memory, and the file is set aside so that no later start continues its epoch: the
        clients may already have seen seqs the file does not hold.
        """
        self.degraded = f"cannot write {self._path}: {error}"
        self._pending.clear()
        self._status_changes.clear()
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
        self._set_aside(f"writing it failed ({error})")

    def close(self) -> None:
        """
        Commit what is left and mark the file closed cleanly, synced to disk.
        """
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None
        self.commit()
        if self.degraded is None:
            try:
                self._write_meta(self._conn, clean="1")
                # with synchronous=NORMAL a checkpoint syncs the WAL, then the database
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._conn.close()
            except sqlite3.Error as e:
                self._fail(e)
        # whatever comes now (nothing should) stays in memory
        self.degraded = self.degraded or "closed"
        self._lock.close()
