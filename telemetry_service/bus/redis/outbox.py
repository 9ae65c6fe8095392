"""
What this hub submitted and Redis has not applied yet.

Messages, and the joins and leaves of this hub's nodes, wait here in the order they came
until the bus sends them: up to L{MAX_OPS_PER_CALL} operations per call of the submit
script, each call a numbered batch, kept until Redis answers it. While Redis is away,
what the hub accepts waits too, up to C{--redis-buffer-bytes}; past it, new messages are
dropped and counted.

A batch that was on its way when the connection broke goes again only if Redis did not
apply it (Redis keeps the number of each hub's last applied batch), and under its own
number: the old connection's bytes may still reach Redis after the new connection asked
what was applied, and the script applies a number once. So it is neither lost nor doubled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from telemetry_service.vocabulary import NODE_STATUS

#: one operation of the submit script: (C{m}, C{"<type>\\0<nodeId>"}, the message up to
#: C{',"seq":'}, its node if it is a status, else C{""}) or (C{j} | C{l}, nodeId, nodeId as
#: JSON, timestamp as JSON)
Op = tuple[bytes, bytes, bytes, bytes]

#: most operations in one script call: Redis runs a script alone, so a long one would hold
#: up the other hubs (a thousand messages take about a millisecond)
MAX_OPS_PER_CALL = 1000


class Outbox:
    """
    The operations waiting to be sent, and the batches on their way.

    @ivar dropped: messages refused since start (the buffer was full, or Redis refused
        them).
    """

    _log = Logger()

    def __init__(
        self,
        limit: int,
        clock: IReactorTime,
        degraded: Callable[[], str | None],
        wake: Callable[[], None],
    ) -> None:
        """
        @param limit: bytes of messages held at most (C{--redis-buffer-bytes}).
        @param degraded: why Redis is unusable now, or None.
        @param wake: called when something is queued (the bus sends at the end of the pass).
        """
        self._limit = limit
        self._clock = clock
        self._degraded = degraded
        self._wake = wake
        self._queue: list[Op] = []
        # the bytes of the messages in the queue and of the batches to send again
        self._queued_bytes = 0
        # batches sent and not yet answered: batch -> its message operations, their bytes
        self._inflight: dict[int, tuple[list[Op], int]] = {}
        self._inflight_bytes = 0
        # batches to send again with their numbers, before the queue (see requeue)
        self._resend: list[tuple[int, list[Op], int]] = []
        self._next_batch = 1
        self.dropped = 0
        self._dropped_logged = 0
        self._drop_log_at = 0.0

    @property
    def buffered_bytes(self) -> int:
        return self._queued_bytes + self._inflight_bytes

    def submit(self, message: dict[str, Any], message_type: str, node_id: str | None) -> None:
        """
        Queue a message (its C{seq} is left to the script), or drop it if the buffer is
        full.
        """
        message.pop("seq", None)
        body = orjson.dumps(message)
        prefix = body[:-1] + b',"seq":'
        size = len(prefix)
        if self.buffered_bytes + size > self._limit:
            self._drop()
            return
        kind = message_type.encode()
        if node_id is None:
            field, status_node = kind + b"\0", b""
        else:
            node = node_id.encode()
            field = kind + b"\0" + node
            status_node = node if message_type == NODE_STATUS else b""
        self._queue.append((b"m", field, prefix, status_node))
        self._queued_bytes += size
        self._wake()

    def presence(self, op: Op) -> None:
        """
        Queue a join or a leave, in order with the messages.
        """
        self._queue.append(op)
        self._wake()

    def forget_presence(self) -> None:
        """
        Drop the joins and leaves not sent yet: a sync is about to say them all.
        """
        self._queue = [op for op in self._queue if op[0] == b"m"]

    def take(self) -> list[tuple[int, list[bytes]]]:
        """
        Everything waiting, as batches now on their way: the batches to send again first,
        under their numbers, then the queue in new ones.

        @return: each batch's number and its operations as the script's arguments.
        """
        resend, self._resend = self._resend, []
        queue, self._queue = self._queue, []
        self._queued_bytes = 0
        batches = [self._sending(batch, ops, ops, size) for batch, ops, size in resend]
        for start in range(0, len(queue), MAX_OPS_PER_CALL):
            ops = queue[start : start + MAX_OPS_PER_CALL]
            batch = self._next_batch
            self._next_batch += 1
            messages = [op for op in ops if op[0] == b"m"]
            size = sum(len(op[2]) for op in messages)
            batches.append(self._sending(batch, ops, messages, size))
        return batches

    def _sending(
        self, batch: int, ops: list[Op], messages: list[Op], size: int
    ) -> tuple[int, list[bytes]]:
        # joins and leaves are not kept: a reconnection says which nodes this hub has anyway
        self._inflight[batch] = (messages, size)
        self._inflight_bytes += size
        args: list[bytes] = []
        for op in ops:
            args += op
        return batch, args

    def applied(self, batch: int) -> None:
        """
        Redis applied C{batch}.
        """
        done = self._inflight.pop(batch, None)
        if done is not None:
            self._inflight_bytes -= done[1]

    def refused(self, batch: int) -> int | None:
        """
        Redis refused C{batch}: its messages are dropped.

        @return: how many, or None if the batch was not on its way.
        """
        done = self._inflight.pop(batch, None)
        if done is None:
            return None
        self._inflight_bytes -= done[1]
        self.dropped += len(done[0])
        return len(done[0])

    def requeue(self, applied: int, *, renumber: bool = False) -> None:
        """
        After a reconnection: the batches on their way that Redis did not apply go again,
        in order, before anything queued.

        @param applied: the last batch of this hub that Redis applied.
        @param renumber: Redis has a new epoch, and forgot every number: they go as new
            batches.
        """
        again: list[Op] = []
        count = 0
        for batch in sorted(self._inflight):
            ops, size = self._inflight.pop(batch)
            self._inflight_bytes -= size
            if batch > applied:
                count += len(ops)
                self._queued_bytes += size
                if renumber:
                    again.extend(ops)
                else:
                    self._resend.append((batch, ops, size))
        self._queue[:0] = again
        if count:
            self._log.info(
                "Redis bus: sending again {count} messages Redis did not get", count=count
            )

    def _drop(self) -> None:
        self.dropped += 1
        now = self._clock.seconds()
        if now - self._drop_log_at >= 10:
            self._drop_log_at = now
            self._log.error(
                "Redis bus: {count} messages dropped since start ({new} in the last "
                "seconds): the buffer of {limit} bytes for Redis is full ({why})",
                count=self.dropped,
                new=self.dropped - self._dropped_logged,
                limit=self._limit,
                why=self._degraded() or "Redis is slower than the messages come",
            )
            self._dropped_logged = self.dropped
