"""
Several hubs as one, on Redis (C{--redis}): one global order, one C{seq} space, one
history, one replay cache and one presence, whichever hub a connector or a dashboard is on.

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

Keys are built inside the scripts, so this needs one Redis server (or a primary with
replicas), not Redis Cluster; Redis 6.2 or later.

The modules, one part each:

    - C{bus}: L{RedisBus<bus.RedisBus>}, the hub's bus, made of the parts below; what
      happens while Redis is away;
    - C{outbox}: what this hub submitted and Redis has not applied yet;
    - C{presence}: which nodes have a connector on this hub; joins, leaves, heartbeats;
    - C{reader}: reading the stream and delivering it in order;
    - C{history}: the newest messages in memory, and which history (epoch) Redis has;
    - C{scripts}: the Lua scripts (in C{scripts/}); C{client}: the connections;
      C{address}: C{--redis} parsed; C{errorlog}: errors logged without a flood.

Nothing is imported here: the option parser imports C{address} alone, without txredisapi.
"""
