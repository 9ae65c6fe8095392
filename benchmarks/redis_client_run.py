"""
One client's run for benchmarks/redis_clients.py (a process of its own, so that each client
gets the reactor it needs): python redis_client_run.py txredisapi|redis-py PORT MESSAGES.
Prints one JSON line.
"""
# ruff: noqa: E402

import json
import os
import resource
import sys
import time

client, port, messages = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sys.path.insert(0, os.getcwd())
if client != "txredisapi":  # before anything imports the default reactor
    from twisted.internet import asyncioreactor

    asyncioreactor.install()
from telemetry_service.bus.redis.scripts import SCRIPTS

BATCH = 100
P = b"bench:"
PAYLOAD = (
    b'{"type":"PACKET_SENT","nodeId":"connector-a","timestamp":"2025-12-27T10:00:00.000Z",'
    b'"data":{"packetId":"' + b"a" * 64 + b'","nextHop":"connectorC"},"seq":'
)
FIELD = b"PACKET_SENT\0connector-a"


def ops(n):
    args = []
    for _ in range(n):
        args += (b"m", FIELD, PAYLOAD, b"")
    return args


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def report(**kw):
    print(json.dumps(kw), flush=True)


if client == "txredisapi":
    import txredisapi
    from twisted.internet import defer, reactor

    @defer.inlineCallbacks
    def main():
        cmd = yield txredisapi.Connection("127.0.0.1", port, charset=None, convertNumbers=False)
        rd = yield txredisapi.Connection("127.0.0.1", port, charset=None, convertNumbers=False)
        yield cmd.execute_command(b"FLUSHALL")
        yield cmd.execute_command(b"SET", P + b"epoch", b"e")
        sha = yield cmd.execute_command(b"SCRIPT", b"LOAD", SCRIPTS["submit"])
        head = [b"EVALSHA", sha, b"0", P, b"e", b"1000000", b"h"]
        state = {"read": 0, "last": b"0-0"}

        def read():
            d = rd.execute_command(
                b"XREAD",
                b"COUNT",
                b"1000",
                b"BLOCK",
                b"2000",
                b"STREAMS",
                P + b"log",
                state["last"],
            )
            return d

        # throughput
        started, c0 = time.perf_counter(), cpu()
        batch = [0]

        def submit():
            for _ in range(10):  # ten calls per reactor pass, as a busy hub
                if batch[0] * BATCH >= messages:
                    return
                batch[0] += 1
                cmd.execute_command(*head, str(batch[0]).encode(), b"100000", *ops(BATCH))
            reactor.callLater(0, submit)

        submit()
        while state["read"] < messages:
            reply = yield read()
            if reply:
                entries = reply[0][1]
                for entry_id, (field, _payload) in entries:
                    int(entry_id[:-2])
                    field.partition(b"\0")
                state["read"] += len(entries)
                state["last"] = entries[-1][0]
        elapsed, used = time.perf_counter() - started, cpu() - c0
        # latency, one message alone
        samples = []
        for _i in range(2000):
            t0 = time.perf_counter()
            cmd.execute_command(*head, b"9", b"100000", *ops(1))
            while True:
                reply = yield read()
                if reply:
                    state["last"] = reply[0][1][-1][0]
                    break
            samples.append(time.perf_counter() - t0)
        report(
            client=client, rate=messages / elapsed, cpu_us=used / messages * 1e6, samples=samples
        )
        reactor.stop()

    def run():
        main().addErrback(lambda f: (f.printTraceback(), reactor.stop()))

    reactor.callWhenRunning(run)
    reactor.run()
else:
    import asyncio

    import redis.asyncio as aioredis
    from twisted.internet import defer, reactor

    async def amain():
        cmd = aioredis.Redis(host="127.0.0.1", port=port)
        rd = aioredis.Redis(host="127.0.0.1", port=port)
        await cmd.flushall()
        await cmd.set(P + b"epoch", b"e")
        sha = await cmd.script_load(SCRIPTS["submit"])
        head = [P, b"e", b"1000000", b"h"]
        state = {"read": 0, "last": b"0-0"}
        started, c0 = time.perf_counter(), cpu()

        # The bus needs Redis to apply batches in the order sent. redis-py's asyncio client
        # spreads concurrent commands over a pool of connections (no order between them),
        # so the order-keeping way is one pipeline per reactor pass on one connection,
        # awaited before the next (commands queued meanwhile join the next pipeline).
        async def submitter():
            n = 0
            while n * BATCH < messages:
                pipe = cmd.pipeline(transaction=False)
                for _ in range(10):
                    if n * BATCH >= messages:
                        break
                    n += 1
                    pipe.evalsha(sha, 0, *head, str(n).encode(), b"100000", *ops(BATCH))
                await pipe.execute()

        s = asyncio.ensure_future(submitter())
        while state["read"] < messages:
            reply = await rd.xread({P + b"log": state["last"]}, count=1000, block=2000)
            if reply:
                entries = reply[0][1]
                for entry_id, fields in entries:
                    int(entry_id[:-2])
                    next(iter(fields.items()))[0].partition(b"\0")
                state["read"] += len(entries)
                state["last"] = entries[-1][0]
        await s
        elapsed, used = time.perf_counter() - started, cpu() - c0
        samples = []
        for _i in range(2000):
            t0 = time.perf_counter()
            f = asyncio.ensure_future(cmd.evalsha(sha, 0, *head, b"9", b"100000", *ops(1)))
            while True:
                reply = await rd.xread({P + b"log": state["last"]}, count=1000, block=2000)
                if reply:
                    state["last"] = reply[0][1][-1][0]
                    break
            await f
            samples.append(time.perf_counter() - t0)
        report(
            client=client, rate=messages / elapsed, cpu_us=used / messages * 1e6, samples=samples
        )

    def main():
        d = defer.Deferred.fromFuture(asyncio.ensure_future(amain()))
        d.addBoth(lambda r: (print(r, file=sys.stderr) if r is not None else None, reactor.stop()))

    reactor.callWhenRunning(main)
    reactor.run()
