"""
Several hubs as one, on Redis: one global order, one C{seq} space, one history, one replay
cache and one presence, whichever hub a connector or a dashboard is on.

Every hub hands what it accepts to Redis, where a Lua script numbers it and appends it to
a stream; every hub reads that stream and delivers each entry to its own dashboards, its own
messages included, in stream order. So the order is Redis's, the same on every hub, and a
C{seq} from one hub means the same message on any other (a dashboard resumes anywhere).

Why a stream: it is the history and the broadcast at once. A blocked C{XREAD} wakes as soon
as an entry is added, and a hub that was away reads on from the last entry it saw, so
nothing is lost between "load the history" and "listen"; pub/sub would need both and a
window between them. C{MAXLEN ~ --history-messages} bounds it (approximate trimming costs
nothing per entry); the entry ID is the seq itself (C{<seq>-0}), so "after seq N" is the
stream position N and a resume needs no lookup.

Keys, under C{telemetry-hub:}::

    epoch      string  the history's epoch; gone when Redis loses its data, and remade
    seq        int     the last seq given
    log        stream  entry <seq>-0: "<type>\\0<nodeId>" -> the message as sent, e -> epoch
    status     hash    nodeId -> "<seq> <latest NODE_STATUS as sent>"  (the replay cache)
    order      zset    nodeId -> seq of its first status (replay order)
    online     set     nodes with a live connector on some hub
    hubs       zset    hub id -> when it is presumed dead (ms, Redis's clock)
    batch:<epoch>:<hub id>  the last batch of that hub's messages applied (a day)
    beat       int     when Redis last ran a heartbeat (ms, its clock)
    hub:<id>   hash    the nodes with a live connector on that hub -> the nodeId as JSON
    node:<id>  set     the hubs with a live connector for that node

Presence: a node is online while any hub has a live connector for it. Each hub renews its
entry in C{hubs} every second, and any hub finds the hubs that have not renewed for
C{presence_ttl} seconds (killed, frozen, cut off) and takes their nodes offline. So the nodes
of a hub that died without a word go offline within C{presence_ttl} plus one heartbeat: 6 s
with the defaults.

Redis going away (its connection closed, or a command left unanswered for
C{REPLY_TIMEOUT} seconds: a Redis frozen or cut off by the network): the hub keeps its
sockets and goes on accepting; what it accepts waits in a buffer of C{buffer_bytes}, sent
in order when Redis is back (past the bound, new messages are dropped and counted, and the
log says how many). Nothing is delivered meanwhile, not
even to this hub's own dashboards: their order has to come from Redis. A batch that was on
its way when the link broke is sent again only if Redis did not apply it (each hub's last
applied batch is kept in Redis), so it is neither lost nor doubled. When Redis comes back
without its data, the epoch changes: a resume from before says C{not_recovered}.

Keys are built inside the scripts, so this needs one Redis server (or a primary with
replicas), not Redis Cluster; Redis 6.2 or later.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import orjson
import txredisapi
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from telemetry_service.errors import ConfigurationError
from telemetry_service.history.memory import MemoryStore, StoredMessage, new_epoch

PREFIX = "telemetry-hub:"
NODE_STATUS = "NODE_STATUS"

#: most operations in one script call: Redis runs a script alone, so a long one would hold
#: up the other hubs (a thousand messages take about a millisecond)
MAX_OPS_PER_CALL = 1000
#: an error of one kind is logged at most once in this many seconds
LOG_EVERY = 10.0
#: entries per XREAD and per history chunk read at start-up
READ_COUNT = 1000
#: how long an XREAD waits for new entries before Redis answers with nothing
READ_BLOCK_MS = 2000
#: a connection that has left a command unanswered this long is taken for dead and dropped
#: (txredisapi's reply timeout): a frozen Redis, or one cut off by the network without a
#: reset, would otherwise hold the hub in "connected" until TCP gives up, many minutes.
#: Longer than an XREAD's wait, which is an answer that comes late on purpose.
REPLY_TIMEOUT = READ_BLOCK_MS / 1000 + 3.0


@dataclass(frozen=True)
class RedisAddress:
    """
    Where Redis is: C{redis://[[user]:password@]host[:port][/db]} or
    C{unix:///path/to/redis.sock[?db=N]}.
    """

    url: str
    host: str | None
    port: int
    path: str | None
    db: int
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        parts = urlsplit(url.strip())
        try:
            if parts.scheme == "redis":
                db = int(parts.path.strip("/") or 0)
                return cls(
                    url,
                    parts.hostname or "localhost",
                    parts.port or 6379,
                    None,
                    db,
                    unquote(parts.username) if parts.username else None,
                    unquote(parts.password) if parts.password else None,
                )
            if parts.scheme == "unix" and parts.path:
                query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
                return cls(url, None, 0, parts.path, int(query.get("db", 0)), None, None)
        except ValueError as e:
            raise ConfigurationError(f"bad --redis {url!r}: {e}") from None
        raise ConfigurationError(
            f"bad --redis {url!r}: expected redis://host:port/db or unix:///path/redis.sock"
        )

    def endpoint(self, reactor: Any) -> IStreamClientEndpoint:
        if self.path is not None:
            return UNIXClientEndpoint(reactor, self.path, timeout=5)
        assert self.host is not None
        return HostnameEndpoint(reactor, self.host, self.port, timeout=5)

    def __str__(self) -> str:
        # never the password, which goes to logs and /health
        if self.path is not None:
            return f"unix://{self.path} db {self.db}"
        return f"{self.host}:{self.port} db {self.db}"


# -- the scripts. Every one checks the epoch first: a hub that has not noticed that Redis
# lost its data must not write into the new history as if it were the old one.

_COMMON = r"""
local P = ARGV[1]
if redis.call('GET', P .. 'epoch') ~= ARGV[2] then
  return redis.error_reply('EPOCH the history in Redis is not the one this hub knows')
end
local maxlen = ARGV[3]
local seqkey, logkey = P .. 'seq', P .. 'log'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function publish(field, prefix)
  local seq = redis.call('INCR', seqkey)
  local payload = prefix .. seq .. '}'
  -- the epoch on every entry: a hub reading on after Redis lost its data (before it
  -- noticed) must not take the new history's entries for the old one's
  redis.call('XADD', logkey, 'MAXLEN', '~', maxlen, seq .. '-0', field, payload, 'e', ARGV[2])
  return seq, payload
end

local function presence(node, node_json, online, ts_json)
  publish('NODE_PRESENCE\0' .. node,
    '{"type":"NODE_PRESENCE","nodeId":' .. node_json .. ',"online":' .. online ..
    ',"timestamp":' .. ts_json .. ',"seq":')
end

local function join(hub, node, node_json, ts_json)
  redis.call('HSET', P .. 'hub:' .. hub, node, node_json)
  local key = P .. 'node:' .. node
  if redis.call('SADD', key, hub) == 1 and redis.call('SCARD', key) == 1 then
    redis.call('SADD', P .. 'online', node)
    presence(node, node_json, 'true', ts_json)
  end
end

local function leave(hub, node, node_json, ts_json)
  redis.call('HDEL', P .. 'hub:' .. hub, node)
  local key = P .. 'node:' .. node
  if redis.call('SREM', key, hub) == 1 and redis.call('SCARD', key) == 0 then
    redis.call('SREM', P .. 'online', node)
    presence(node, node_json, 'false', ts_json)
  end
end

local function forget_hub(hub, ts_json)
  local nodes = redis.call('HGETALL', P .. 'hub:' .. hub)
  for i = 1, #nodes, 2 do
    leave(hub, nodes[i], nodes[i + 1], ts_json)
  end
  redis.call('DEL', P .. 'hub:' .. hub)
  redis.call('ZREM', P .. 'hubs', hub)
  -- its last applied batch stays (see SUBMIT): a hub taken for dead may be alive and come
  -- back with batches it does not know were applied
end
"""

#: ARGV: prefix, epoch, maxlen, hub, batch, max_nodes, then 4 per operation:
#:   m, "<type>\0<nodeId>", message JSON up to its closing brace + ',"seq":', status node or ''
#:   j, nodeId, nodeId as JSON, timestamp as JSON   (a connector for the node arrived here)
#:   l, nodeId, nodeId as JSON, timestamp as JSON   (the last one here left)
SUBMIT = (
    _COMMON
    + r"""
local hub, max_nodes = ARGV[4], tonumber(ARGV[6])
-- The last batch of this hub applied in this epoch, for as long as a hub can be away and
-- still come back with batches it does not know the fate of (a day). A batch sent again
-- after a broken connection, which the old connection's bytes (read late, by a Redis that
-- was frozen) had already applied, is applied once.
local batchkey = P .. 'batch:' .. ARGV[2] .. ':' .. hub
if tonumber(redis.call('GET', batchkey) or '0') >= tonumber(ARGV[5]) then
  return redis.call('GET', seqkey)
end
redis.call('SET', batchkey, ARGV[5], 'EX', 86400)
local statuskey, orderkey = P .. 'status', P .. 'order'
for i = 7, #ARGV, 4 do
  local kind = ARGV[i]
  if kind == 'm' then
    local seq, payload = publish(ARGV[i + 1], ARGV[i + 2])
    local node = ARGV[i + 3]
    if node ~= '' and (redis.call('HEXISTS', statuskey, node) == 1
                       or redis.call('HLEN', statuskey) < max_nodes) then
      redis.call('HSET', statuskey, node, seq .. ' ' .. payload)
      redis.call('ZADD', orderkey, 'NX', seq, node)
    end
  elseif kind == 'j' then
    join(hub, ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
  else
    leave(hub, ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
  end
end
return redis.call('GET', seqkey)
"""
)

#: ARGV: prefix, epoch, maxlen, hub, ttl ms, timestamp as JSON, then 2 per node with a live
#: connector here: nodeId, nodeId as JSON. Makes Redis's view of this hub's nodes exactly
#: that (after a reconnect, or after another hub took this one for dead).
SYNC = (
    _COMMON
    + r"""
local hub, ttl, ts_json = ARGV[4], tonumber(ARGV[5]), ARGV[6]
redis.call('ZADD', P .. 'hubs', now + ttl, hub)
local want = {}
for i = 7, #ARGV, 2 do want[ARGV[i]] = ARGV[i + 1] end
local have = redis.call('HGETALL', P .. 'hub:' .. hub)
local had = {}
for i = 1, #have, 2 do
  had[have[i]] = true
  if want[have[i]] == nil then leave(hub, have[i], have[i + 1], ts_json) end
end
for i = 7, #ARGV, 2 do
  if not had[ARGV[i]] then join(hub, ARGV[i], ARGV[i + 1], ts_json) end
end
return 1
"""
)

#: ARGV: prefix, epoch, maxlen, hub, ttl ms, timestamp as JSON. Renews this hub and takes
#: the nodes of hubs past their time offline. Returns 0 if this hub had been taken for dead.
HEARTBEAT = (
    _COMMON
    + r"""
local hub, ttl, ts_json = ARGV[4], tonumber(ARGV[5]), ARGV[6]
-- When no hub's heartbeat reached Redis for longer than a hub may be silent, Redis itself
-- (or every way to it) had stopped: the hubs are not dead, they could not say so. They get
-- their time again rather than their nodes taken offline.
local last = tonumber(redis.call('GET', P .. 'beat') or '0')
redis.call('SET', P .. 'beat', now)
if last > 0 and now - last > ttl then
  for _, other in ipairs(redis.call('ZRANGE', P .. 'hubs', 0, -1)) do
    redis.call('ZADD', P .. 'hubs', now + ttl, other)
  end
end
local known = redis.call('ZADD', P .. 'hubs', now + ttl, hub) == 0
local dead = redis.call('ZRANGEBYSCORE', P .. 'hubs', '-inf', now)
for _, other in ipairs(dead) do
  if other ~= hub then forget_hub(other, ts_json) end
end
if known then return 1 end
return 0
"""
)

#: ARGV: prefix, epoch, maxlen, hub, ttl ms, timestamp as JSON. This hub stops: its nodes
#: go offline unless another hub has them.
GOODBYE = (
    _COMMON
    + r"""
forget_hub(ARGV[4], ARGV[6])
redis.call('DEL', P .. 'batch:' .. ARGV[2] .. ':' .. ARGV[4])
return 1
"""
)

#: ARGV: prefix, a new epoch[, an epoch to replace]. Returns the epoch, making it (and a
#: fresh history) if Redis has none (first start, or Redis lost its data) or if it is the one
#: to replace (Redis lost only its last writes: see L{RedisBus._resync}).
INIT = r"""
local P = ARGV[1]
local epoch = redis.call('GET', P .. 'epoch')
if epoch and epoch ~= ARGV[3] then return epoch end
-- presence (online, hubs, hub:*, node:*) is about the hubs and connectors alive now, not
-- about the history: it stays, and after a flush it is gone anyway. The batch records are
-- per epoch and expire.
for _, k in ipairs({'seq', 'log', 'status', 'order'}) do
  redis.call('DEL', P .. k)
end
redis.call('SET', P .. 'epoch', ARGV[2])
return ARGV[2]
"""

#: ARGV: prefix. The replay cache and presence as of one seq: {seq, {node, "<seq> status",
#: ...} in first-report order, {online nodes}}.
LOAD = r"""
local P = ARGV[1]
local seq = tonumber(redis.call('GET', P .. 'seq') or '0')
local statuses = {}
local statuskey = P .. 'status'
for _, node in ipairs(redis.call('ZRANGE', P .. 'order', 0, -1)) do
  local value = redis.call('HGET', statuskey, node)
  if value then
    statuses[#statuses + 1] = node
    statuses[#statuses + 1] = value
  end
end
return {seq, statuses, redis.call('SMEMBERS', P .. 'online')}
"""

SCRIPTS = {
    "submit": SUBMIT,
    "sync": SYNC,
    "heartbeat": HEARTBEAT,
    "goodbye": GOODBYE,
    "init": INIT,
    "load": LOAD,
}


class HubSide(Protocol):
    """
    What the bus needs of the hub.
    """

    def deliver(self, stored: StoredMessage, message: dict[str, Any] | None = None) -> None: ...

    def restore(
        self, statuses: Iterable[tuple[str, int, bytes]], online: Iterable[str]
    ) -> None: ...

    def reset_presence(self, online: Iterable[str]) -> None: ...


class SharedHistory:
    """
    The hub's view of the history in Redis: the newest messages, read from the stream,
    in a L{MemoryStore} (resumes are answered at once, from memory). The ring is replaced
    when the epoch changes or the stream skipped ahead of it.
    """

    def __init__(self, bus: RedisBus, ring: MemoryStore) -> None:
        self._bus = bus
        self.ring = ring

    @property
    def epoch(self) -> str:
        return self.ring.epoch

    @property
    def last_seq(self) -> int:
        return self.ring.last_seq

    def __len__(self) -> int:
        return len(self.ring)

    @property
    def size_bytes(self) -> int:
        return self.ring.size_bytes

    @property
    def degraded(self) -> str | None:
        return self._bus.degraded

    def append(self, message: StoredMessage) -> None:
        self.ring.append(message)

    def after(self, seq: int, limit: int) -> Sequence[StoredMessage] | None:
        return self.ring.after(seq, limit)

    def commit(self) -> None:
        # nothing to do: a message is delivered only once Redis has it
        pass

    def node_statuses(self) -> Sequence[tuple[str, int, bytes]]:
        return ()

    def node_status_changed(self, node_id: str, seq: int, payload: bytes | None) -> None:
        # new statuses are written by the submit script; a forgotten node is forgotten in
        # Redis too (every hub forgets the same nodes: they see the same messages)
        if payload is None:
            self._bus.forget_status(node_id)

    def close(self) -> Deferred[None]:
        return self._bus.close()


class _Protocol(txredisapi.RedisProtocol):  # type: ignore[misc]
    """
    txredisapi's protocol without the per-value work the bus never needs, and with
    TCP_NODELAY. Its replies go
    through ``tryConvertData``, which rebuilds every list of a reply to convert numbers and
    decode text; with ``convertNumbers=False`` and no charset it changes nothing, but for a
    stream read of a thousand entries it cost a tenth of the hub's time. Commands are built
    from bytes, which the bus always passes, with one ``join``.
    """

    def connectionMade(self) -> Any:
        # Commands are pipelined: without this, Nagle's algorithm holds a script call back
        # until Redis has acknowledged the one before it.
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)
        return super().connectionMade()

    def tryConvertData(self, data: Any) -> Any:
        return data

    def _build_command(self, *args: Any, **kwargs: Any) -> bytes:
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            if not isinstance(arg, bytes):
                arg = self._encode_value(arg)
            parts += (b"$%d\r\n" % len(arg), arg, b"\r\n")
        return b"".join(parts)


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
        it stops only when the bus closes (L{disconnect}).
        """
        return defer.succeed(None)

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            self._up(conn)

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)
        self._down(conn)


def _timestamp(clock: IReactorTime) -> bytes:
    now = datetime.fromtimestamp(clock.seconds(), UTC)
    return orjson.dumps(now.isoformat(timespec="milliseconds").replace("+00:00", "Z"))


class RedisBus:
    """
    The bus of a hub that shares Redis with others (see the module's docstring).
    """

    _log = Logger()
    shared = True

    def __init__(
        self,
        hub: HubSide,
        address: RedisAddress,
        clock: IReactorTime,
        reactor: Any,
        *,
        history_messages: int,
        history_bytes: int,
        max_nodes: int,
        buffer_bytes: int,
        heartbeat: float = 1.0,
        presence_ttl: float = 5.0,
        prefix: str = PREFIX,
    ) -> None:
        self._hub = hub
        self._address = address
        self._clock = clock
        self._reactor = reactor
        self._history_messages = history_messages
        self._history_bytes = history_bytes
        self._max_nodes = max_nodes
        self._buffer_limit = buffer_bytes
        self._heartbeat_interval = heartbeat
        self._ttl_ms = int(presence_ttl * 1000)
        self._prefix = prefix.encode()
        self._maxlen = str(history_messages).encode()
        #: this process, for presence and batches (a restarted hub is a new hub)
        self.hub_id = secrets.token_hex(6)
        # the epoch of the history we know (None: not loaded yet); the ring before that
        # has an epoch no client can name, so every resume says not_recovered
        self._epoch: str | None = None
        self._history = SharedHistory(self, MemoryStore(history_messages, history_bytes))
        self._shas: dict[str, bytes] = {}
        self._commands: Any = None  # the usable command connection, once resynced
        self._reader: Any = None  # the connection for XREAD, while up
        self._session: object | None = None
        self._reading: object | None = None
        # operations waiting for the next call: ("m", field, prefix, status node) or
        # ("j" | "l", nodeId, nodeId as JSON, timestamp as JSON)
        self._queue: list[tuple[bytes, bytes, bytes, bytes]] = []
        self._queued_bytes = 0
        # batches sent and not yet answered: batch -> its message operations, bytes
        self._inflight: dict[int, tuple[list[tuple[bytes, bytes, bytes, bytes]], int]] = {}
        self._inflight_bytes = 0
        # batches to send again with their numbers, before the queue (see _requeue)
        self._resend: list[tuple[int, list[tuple[bytes, bytes, bytes, bytes]], int]] = []
        self._next_batch = 1
        self._flush_call: Any = None
        # nodes with a live connector on this hub -> nodeId as JSON
        self._local_nodes: dict[str, bytes] = {}
        self._kinds: dict[bytes, str] = {}
        self._degraded: str | None = f"starting: connecting to Redis at {address}"
        self._down_since: float | None = clock.seconds()
        self._closing = False
        #: messages refused because the buffer was full, since start
        self.dropped = 0
        self._dropped_logged = 0
        self._drop_log_at = 0.0
        # kind of error -> when it was last logged, how many were held back since
        self._error_log: dict[str, tuple[float, int]] = {}
        #: epochs seen change since start (Redis lost its data)
        self.epoch_changes = 0
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = clock
        self._factories: list[_Factory] = []

    # -- Bus

    @property
    def store(self) -> SharedHistory:
        return self._history

    @property
    def degraded(self) -> str | None:
        return self._degraded

    @property
    def buffered_bytes(self) -> int:
        return self._queued_bytes + self._inflight_bytes

    def health(self) -> dict[str, Any]:
        return {
            "kind": "redis",
            "redis": str(self._address),
            "hubId": self.hub_id,
            "degraded": self._degraded,
            "bufferedBytes": self.buffered_bytes,
            "dropped": self.dropped,
        }

    def submit(self, message: dict[str, Any], message_type: str, node_id: str | None) -> None:
        message.pop("seq", None)
        body = orjson.dumps(message)
        prefix = body[:-1] + b',"seq":'
        size = len(prefix)
        if self.buffered_bytes + size > self._buffer_limit:
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
        self._schedule_flush()

    def node_joined(self, node_id: str, event: dict[str, Any]) -> None:
        node_json = orjson.dumps(node_id)
        self._local_nodes[node_id] = node_json
        if self._commands is not None:  # else the sync after the reconnect says it
            ts = orjson.dumps(event["timestamp"])
            self._queue.append((b"j", node_id.encode(), node_json, ts))
            self._schedule_flush()

    def node_left(self, node_id: str, event: dict[str, Any]) -> None:
        node_json = self._local_nodes.pop(node_id, None) or orjson.dumps(node_id)
        if self._commands is not None:
            ts = orjson.dumps(event["timestamp"])
            self._queue.append((b"l", node_id.encode(), node_json, ts))
            self._schedule_flush()

    def forget_status(self, node_id: str) -> None:
        if self._commands is not None:
            node = node_id.encode()
            self._send(b"HDEL", self._key(b"status"), node).addErrback(self._ignore)
            self._send(b"ZREM", self._key(b"order"), node).addErrback(self._ignore)

    # -- starting and stopping

    def start(self) -> None:
        """
        Connect (and keep reconnecting) to Redis: one connection for commands, one that
        waits in XREAD.
        """
        for up, down in (
            (self._commands_up, self._commands_down),
            (self._reader_up, self._reader_down),
        ):
            factory = _Factory(self._address, up, down)
            factory.startConnecting(self._address.endpoint(self._reactor))
            self._factories.append(factory)
        self._log.info(
            "Redis bus: connecting to {redis} as hub {hub}",
            redis=str(self._address),
            hub=self.hub_id,
        )

    @defer.inlineCallbacks
    def close(self) -> Any:
        """
        Send what is waiting, take this hub's nodes offline (unless other hubs have them),
        and disconnect; at most a few seconds.
        """
        self._closing = True
        if self._heartbeat.running:
            self._heartbeat.stop()
        if self._commands is not None:
            self._flush()
            try:
                yield self._within(3.0, self._script("goodbye", b"0", self._timestamp(), b""))
            except Exception as e:
                self._log.warn("Redis bus: could not say goodbye: {error}", error=str(e))
        if self._queued_bytes or self._inflight_bytes or self.dropped:
            self._log.warn(
                "Redis bus: stopping with {bytes} bytes of messages not in Redis "
                "({dropped} dropped since start)",
                bytes=self.buffered_bytes,
                dropped=self.dropped,
            )
        for factory in self._factories:
            yield factory.disconnect()

    def _within(self, seconds: float, d: Deferred[Any]) -> Deferred[Any]:
        return d.addTimeout(seconds, self._clock)

    # -- the connections

    def _commands_up(self, conn: Any) -> None:
        session = self._session = object()
        self._resync(conn, session).addErrback(self._resync_failed, conn, session)

    def _commands_down(self, conn: Any) -> None:
        self._session = None
        if self._commands is conn or self._commands is None:
            self._commands = None
            self._went_down(
                f"the command connection to Redis was lost "
                f"(closed, or no answer for {REPLY_TIMEOUT:g} s)"
            )

    def _reader_up(self, conn: Any) -> None:
        self._reader = conn
        if self._epoch is not None and self._commands is not None:
            self._read_from(conn)
            self._came_up()

    def _reader_down(self, conn: Any) -> None:
        if self._reader is conn:
            self._reader = None
            self._reading = None
            self._went_down(
                f"the reading connection to Redis was lost "
                f"(closed, or no answer for {REPLY_TIMEOUT:g} s)"
            )

    def _went_down(self, why: str) -> None:
        if self._closing:
            return
        if self._degraded is None:
            self._down_since = self._clock.seconds()
            self._log.error(
                "Redis bus: degraded, {why}; accepting and buffering (up to {limit} bytes) "
                "until it is back",
                why=why,
                limit=self._buffer_limit,
            )
        self._degraded = f"{why} (Redis at {self._address})"

    def _came_up(self) -> None:
        if self._commands is None or self._reader is None or self._degraded is None:
            return
        was = self._degraded
        self._degraded = None
        if was.startswith("starting"):
            self._log.info(
                "Redis bus: connected to {redis}, epoch {epoch}, seq {seq}",
                redis=str(self._address),
                epoch=self._epoch,
                seq=self._history.last_seq,
            )
        else:
            down = self._clock.seconds() - (self._down_since or self._clock.seconds())
            self._log.info(
                "Redis bus: back after {seconds:.1f} s; {dropped} messages dropped so far",
                seconds=down,
                dropped=self.dropped,
            )

    # -- (re)connecting: the epoch, the history, what was on its way, presence

    @defer.inlineCallbacks
    def _resync(self, conn: Any, session: object) -> Any:
        for name, source in SCRIPTS.items():
            self._shas[name] = yield conn.execute_command(b"SCRIPT", b"LOAD", source)
        epoch = (
            yield conn.execute_command(
                b"EVALSHA", self._shas["init"], b"0", self._prefix, new_epoch().encode()
            )
        ).decode()
        if session is not self._session:
            return
        if self._epoch is None:
            yield self._load(conn, epoch, session)
        elif epoch != self._epoch:
            online = yield conn.execute_command(b"SMEMBERS", self._key(b"online"))
            if session is not self._session:
                return
            self._new_epoch(epoch, online)
        else:
            seq = int((yield conn.execute_command(b"GET", self._key(b"seq"))) or 0)
            if seq < self._history.last_seq:
                # Redis came back from its disk without its last writes (appendfsync
                # everysec loses up to a second): seqs this hub delivered would be given to
                # other messages. A new epoch, for every hub, rather than that.
                self._log.error(
                    "Redis bus: Redis is at seq {seq} but this hub delivered up to {last}: "
                    "it lost its last writes; starting a new epoch",
                    seq=seq,
                    last=self._history.last_seq,
                )
                epoch = (
                    yield conn.execute_command(
                        b"EVALSHA",
                        self._shas["init"],
                        b"0",
                        self._prefix,
                        new_epoch().encode(),
                        epoch.encode(),
                    )
                ).decode()
                if session is not self._session:
                    return
                online = yield conn.execute_command(b"SMEMBERS", self._key(b"online"))
                if session is not self._session:
                    return
                self._new_epoch(epoch, online)
            else:
                applied = yield conn.execute_command(
                    b"GET", self._key(b"batch:%s:%s" % (epoch.encode(), self.hub_id.encode()))
                )
                self._requeue(int(applied or 0))
        if session is not self._session:
            return
        self._commands = conn
        yield self._sync(conn)
        if not self._heartbeat.running:
            self._heartbeat.start(self._heartbeat_interval, now=False)
        self._flush()
        if self._reader is not None and self._reading is None:
            self._read_from(self._reader)
        self._came_up()

    def _resync_failed(self, failure: Failure, conn: Any, session: object) -> None:
        if session is not self._session or self._closing:
            return  # the connection went (again); its return resyncs
        self._error(
            "resync",
            "Redis bus: could not set up with {redis}: {error}; trying again",
            redis=str(self._address),
            error=failure.getErrorMessage(),
        )
        conn.transport.loseConnection()

    @defer.inlineCallbacks
    def _load(self, conn: Any, epoch: str, session: object) -> Any:
        """
        At start-up: the replay cache, presence and history as of one seq.
        """
        seq, flat, online = yield conn.execute_command(
            b"EVALSHA", self._shas["load"], b"0", self._prefix
        )
        seq = int(seq)
        statuses = []
        for i in range(0, len(flat), 2):
            node, value = flat[i].decode(), flat[i + 1]
            status_seq, _, payload = value.partition(b" ")
            statuses.append((node, int(status_seq), payload))
        # the newest messages up to seq, newest first, in chunks
        entries: list[Any] = []
        end = f"{seq}-0".encode()
        while len(entries) < self._history_messages:
            count = min(READ_COUNT * 10, self._history_messages - len(entries))
            chunk = yield conn.execute_command(
                b"XREVRANGE", self._key(b"log"), end, b"-", b"COUNT", str(count).encode()
            )
            entries.extend(chunk)
            if len(chunk) < count:
                break
            end = b"(" + chunk[-1][0]
        if session is not self._session:
            return
        first = int(entries[-1][0][:-2]) if entries else seq + 1
        ring = MemoryStore(self._history_messages, self._history_bytes, epoch, first - 1)
        for entry in reversed(entries):
            ring.append(self._stored(entry))
        self._history.ring = ring
        self._epoch = epoch
        self._hub.restore(statuses, [n.decode() for n in online])
        self._log.info(
            "Redis bus: loaded {count} messages (to seq {seq}), {nodes} node statuses, "
            "{online} nodes online elsewhere",
            count=len(ring),
            seq=seq,
            nodes=len(statuses),
            online=len(online),
        )

    def _new_epoch(self, epoch: str, online: Iterable[bytes]) -> None:
        """
        Redis lost its data: a new history, from seq 1; what was on its way goes again.
        Presence is what Redis says now (C{online}, then the presence events of the new
        history): the old one's events this hub did not read are gone with it.
        """
        self._log.warn(
            "Redis bus: Redis lost its data (epoch {old} is gone, now {new}); dashboards "
            "that resume from before are told not_recovered",
            old=self._epoch,
            new=epoch,
        )
        self.epoch_changes += 1
        self._epoch = epoch
        self._history.ring = MemoryStore(self._history_messages, self._history_bytes, epoch)
        self._hub.reset_presence(node.decode() for node in online)
        self._requeue(0, renumber=True)
        if self._reader is not None:
            # the XREAD waiting now is for entries after a seq of the old history: its
            # answer will be ignored, and the new one (queued behind it) reads from 0
            self._read_from(self._reader)

    def _requeue(self, applied: int, *, renumber: bool = False) -> None:
        """
        Send the batches Redis did not apply again, in order, before anything queued.

        They keep their numbers: the old connection's bytes may still reach Redis after
        the new connection asked what was applied (a Redis that was frozen reads both when
        it wakes), and the script applies a number only once. In a new epoch they go as
        new batches (Redis forgot every number).
        """
        again: list[tuple[bytes, bytes, bytes, bytes]] = []
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

    def _sync(self, conn: Any) -> Deferred[Any]:
        args: list[bytes] = []
        for node, node_json in self._local_nodes.items():
            args += (node.encode(), node_json)
        # joins and leaves queued before the connection was usable are in this
        self._queue = [op for op in self._queue if op[0] == b"m"]
        return self._script("sync", str(self._ttl_ms).encode(), self._timestamp(), *args)

    # -- sending

    def _schedule_flush(self) -> None:
        if self._flush_call is None and self._commands is not None:
            self._flush_call = self._clock.callLater(0, self._flush)

    def _flush(self) -> None:
        """
        Send what was queued during this reactor pass: one script call per thousand
        operations, pipelined on the connection (Redis runs them in order).
        """
        self._flush_call = None
        queue = self._queue
        if not (queue or self._resend) or self._commands is None:
            return
        resend, self._resend = self._resend, []
        self._queue = []
        self._queued_bytes = 0
        for batch, messages, size in resend:
            self._submit(batch, messages, messages, size)
        for start in range(0, len(queue), MAX_OPS_PER_CALL):
            ops = queue[start : start + MAX_OPS_PER_CALL]
            batch = self._next_batch
            self._next_batch += 1
            messages = [op for op in ops if op[0] == b"m"]
            self._submit(batch, ops, messages, sum(len(op[2]) for op in messages))

    def _submit(
        self,
        batch: int,
        ops: list[tuple[bytes, bytes, bytes, bytes]],
        messages: list[tuple[bytes, bytes, bytes, bytes]],
        size: int,
    ) -> None:
        # joins and leaves are not kept: a reconnect says which nodes this hub has anyway
        self._inflight[batch] = (messages, size)
        self._inflight_bytes += size
        args: list[bytes] = []
        for op in ops:
            args += op
        d = self._script("submit", str(batch).encode(), str(self._max_nodes).encode(), *args)
        d.addCallbacks(
            self._applied,
            self._not_applied,
            callbackArgs=(batch,),
            errbackArgs=(batch,),
        )

    def _applied(self, last_seq: Any, batch: int) -> None:
        done = self._inflight.pop(batch, None)
        if done is not None:
            self._inflight_bytes -= done[1]

    def _not_applied(self, failure: Failure, batch: int) -> None:
        if failure.check(txredisapi.ConnectionError):
            return  # still in flight: the resync after the reconnect decides
        if self._epoch_changed(failure):
            return
        done = self._inflight.pop(batch, None)
        if done is None:
            return
        self._inflight_bytes -= done[1]
        self.dropped += len(done[0])
        self._error(
            "refused",
            "Redis bus: Redis refused {count} messages: {error}",
            count=len(done[0]),
            error=failure.getErrorMessage(),
        )

    def _epoch_changed(self, failure: Failure) -> bool:
        """
        A script found another epoch in Redis (its data was flushed while we were
        connected): resync as after a reconnect.
        """
        if not failure.check(txredisapi.ResponseError):
            return False
        error = str(failure.value)
        # NOSCRIPT: Redis forgot the scripts (SCRIPT FLUSH, a failover to a replica that
        # never loaded them); the resync loads them again
        if not (error.startswith("EPOCH") or error.startswith("NOSCRIPT")):
            return False
        conn = self._commands
        if conn is not None and self._session is not None:
            self._commands = None
            session = self._session = object()
            self._resync(conn, session).addErrback(self._resync_failed, conn, session)
        return True

    def _error(self, kind: str, text: str, failure: Failure | None = None, **fields: Any) -> None:
        """
        Log an error at most once per C{LOG_EVERY} seconds for each kind, saying how many
        like it were held back: an outage must not flood the log.
        """
        now = self._clock.seconds()
        last, held = self._error_log.get(kind, (float("-inf"), 0))
        if now - last < LOG_EVERY:
            self._error_log[kind] = (last, held + 1)
            return
        self._error_log[kind] = (now, 0)
        if held:
            text += " ({held} more like it held back)"
        if failure is not None:
            self._log.failure(text, failure, held=held, **fields)
        else:
            self._log.error(text, held=held, **fields)

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
                limit=self._buffer_limit,
                why=self._degraded or "Redis is slower than the messages come",
            )
            self._dropped_logged = self.dropped

    def _script(self, name: str, *args: bytes) -> Deferred[Any]:
        return self._send(
            b"EVALSHA",
            self._shas[name],
            b"0",
            self._prefix,
            (self._epoch or "").encode(),
            self._maxlen,
            self.hub_id.encode(),
            *args,
        )

    def _send(self, *command: bytes) -> Deferred[Any]:
        conn = self._commands
        if conn is None:
            return defer.fail(txredisapi.ConnectionError("Not connected"))
        try:
            d: Deferred[Any] = conn.execute_command(*command)
        except txredisapi.ConnectionError as e:
            return defer.fail(e)
        return d

    def _ignore(self, failure: Failure) -> None:
        if not failure.check(txredisapi.ConnectionError):
            self._log.warn("Redis bus: {error}", error=failure.getErrorMessage())

    def _key(self, name: bytes) -> bytes:
        return self._prefix + name

    def _timestamp(self) -> bytes:
        return _timestamp(self._clock)

    # -- presence

    def _beat(self) -> None:
        if self._commands is None:
            return
        d = self._script("heartbeat", str(self._ttl_ms).encode(), self._timestamp())
        d.addCallbacks(self._beaten, self._beat_failed)

    def _beaten(self, known: Any) -> None:
        if known == 0 and self._commands is not None:
            self._log.warn(
                "Redis bus: the other hubs took this one for dead (no heartbeat for "
                "{ttl} s); saying which nodes it has again",
                ttl=self._ttl_ms / 1000,
            )
            self._sync(self._commands).addErrback(self._ignore)

    def _beat_failed(self, failure: Failure) -> None:
        if not self._epoch_changed(failure):
            self._ignore(failure)

    # -- reading the stream

    def _read_from(self, conn: Any) -> None:
        reading = self._reading = object()
        self._read(conn, reading)

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
                self._key(b"log"),
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
        epoch = (self._epoch or "").encode()
        for entry in entries:
            values = entry[1]
            if len(values) >= 4 and values[3] != epoch:
                # Redis lost its data and another hub already wrote a new history past
                # where this one was: nothing of it is delivered as the old one's; the
                # resync starts the new history from its first entry
                self._reading = None  # this reading stops; the resync reads again
                self._epoch_changed(Failure(txredisapi.ResponseError("EPOCH seen in the stream")))
                return
            stored = self._stored(entry)
            ring = history.ring
            expected = ring.last_seq + 1
            if stored.seq != expected:
                if stored.seq < expected:
                    continue
                self._skipped(stored.seq - expected)
            ring = history.ring
            ring.append(stored)
            try:
                deliver(stored, None)
            except Exception:
                # one message the hub could not deliver must not stop the others
                self._error(
                    "deliver", "Redis bus: delivering seq {seq} failed", Failure(), seq=stored.seq
                )

    def _skipped(self, count: int) -> None:
        """
        The stream was trimmed past messages this hub had not read (it lagged by more than
        the history): they are gone; start the ring again after them.
        """
        self._log.error(
            "Redis bus: {count} messages were trimmed from Redis before this hub read them; "
            "its dashboards miss them, and resumes from before them say not_recovered",
            count=count,
        )
        ring = self._history.ring
        self._history.ring = MemoryStore(
            self._history_messages, self._history_bytes, ring.epoch, ring.last_seq + count
        )

    def _read_failed(self, failure: Failure, conn: Any, reading: object) -> None:
        if reading is not self._reading or failure.check(txredisapi.ConnectionError):
            return  # the connection is gone; its return starts reading again
        self._log.error(
            "Redis bus: reading the stream failed: {error}", error=failure.getErrorMessage()
        )
        self._reading = None
        conn.transport.loseConnection()

    def _stored(self, entry: Any) -> StoredMessage:
        entry_id, values = entry
        field, payload = values[0], values[1]
        kind, _, node = field.partition(b"\0")
        type_name = self._kinds.get(kind)
        if type_name is None:
            type_name = self._kinds[kind] = kind.decode()
        return StoredMessage(
            int(entry_id[:-2]), type_name, node.decode() if node else None, payload
        )
