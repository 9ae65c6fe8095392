"""
The stream reader: every hub reads the shared log (C{XREAD} on a connection of its own)
and delivers each entry to its own dashboards, its own messages included, in stream order.

A blocked C{XREAD} wakes as soon as an entry is added, and reads on from the last seq this
hub delivered (the entry ID is the seq: C{<seq>-0}), so nothing is lost between loading
the history and listening, and a hub that was away reads on from where it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import txredisapi
from twisted.logger import Logger
from twisted.python.failure import Failure

from telemetry_service.bus.redis.errorlog import ErrorLog
from telemetry_service.bus.redis.history import READ_COUNT, HubSide, SharedHistory

#: how long an XREAD waits for new entries before Redis answers with nothing
READ_BLOCK_MS = 2000


class StreamReader:
    """
    Reads the log on the reading connection, while it is up, and delivers in order.

    @ivar conn: the reading connection, while it is up.
    """

    _log = Logger()

    def __init__(
        self,
        history: SharedHistory,
        hub: HubSide,
        prefix: bytes,
        errors: ErrorLog,
        other_epoch: Callable[[Failure], object],
    ) -> None:
        """
        @param other_epoch: called when the stream holds entries of another history than
            the one this hub knows (Redis lost its data): the bus resyncs.
        """
        self._history = history
        self._hub = hub
        self._key = prefix + b"log"
        self._errors = errors
        self._other_epoch = other_epoch
        self.conn: Any = None
        # the reading under way: a read whose reading is no longer this one is ignored
        self._reading: object | None = None

    @property
    def reading(self) -> bool:
        return self._reading is not None

    def connected(self, conn: Any) -> None:
        self.conn = conn

    def lost(self, conn: Any) -> bool:
        """
        A reading connection is gone.

        @return: whether it was this reader's.
        """
        if self.conn is not conn:
            return False
        self.conn = None
        self._reading = None
        return True

    def start(self) -> None:
        """
        Read on from the last seq delivered, if the connection is up. A read waiting now
        is for entries after a seq that may no longer be the last: its answer is ignored,
        and the new one (queued behind it) reads from the right place.
        """
        if self.conn is not None:
            reading = self._reading = object()
            self._read(self.conn, reading)

    def _read(self, conn: Any, reading: object) -> None:
        if reading is not self._reading:
            return
        last = f"{self._history.last_seq}-0".encode()
        try:
            d = conn.execute_command(
                b"XREAD",
                b"COUNT",
                str(READ_COUNT).encode(),
                b"BLOCK",
                str(READ_BLOCK_MS).encode(),
                b"STREAMS",
                self._key,
                last,
            )
        except txredisapi.ConnectionError:
            return
        d.addCallbacks(
            self._got,
            self._read_failed,
            callbackArgs=(conn, reading),
            errbackArgs=(conn, reading),
        )

    def _got(self, reply: Any, conn: Any, reading: object) -> None:
        if reading is not self._reading:
            return
        try:
            if reply:
                self._take(reply[0][1])
        finally:
            # whatever happened to this read, the next one goes: a hub that stopped
            # reading would look connected and deliver nothing
            self._read(conn, reading)

    def _take(self, entries: list[Any]) -> None:
        deliver = self._hub.deliver
        history = self._history
        epoch = (history.known_epoch or "").encode()
        for entry in entries:
            values = entry[1]
            if len(values) >= 4 and values[3] != epoch:
                # Redis lost its data and another hub already wrote a new history past
                # where this one was: nothing of it is delivered as the old one's; the
                # resync starts the new history from its first entry
                self._reading = None  # this reading stops; the resync reads again
                self._other_epoch(Failure(txredisapi.ResponseError("EPOCH seen in the stream")))
                return
            stored = history.parse(entry)
            expected = history.ring.last_seq + 1
            if stored.seq != expected:
                if stored.seq < expected:
                    continue
                history.skipped(stored.seq - expected)
            history.ring.append(stored)
            try:
                deliver(stored, None)
            except Exception:
                # one message the hub could not deliver must not stop the others
                self._errors.error(
                    "deliver", "Redis bus: delivering seq {seq} failed", Failure(), seq=stored.seq
                )

    def _read_failed(self, failure: Failure, conn: Any, reading: object) -> None:
        if reading is not self._reading or failure.check(txredisapi.ConnectionError):
            return  # the connection is gone; its return starts reading again
        self._log.error(
            "Redis bus: reading the stream failed: {error}", error=failure.getErrorMessage()
        )
        self._reading = None
        conn.transport.loseConnection()
