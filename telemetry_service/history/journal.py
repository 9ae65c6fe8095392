"""
The journal: what the durable store hands the operating system at the end of every reactor
pass (one write of that pass's messages and status changes), until it is absorbed into the
database. After the process dies, it is replayed on top of the database.

Its records are a kind, a length and a body: a chunk of messages with contiguous seqs, a
node's status, or a node forgotten. A message chunk is also the form of the database's
history rows.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import orjson

from telemetry_service.history.memory import MemoryStore, StoredMessage
from telemetry_service.vocabulary import message_node

#: the journal a hub writes, and the one being absorbed into the database (or left by a
#: crash while it was)
JOURNAL = "hub-state.journal"
ABSORBING = "hub-state.journal.absorbing"

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


# -- the journal's records

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


class Journal:
    """
    The journal file of a state folder, open for appending.

    @ivar bytes: what was written since it was last set aside for absorbing.
    """

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._fd = -1
        self.bytes = 0

    @staticmethod
    def left_in(folder: Path) -> bool:
        """
        Whether a journal (or one being absorbed) was left in C{folder}.
        """
        return any((folder / name).exists() for name in (ABSORBING, JOURNAL))

    @staticmethod
    def clear(folder: Path) -> None:
        """
        Remove what journals C{folder} holds: the database holds it all now.
        """
        for name in (ABSORBING, JOURNAL):
            with contextlib.suppress(FileNotFoundError):
                (folder / name).unlink()

    def open(self) -> None:
        self._fd = os.open(self._folder / JOURNAL, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def write(self, records: list[bytes]) -> None:
        """
        Hand C{records} to the operating system, in one system call where it can be.

        @raise OSError: the file does not take them (a full disk).
        """
        self.bytes += _write_all(self._fd, records)

    def set_aside(self) -> None:
        """
        Rename the journal for absorbing, and go on in a new one.

        @raise OSError: the files cannot be renamed or made.
        """
        os.close(self._fd)
        os.replace(self._folder / JOURNAL, self._folder / ABSORBING)
        self.open()
        self.bytes = 0

    def absorbed(self) -> None:
        """
        What was set aside is in the database now.
        """
        with contextlib.suppress(FileNotFoundError):
            (self._folder / ABSORBING).unlink()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def remove(self) -> None:
        """
        Close the journal and delete it: the database holds everything (a clean stop).

        @raise OSError: it cannot be deleted.
        """
        os.close(self._fd)
        (self._folder / JOURNAL).unlink()


def history_record(first: int, last: int, chunk: bytes) -> list[bytes]:
    return _record(_HISTORY, _SEQS.pack(first, last), chunk)


def status_record(node_id: str, seq: int, first_report: int, payload: bytes) -> list[bytes]:
    node = node_id.encode()
    return _record(_STATUS, _STATUS_HEAD.pack(seq, first_report, len(node)), node, payload)


def forget_record(node_id: str) -> list[bytes]:
    return _record(_FORGET, node_id.encode())


def replay(
    folder: Path,
    memory: MemoryStore,
    status: Callable[[str, int, int, bytes], None],
    forget: Callable[[str], None],
) -> None:
    """
    Apply the journals left in C{folder} (one that was being absorbed, then the journal
    proper) on top of what the database held: the messages after C{memory}'s last seq go
    into it, and each status record and each node forgotten are told, in order.

    @param status: told of a node's status (node, seq, first report, payload).
    @raise ValueError: the journal is not what it should be.
    """
    for name in (ABSORBING, JOURNAL):
        for kind, body in read_journal(folder / name):
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
                status(node_id, seq, first_report, body[_STATUS_HEAD.size + size :])
            elif kind == _FORGET:
                forget(body.decode())
