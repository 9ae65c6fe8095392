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
    #: on SIGTERM/SIGINT, seconds to wait for peers to answer the 1001 close before exiting
    shutdown_grace: float = 3.0

    #: per dashboard: bytes of messages waiting for a reader that has stopped reading; past
    #: this the dashboard is disconnected with close code 4008
    max_queued_bytes: int = 1024 * 1024

    # -- history (resume)
    #: messages kept for dashboards that reconnect and resume
    history_messages: int = 100_000
    #: ... and at most this many bytes of them (payloads plus ~100 bytes each of bookkeeping)
    history_bytes: int = 16 * 1024 * 1024

    # -- hub behaviour
    #: most events in one {"batch": [...]} frame
    max_batch: int = 1000
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
