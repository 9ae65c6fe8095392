"""
The durable store on its own: what survives a clean stop, a process crash and a machine
crash, a corrupt or foreign file, and a disk that stops taking writes.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from telemetry_service.errors import ConfigurationError
from telemetry_service.sqlite_store import FILENAME, SqliteStore
from telemetry_service.store import StoredMessage

BOOT = "boot-1"


def message(seq: int, node: str = "connector-a") -> StoredMessage:
    return StoredMessage(seq, "PACKET_SENT", node, f'{{"seq":{seq}}}'.encode())


def opened(folder: Path, boot: str = BOOT, **bounds: Any) -> SqliteStore:
    limits = {"max_messages": 1000, "max_bytes": 1 << 20, **bounds}
    return SqliteStore(folder, limits["max_messages"], limits["max_bytes"], Clock(), boot)


def crash(store: SqliteStore) -> None:
    """The process dies: no clean close, but what was committed reached the OS."""
    store._conn.close()
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
    rows = sqlite3.connect(tmp_path / FILENAME).execute("SELECT seq FROM history").fetchall()
    assert [r[0] for r in rows] == [16, 17, 18, 19, 20]
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
    with sqlite3.connect(tmp_path / FILENAME) as conn:
        conn.execute("UPDATE meta SET value = '0' WHERE key = 'format'")
    store = opened(tmp_path)
    assert "format 0" in store.recovery
    assert logs.matching("set aside", "error")
    store.close()


def test_a_second_hub_cannot_share_the_folder(tmp_path: Path) -> None:
    store = opened(tmp_path)
    with pytest.raises(ConfigurationError, match="in use by another hub"):
        opened(tmp_path)
    store.close()
    opened(tmp_path).close()


def test_a_failed_write_degrades_to_memory_and_no_later_start_continues_the_epoch(
    tmp_path: Path, logs: Any
) -> None:
    store = filled(tmp_path)
    epoch = store.epoch
    store._conn.close()  # as good as a full disk: every write fails from now on
    store.append(message(11))
    store.commit()
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
