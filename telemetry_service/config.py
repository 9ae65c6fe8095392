"""
Every limit, timeout and switch of the hub, with its safe default, in one place.

The command line (L{telemetry_service.tap}) fills a L{Settings} from options and environment
variables; everything else receives the finished object.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    # -- WebSocket transport
    #: largest message (and frame) payload accepted; larger ones close the connection with 1009
    max_message_bytes: int = 64 * 1024
    #: seconds between WebSocket pings to each peer
    ping_interval: float = 30.0
    #: seconds to wait for the answer to a ping before dropping the connection
    ping_timeout: float = 60.0
    #: seconds a new connection has to complete the WebSocket opening handshake
    handshake_timeout: float = 10.0
    #: seconds to wait for the peer's answer to our close frame before dropping the TCP link
    close_timeout: float = 2.0
    #: listen backlog; Twisted's default of 50 overflows under bursts of reconnecting peers
    backlog: int = 1024
    #: on SIGTERM/SIGINT and SIGUSR2, seconds to wait for peers to answer the close (1001,
    #: 1012) before dropping them: short, so that no peer holds up a stop or a restart
    #: (clients that answer at all answer within milliseconds)
    shutdown_grace: float = 0.25

    #: per connection: bytes the hub holds for it (frames of this reactor pass, frames
    #: waiting for a slow reader, the unsent part of a snapshot or resume); past this the
    #: connection is closed with close code 4008
    max_queued_bytes: int = 1024 * 1024
    #: all connections together: bytes waiting for slow readers; past this the biggest
    #: queues are closed with 4008 first, so that many clients each within their own budget
    #: cannot add up to the hub's memory
    max_total_queued_bytes: int = 256 * 1024 * 1024
    #: open connections in all, and from one address (counted from the TCP connection on,
    #: so connections that never say what they are count too); refused at the handshake
    max_connections: int = 20_000
    max_connections_per_address: int = 256

    # -- history (resume)
    #: messages kept for dashboards that reconnect and resume
    history_messages: int = 100_000
    #: ... and at most this many bytes of them (payloads plus ~100 bytes each of bookkeeping)
    history_bytes: int = 16 * 1024 * 1024

    #: with Redis: bytes of accepted messages held while Redis is away or behind
    redis_buffer_bytes: int = 64 * 1024 * 1024

    # -- hub behaviour
    #: most events in one {"batch": [...]} frame: the real connector flushes at 1,000
    max_batch: int = 1000
    #: largest {"batch": [...]} frame. The connector's full batch of PACKET_RECEIVED is about
    #: 266 KB (1,000 events of ~270 bytes); 1 MiB leaves room for ~1 KiB events (LOG lines
    #: with context, NODE_STATUS with routes). Each event in it is still held to
    #: max_message_bytes.
    max_batch_bytes: int = 1024 * 1024
    #: bytes of NODE_STATUS kept in the replay cache (each status is at most
    #: max_message_bytes); past it, as past max_nodes, the oldest offline node goes first
    max_replay_bytes: int = 64 * 1024 * 1024
    #: per connection: events accepted per second, sustained, with bursts of two seconds'
    #: worth; each event of a batch counts. A real connector aims at 10,000 packets/s, three
    #: events each.
    messages_per_second: float = 50_000.0
    #: a connection over its message rate in this many consecutive seconds is closed (1008)
    rate_abuse_seconds: int = 5
    #: per connection: snapshots and resumes (CLIENT_CONNECT) per second and at once
    replays_per_second: float = 0.5
    replays_burst: int = 5
    #: how many nodes' latest NODE_STATUS the replay cache keeps
    max_nodes: int = 10_000
    #: deepest JSON nesting accepted (objects and arrays)
    max_depth: int = 32
    #: send an ERROR frame to the sender of a refused message
    error_frames: bool = True
    #: per connection: refused-message warnings logged per second (sustained) and at once (burst)
    warnings_per_second: float = 1.0
    warnings_burst: int = 10
    #: per connection: error frames sent per second (sustained) and at once (burst)
    error_frames_per_second: float = 10.0
    error_frames_burst: int = 20

    @property
    def messages_burst(self) -> int:
        return max(1, int(2 * self.messages_per_second))
