"""
The connections of the Redis bus: txredisapi's protocol without the work the bus never
needs, and a factory that keeps one connection up and says when it is usable and when it
is gone. The bus opens two with L{connect}: one for its commands, one that waits in XREAD.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import txredisapi
from twisted.internet import defer

from telemetry_service import internals
from telemetry_service.bus.redis.address import RedisAddress
from telemetry_service.bus.redis.reader import READ_BLOCK_MS

#: a connection that has left a command unanswered this long is taken for dead and dropped
#: (txredisapi's reply timeout): a frozen Redis, or one cut off by the network without a
#: reset, would otherwise hold the hub in "connected" until TCP gives up, many minutes.
#: Longer than an XREAD's wait, which is an answer that comes late on purpose.
REPLY_TIMEOUT = READ_BLOCK_MS / 1000 + 3.0


class _Protocol(txredisapi.RedisProtocol):  # type: ignore[misc]
    """
    txredisapi's protocol without the per-value work the bus never needs, and with
    TCP_NODELAY. Its replies go through C{tryConvertData}, which rebuilds every list of a
    reply to convert numbers and decode text; with C{convertNumbers=False} and no charset
    it changes nothing, but for a stream read of a thousand entries it cost a tenth of the
    hub's time. Commands are built from bytes, which the bus always passes, with one
    C{join} (see L{internals.lean_redis_commands}).
    """

    def connectionMade(self) -> Any:
        # Commands are pipelined: without this, Nagle's algorithm holds a script call back
        # until Redis has acknowledged the one before it.
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)
        return super().connectionMade()

    def tryConvertData(self, data: Any) -> Any:
        return data


#: what this txredisapi lacks of what the lean command builder uses (empty: it is in use)
LEAN_COMMANDS_MISSING = internals.lean_redis_commands(_Protocol)


class _Factory(txredisapi.RedisFactory):  # type: ignore[misc]
    """
    One connection to Redis, kept up by txredisapi (a ClientService inside), telling the
    bus when it is usable and when it is gone.
    """

    protocol = _Protocol
    initialDelay = 0.2
    #: at most this long between attempts while Redis is away
    maxDelay = 2.0

    def __init__(
        self,
        address: RedisAddress,
        up: Callable[[Any], None],
        down: Callable[[Any], None],
    ) -> None:
        super().__init__(
            str(address),
            address.db or None,
            1,
            isLazy=True,
            charset=None,
            password=address.password,
            convertNumbers=False,
            replyTimeout=REPLY_TIMEOUT,
            username=address.username,
        )
        self._up = up
        self._down = down

    def stopTrying(self) -> Any:
        """
        txredisapi gives up for good when AUTH or SELECT fails on a new connection, and
        that includes Redis being too slow to answer them (its reply timeout, after a
        freeze). The hub keeps trying instead, every C{maxDelay} at most, as in any outage;
        it stops only when the bus closes (C{disconnect}).
        """
        return defer.succeed(None)

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            self._up(conn)

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)
        self._down(conn)


def connect(
    address: RedisAddress,
    reactor: Any,
    up: Callable[[Any], None],
    down: Callable[[Any], None],
) -> _Factory:
    """
    Connect to Redis, and connect again whenever the connection is lost, until the
    factory returned is told to C{disconnect()}.

    @param up: called with the connection each time one is usable.
    @param down: called with the connection each time one is gone.
    """
    factory = _Factory(address, up, down)
    factory.startConnecting(address.endpoint(reactor))
    return factory
