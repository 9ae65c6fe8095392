"""
What a start finds in a state folder: the database read and checked, what the journal
holds on top of it replayed, and the verdict: the epoch continued, a new one, or a new
folder. The rule it keeps: within one epoch a seq always names the same message, so after
anything the files cannot vouch for (a machine crash, a corrupt or foreign file) the epoch
is new.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from twisted.logger import Logger

from telemetry_service.errors import ConfigurationError
from telemetry_service.history.journal import (
    ABSORBING,
    JOURNAL,
    Journal,
    decode_chunk,
    encode_chunk,
    replay,
)
from telemetry_service.history.memory import MemoryStore, StoredMessage, new_epoch

#: the layout of the files; a database of another version is migrated, or set aside
FORMAT = 2
FILENAME = "hub-state.sqlite3"
#: history rows in the database hold up to this many bytes of messages each: few rows, so
#: few transitions in and out of SQLite for the store's thread, but small enough that
#: joining one (which holds Python's lock) never keeps the reactor waiting long
ROW_BYTES = 64 * 1024

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


def take_lock(folder: Path) -> IO[str]:
    """
    Hold C{folder} for this hub (until the returned file is closed, or the process ends).

    @raise ConfigurationError: the folder cannot be made or written, or another hub holds it.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / "hub.lock", "a+")  # noqa: SIM115 (held while the hub runs)
    except OSError as e:
        raise ConfigurationError(f"cannot use state folder {folder}: {e}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise ConfigurationError(
            f"state folder {folder} is in use by another hub; give each hub its own --state-dir"
        ) from None
    return lock


def set_aside(folder: Path, why: str, now: float, log: Logger) -> None:
    """
    Move the state files out of the way (never delete them: an operator may want them),
    so that the next start begins a new epoch.
    """
    path = folder / FILENAME
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    for name in (FILENAME, JOURNAL, ABSORBING):
        source = folder / name
        aside = folder / f"{name}.unusable-{stamp}"
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{source}{suffix}", f"{aside}{suffix}")
    log.error(
        "State file {path} set aside as {aside}: {why}; starting a new epoch",
        path=str(path),
        aside=f"{path}.unusable-{stamp}",
        why=why,
    )


def write_meta(conn: sqlite3.Connection, **values: str) -> None:
    conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(values.items()))


class Recovery:
    """
    Opens a state folder's database and makes what it holds the store's starting point.

    @ivar first_reports: each node's place in first-report order, and C{next_first_report}
        the next node's: the store goes on numbering from them.
    """

    _log = Logger()

    def __init__(self, folder: Path, max_messages: int, max_bytes: int, boot: str | None) -> None:
        self._folder = folder
        self._path = folder / FILENAME
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._boot = boot
        self.first_reports: dict[str, int] = {}
        self.next_first_report = 1

    def open(
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
            journal_left = Journal.left_in(self._folder)
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
        write_meta(
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
            self.first_reports[node_id] = first_report
            self.next_first_report = first_report + 1
        if not meta:
            if Journal.left_in(self._folder):
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
            if node_id not in self.first_reports:
                self.first_reports[node_id] = self.next_first_report
                self.next_first_report += 1
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

        def status(node_id: str, seq: int, first_report: int, payload: bytes) -> None:
            statuses[node_id] = (seq, payload)
            self.first_reports.setdefault(node_id, first_report)
            self.next_first_report = max(self.next_first_report, first_report + 1)

        def forget(node_id: str) -> None:
            statuses.pop(node_id, None)
            self.first_reports.pop(node_id, None)

        replay(self._folder, memory, status, forget)
        # the replayed statuses in first-report order
        ordered = sorted(statuses.items(), key=lambda item: self.first_reports[item[0]])
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
        conn.executemany("INSERT INTO history VALUES (?, ?, ?)", rows(messages))
        conn.execute("DELETE FROM node_status")
        conn.executemany(
            "INSERT INTO node_status (node_id, first_report, seq, payload) VALUES (?, ?, ?, ?)",
            [(n, self.first_reports[n], seq, payload) for n, seq, payload in statuses],
        )
        conn.execute("COMMIT")
        Journal.clear(self._folder)


def rows(messages: Sequence[StoredMessage]) -> list[tuple[int, int, bytes]]:
    """
    History rows of up to C{ROW_BYTES} of messages each.
    """
    rows: list[tuple[int, int, bytes]] = []
    start = 0
    size = 0
    for index, message in enumerate(messages):
        size += len(message.payload)
        if size >= ROW_BYTES or index == len(messages) - 1:
            part = messages[start : index + 1]
            rows.append((part[0].seq, part[-1].seq, encode_chunk([m.payload for m in part])))
            start, size = index + 1, 0
    return rows
