"""
The durable store on its own: what survives a clean stop, a process crash and a machine
crash, a corrupt or foreign file, and a disk that stops taking writes.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from telemetry_service.errors import ConfigurationError
from telemetry_service.history.memory import StoredMessage
from telemetry_service.history.recovery import FILENAME
from telemetry_service.history.sqlite import ABSORB_EVERY, SqliteStore

BOOT = "boot-1"


def message(seq: int, node: str = "connector-a") -> StoredMessage:
    payload = f'{{"type":"PACKET_SENT","nodeId":"{node}","seq":{seq}}}'.encode()
    return StoredMessage(seq, "PACKET_SENT", node, payload)


def at_once(work: Any) -> Any:
    """Runs an absorb in the test's own thread, at once (the hub runs it in a thread)."""
    return defer.maybeDeferred(work)


def opened(folder: Path, boot: str = BOOT, **bounds: Any) -> SqliteStore:
    limits = {"max_messages": 1000, "max_bytes": 1 << 20, **bounds}
    return SqliteStore(folder, limits["max_messages"], limits["max_bytes"], Clock(), boot, at_once)


def absorb(store: SqliteStore) -> None:
    """Time passes: the journal goes into the database."""
    clock: Clock = store._clock  # type: ignore[assignment]
    for _ in range(int(ABSORB_EVERY)):
        clock.advance(1)


def crash(store: SqliteStore) -> None:
    """The process dies: no clean close, but what was committed reached the OS."""
    store._conn.close()
    store._journal.close()
    store._lock.close()


def filled(folder: Path, count: int = 10) -> SqliteStore:
    store = opened(folder)
    for seq in range(1, count + 1):
        store.append(message(seq))
    store.node_status_changed("connector-b", 2, b'{"nodeId":"connector-b","seq":2}')
    store.node_status_changed("connector-a", 1, b'{"nodeId":"connector-a","seq":1}')
    store.commit()
    return store


def test_a_new_folder_starts_a_new_history(tmp_path: Path) -> None:
    store = opened(tmp_path / "state")
    assert store.recovery == "new"
    assert store.last_seq == 0 and store.after(0, 10) == []
    assert (tmp_path / "state" / FILENAME).exists()
    store.close()


def test_a_clean_stop_keeps_epoch_seq_history_and_nodes(tmp_path: Path) -> None:
    store = filled(tmp_path)
    epoch = store.epoch
    store.append(message(11))  # appended, not yet committed: close commits it
    store.close()
    again = opened(tmp_path, boot="another-boot")  # even after a reboot: it was clean
    assert (again.recovery, again.epoch, again.last_seq) == ("continued", epoch, 11)
    assert [m.payload for m in again.after(8, 10) or []] == [
        message(n).payload for n in (9, 10, 11)
    ]
    # first-report order, as the hub's replay cache had it
    assert [n for n, _, _ in again.node_statuses()] == ["connector-b", "connector-a"]
    again.append(message(12))  # and seq goes on
    again.close()


def test_a_pass_is_one_chunk_and_its_messages_come_back_as_they_were(tmp_path: Path) -> None:
    store = opened(tmp_path)
    big = "x" * 70_000
    messages = [
        StoredMessage(
            1, "NODE_STATUS", "connector-a", b'{"type":"NODE_STATUS","nodeId":"connector-a"}'
        ),
        # an event naming no node counts as its connection's node (sourceNodeId)
        StoredMessage(
            2,
            "AGENT_WALLET_FUNDED",
            "connector-b",
            b'{"type":"AGENT_WALLET_FUNDED","sourceNodeId":"connector-b"}',
        ),
        StoredMessage(
            3,
            "SETTLEMENT_TRIGGERED",
            "connector-b",
            b'{"type":"SETTLEMENT_TRIGGERED","nodeId":"unknown","sourceNodeId":"connector-b"}',
        ),
        StoredMessage(
            4,
            "LOG",
            "n\u00f6de",
            ('{"type":"LOG","nodeId":"n\u00f6de","m":"' + big + '"}').encode(),
        ),
        StoredMessage(5, "AGENT_WALLET_FUNDED", None, b'{"type":"AGENT_WALLET_FUNDED"}'),
    ]
    for m in messages:
        store.append(m)
    store.commit()
    store.close()
    again = opened(tmp_path)
    assert list(again.after(0, 10) or []) == messages
    again.close()


def test_a_pass_with_thousands_of_node_statuses_is_written_whole(tmp_path: Path) -> None:
    """
    More records than one writev() takes (IOV_MAX) in one pass, as when hundreds of
    connectors start at once: the pass is written in pieces, nothing is set aside.
    """
    store = opened(tmp_path)
    for seq in range(1, 2001):
        node = f"connector-{seq}"
        store.append(message(seq, node))
        store.node_status_changed(node, seq, f'{{"nodeId":"{node}","seq":{seq}}}'.encode())
    store.commit()
    assert store.degraded is None
    epoch = store.epoch
    crash(store)  # what the journal holds, read back
    again = opened(tmp_path)
    assert (again.recovery, again.epoch, again.last_seq) == ("continued", epoch, 2000)
    statuses = again.node_statuses()
    assert [n for n, _, _ in statuses] == [f"connector-{seq}" for seq in range(1, 2001)]
    assert statuses[-1][2] == b'{"nodeId":"connector-2000","seq":2000}'
    again.close()


def test_a_process_crash_keeps_every_committed_message(tmp_path: Path) -> None:
    store = filled(tmp_path)
    epoch = store.epoch
    store.append(message(11))  # never committed, so never sent to anyone
    crash(store)
    again = opened(tmp_path)  # the same boot: the OS kept every write
    assert (again.recovery, again.epoch, again.last_seq) == ("continued", epoch, 10)
    again.append(message(11))  # seq 11 was never sent: it may name a new message
    again.close()


def test_a_machine_crash_starts_a_new_epoch_and_keeps_the_nodes(tmp_path: Path) -> None:
    store = filled(tmp_path)
    epoch = store.epoch
    absorb(store)  # what a machine crash keeps: what reached the database
    crash(store)
    again = opened(tmp_path, boot="after-the-power-cut")
    assert again.recovery.startswith("new epoch: the machine went down")
    assert again.epoch != epoch
    assert again.last_seq == 10  # numbers only grow...
    assert again.after(5, 10) is None  # ...but the old epoch's history is gone
    assert [n for n, _, _ in again.node_statuses()] == ["connector-b", "connector-a"]
    again.close()
    assert opened(tmp_path).recovery == "continued"


def test_the_history_keeps_its_bounds_in_the_file(tmp_path: Path) -> None:
    store = opened(tmp_path, max_messages=5)
    for seq in range(1, 21):
        store.append(message(seq))
        store.commit()
    store.close()
    # one chunk per commit; the chunks the history no longer reaches are trimmed
    with contextlib.closing(sqlite3.connect(tmp_path / FILENAME)) as conn:
        rows = conn.execute("SELECT first_seq, last_seq FROM history").fetchall()
    assert rows == [(16, 20)]  # the journal's chunks, joined; the older ones trimmed
    again = opened(tmp_path, max_messages=5)
    assert again.first_seq == 16 and again.after(14, 10) is None
    again.close()


def test_forgotten_nodes_are_forgotten_in_the_file(tmp_path: Path) -> None:
    store = filled(tmp_path)
    store.node_status_changed("connector-b", 0, None)
    store.node_status_changed("connector-a", 12, b'{"nodeId":"connector-a","seq":12}')
    store.close()
    again = opened(tmp_path)
    assert list(again.node_statuses()) == [
        ("connector-a", 12, b'{"nodeId":"connector-a","seq":12}')
    ]
    again.close()


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: p.write_bytes(b"this is not a database" * 100), id="garbage"),
        pytest.param(lambda p: p.write_bytes(p.read_bytes()[:300]), id="truncated"),
    ],
)
def test_a_corrupt_file_is_set_aside_with_one_line_and_a_new_epoch(
    tmp_path: Path, damage: Any, logs: Any
) -> None:
    filled(tmp_path).close()
    damage(tmp_path / FILENAME)
    store = opened(tmp_path)
    assert store.recovery.startswith("new epoch:")
    assert store.last_seq == 0
    aside = list(tmp_path.glob(f"{FILENAME}.unusable-*"))
    assert len(aside) == 1
    (line,) = logs.matching("set aside", "error")
    assert str(aside[0]) in line
    store.close()


def test_a_file_of_another_format_is_set_aside(tmp_path: Path, logs: Any) -> None:
    filled(tmp_path).close()
    with contextlib.closing(sqlite3.connect(tmp_path / FILENAME)) as conn, conn:
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'format'")
    store = opened(tmp_path)
    assert "format 1" in store.recovery
    assert logs.matching("set aside", "error")
    store.close()


def test_a_file_another_process_holds_open_is_not_mistaken_for_a_broken_one(
    tmp_path: Path,
) -> None:
    filled(tmp_path).close()
    (tmp_path / "hub.lock").unlink()
    with contextlib.closing(sqlite3.connect(tmp_path / FILENAME, timeout=0)) as other:
        other.execute("BEGIN EXCLUSIVE")  # e.g. an operator's sqlite3 shell, mid-transaction
        with pytest.raises(ConfigurationError, match="in use by another process"):
            opened(tmp_path)
        other.execute("ROLLBACK")
    assert not list(tmp_path.glob(f"{FILENAME}.unusable-*"))
    again = opened(tmp_path)
    assert again.recovery == "continued"
    again.close()


def test_a_second_hub_cannot_share_the_folder(tmp_path: Path) -> None:
    store = opened(tmp_path)
    with pytest.raises(ConfigurationError, match="in use by another hub"):
        opened(tmp_path)
    store.close()
    opened(tmp_path).close()


@pytest.mark.parametrize("what", ["journal", "database"])
def test_a_failed_write_degrades_to_memory_and_no_later_start_continues_the_epoch(
    tmp_path: Path, logs: Any, what: str
) -> None:
    store = filled(tmp_path)
    epoch = store.epoch
    # as good as a full disk: every write of that file fails from now on
    if what == "journal":
        store._journal.close()
    else:
        store._conn.close()
    store.append(message(11))
    store.commit()
    absorb(store)
    assert store.degraded is not None and "cannot write" in store.degraded
    # the hub carries on from memory...
    store.append(message(12))
    assert [m.seq for m in store.after(9, 10) or []] == [10, 11, 12]
    assert logs.matching("set aside", "error")
    store.close()
    # ...and the next start cannot continue an epoch whose seqs clients saw unrecorded
    again = opened(tmp_path)
    assert again.epoch != epoch
    again.close()


def test_a_crash_between_absorbs_loses_nothing_the_journal_holds(tmp_path: Path) -> None:
    store = filled(tmp_path)
    absorb(store)  # 1..10 in the database
    for seq in range(11, 31):
        store.append(message(seq))
        store.commit()  # 11..30 only in the journal
    store.node_status_changed("connector-c", 30, b'{"nodeId":"connector-c","seq":30}')
    store.commit()
    epoch = store.epoch
    crash(store)
    again = opened(tmp_path)
    assert (again.recovery, again.epoch, again.last_seq) == ("continued", epoch, 30)
    assert [m.payload for m in again.after(0, 100) or []] == [
        message(n).payload for n in range(1, 31)
    ]
    assert [n for n, _, _ in again.node_statuses()] == [
        "connector-b",
        "connector-a",
        "connector-c",
    ]
    again.close()


def test_a_crash_in_the_middle_of_an_absorb_loses_nothing(tmp_path: Path) -> None:
    store = filled(tmp_path)
    epoch = store.epoch
    store._run_in_thread = lambda work: defer.Deferred()  # the absorb never finishes
    store._absorb()
    assert (tmp_path / "hub-state.journal.absorbing").exists()
    for seq in range(11, 16):
        store.append(message(seq))
        store.commit()  # into the new journal
    crash(store)
    again = opened(tmp_path)
    assert (again.recovery, again.epoch, again.last_seq) == ("continued", epoch, 15)
    assert len(again.after(0, 100) or []) == 15
    assert not (tmp_path / "hub-state.journal.absorbing").exists()
    again.close()


def test_a_write_cut_short_by_the_crash_is_no_message(tmp_path: Path) -> None:
    store = filled(tmp_path)
    store.append(message(11))
    store.commit()
    crash(store)
    journal = tmp_path / "hub-state.journal"
    journal.write_bytes(journal.read_bytes()[:-5])  # the last record, half written
    again = opened(tmp_path)
    assert (again.recovery, again.last_seq) == ("continued", 10)
    again.close()


def test_after_a_machine_crash_the_journal_is_not_read(tmp_path: Path) -> None:
    """Its tail may be anything: the database's nodes (a second old at most) are kept."""
    store = filled(tmp_path)
    absorb(store)  # the two nodes reach the database
    store.node_status_changed("connector-z", 11, b'{"nodeId":"connector-z"}')
    store.append(message(11))
    store.commit()  # only in the journal
    crash(store)
    journal = tmp_path / "hub-state.journal"
    journal.write_bytes(b"\x00" * 64)  # what a power cut may leave of unsynced pages
    again = opened(tmp_path, boot="after-the-power-cut")
    assert again.recovery.startswith("new epoch: the machine went down")
    assert [n for n, _, _ in again.node_statuses()] == ["connector-b", "connector-a"]
    again.close()


def test_a_journal_that_is_not_one_starts_a_new_epoch(tmp_path: Path) -> None:
    store = filled(tmp_path)
    epoch = store.epoch
    crash(store)
    (tmp_path / "hub-state.journal").write_bytes(b"Zgarbage" * 10)
    again = opened(tmp_path)
    assert again.recovery.startswith("new epoch:") and "not a journal record" in again.recovery
    assert again.epoch != epoch
    again.close()
