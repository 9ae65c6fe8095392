"""
The command line of C{twistd telemetry}: every option, its environment variable and its
default, each stated once in L{OPTIONS} (C{--help} prints the table), read into L{Options}.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.python import usage

from telemetry_service.auth import parse_origins
from telemetry_service.config import Settings
from telemetry_service.errors import ConfigurationError
from telemetry_service.logs import FORMATS, LEVELS
from telemetry_service.schemas import shipped_schemas_dir

if TYPE_CHECKING:
    from telemetry_service.bus.redis.address import RedisAddress

_DEFAULTS = Settings()


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"{text!r} is not a positive integer")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"{text!r} is not a positive number")
    return value


def _choice(*allowed: str) -> Callable[[str], str]:
    def coerce(text: str) -> str:
        value = text.strip().lower()
        if value not in allowed:
            raise ValueError(f"{text!r} is not one of {', '.join(allowed)}")
        return value

    return coerce


def _on_off(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "on", "true", "yes"):
        return True
    if value in ("0", "off", "false", "no"):
        return False
    raise ValueError(f"{text!r} is not on or off")


@dataclass(frozen=True)
class Option:
    name: str
    env: str
    default: str
    coerce: Callable[[str], Any]
    help: str
    #: the L{Settings} field this option sets, if any
    setting: str | None = None


def _d(field: str) -> str:
    value = getattr(_DEFAULTS, field)
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


OPTIONS = [
    Option(
        "port",
        "TELEMETRY_WS_PORT",
        "9000",
        str,
        "WebSocket listening port: a number or a Twisted endpoint string "
        "(tcp:9000:interface=127.0.0.1, ssl:9443:privateKey=key.pem, unix:/run/hub.sock)",
    ),
    Option(
        "http-port",
        "TELEMETRY_HTTP_PORT",
        "8080",
        str,
        "HTTP port for the live network page (/) and /health: a number, an endpoint string, or off",
    ),
    Option(
        "schemas",
        "TELEMETRY_SCHEMAS_DIR",
        "(the shipped schemas)",
        str,
        "folder of JSON Schema files, one per message type",
    ),
    Option(
        "tokens",
        "TELEMETRY_TOKENS_FILE",
        "(none: anyone may publish and read)",
        str,
        "token file (telemetry-token makes its lines): connector tokens to publish, viewer "
        "tokens to read; reloaded on SIGHUP",
    ),
    Option(
        "allowed-origins",
        "TELEMETRY_ALLOWED_ORIGINS",
        "(any)",
        parse_origins,
        "browser origins allowed to open a WebSocket, comma-separated, * as wildcard "
        "(https://dash.example.com,https://*.example.com); the hub's own page and clients "
        "that send no Origin always may",
    ),
    Option(
        "store",
        "TELEMETRY_STORE",
        "sqlite",
        _choice("sqlite", "memory"),
        "where the hub keeps its history and replay cache: sqlite (a file in --state-dir, "
        "kept across restarts) or memory (lost at every restart)",
    ),
    Option(
        "state-dir",
        "TELEMETRY_STATE_DIR",
        "(~/.local/state/telemetry-hub)",
        str,
        "folder of the sqlite store's file ($XDG_STATE_HOME/telemetry-hub if that is set)",
    ),
    Option(
        "redis",
        "TELEMETRY_REDIS_URL",
        "(none: this hub on its own)",
        str,
        "share one Redis with other hubs and behave as one hub (one order, one seq, one "
        "history, shared presence): redis://[:password@]host:port/db or "
        "unix:///path/redis.sock; --store is then not used",
    ),
    Option(
        "redis-buffer-bytes",
        "TELEMETRY_REDIS_BUFFER_BYTES",
        _d("redis_buffer_bytes"),
        _positive_int,
        "with --redis: bytes of accepted messages held while Redis is away or behind; "
        "past it new messages are dropped (and counted in the log)",
        "redis_buffer_bytes",
    ),
    Option(
        "log-level",
        "LOG_LEVEL",
        "info",
        _choice(*LEVELS),
        "lowest level logged: " + ", ".join(LEVELS),
    ),
    Option(
        "log-format",
        "LOG_FORMAT",
        "text",
        _choice(*FORMATS),
        "text (for people) or json (one JSON object per line, for machines)",
    ),
    Option(
        "max-message-bytes",
        "TELEMETRY_MAX_MESSAGE_BYTES",
        _d("max_message_bytes"),
        _positive_int,
        "largest message accepted; larger ones close with 1009",
        "max_message_bytes",
    ),
    Option(
        "ping-interval",
        "TELEMETRY_PING_INTERVAL",
        _d("ping_interval"),
        _positive_float,
        "seconds between WebSocket pings",
        "ping_interval",
    ),
    Option(
        "ping-timeout",
        "TELEMETRY_PING_TIMEOUT",
        _d("ping_timeout"),
        _positive_float,
        "seconds without an answer to a ping before the connection is dropped",
        "ping_timeout",
    ),
    Option(
        "handshake-timeout",
        "TELEMETRY_HANDSHAKE_TIMEOUT",
        _d("handshake_timeout"),
        _positive_float,
        "seconds allowed for the WebSocket opening handshake",
        "handshake_timeout",
    ),
    Option(
        "backlog",
        "TELEMETRY_BACKLOG",
        _d("backlog"),
        _positive_int,
        "listen backlog (pending TCP connections)",
        "backlog",
    ),
    Option(
        "max-nodes",
        "TELEMETRY_MAX_NODES",
        _d("max_nodes"),
        _positive_int,
        "nodes whose latest NODE_STATUS is kept for replay",
        "max_nodes",
    ),
    Option(
        "max-depth",
        "TELEMETRY_MAX_DEPTH",
        _d("max_depth"),
        _positive_int,
        "deepest JSON nesting accepted",
        "max_depth",
    ),
    Option(
        "error-frames",
        "TELEMETRY_ERROR_FRAMES",
        _d("error_frames"),
        _on_off,
        "send an ERROR frame to the sender of a refused message (on/off)",
        "error_frames",
    ),
    Option(
        "shutdown-grace",
        "TELEMETRY_SHUTDOWN_GRACE",
        _d("shutdown_grace"),
        _positive_float,
        "seconds to wait for peers to answer the close at shutdown (1001) or restart (1012)",
        "shutdown_grace",
    ),
    Option(
        "max-queued-bytes",
        "TELEMETRY_MAX_QUEUED_BYTES",
        _d("max_queued_bytes"),
        _positive_int,
        "a dashboard with more unread bytes waiting is closed with 4008",
        "max_queued_bytes",
    ),
    Option(
        "max-total-queued-bytes",
        "TELEMETRY_MAX_TOTAL_QUEUED_BYTES",
        _d("max_total_queued_bytes"),
        _positive_int,
        "bytes waiting for slow readers, all connections together; past it the biggest "
        "queues are closed with 4008",
        "max_total_queued_bytes",
    ),
    Option(
        "max-batch-bytes",
        "TELEMETRY_MAX_BATCH_BYTES",
        _d("max_batch_bytes"),
        _positive_int,
        'largest {"batch": [...]} frame; each event in it is held to --max-message-bytes',
        "max_batch_bytes",
    ),
    Option(
        "max-message-rate",
        "TELEMETRY_MAX_MESSAGE_RATE",
        _d("messages_per_second"),
        _positive_float,
        "events per second one connection may send (bursts of twice that); more are refused, "
        "and 5 seconds in a row over it close the connection with 1008",
        "messages_per_second",
    ),
    Option(
        "max-connections",
        "TELEMETRY_MAX_CONNECTIONS",
        _d("max_connections"),
        _positive_int,
        "open connections in all; more are refused at the handshake (503)",
        "max_connections",
    ),
    Option(
        "max-connections-per-address",
        "TELEMETRY_MAX_CONNECTIONS_PER_ADDRESS",
        _d("max_connections_per_address"),
        _positive_int,
        "open connections from one address; more are refused at the handshake (429)",
        "max_connections_per_address",
    ),
    Option(
        "max-replay-bytes",
        "TELEMETRY_MAX_REPLAY_BYTES",
        _d("max_replay_bytes"),
        _positive_int,
        "bytes of NODE_STATUS kept for replay (with --max-nodes)",
        "max_replay_bytes",
    ),
    Option(
        "history-messages",
        "TELEMETRY_HISTORY_MESSAGES",
        _d("history_messages"),
        _positive_int,
        "messages kept for dashboards that resume",
        "history_messages",
    ),
    Option(
        "history-bytes",
        "TELEMETRY_HISTORY_BYTES",
        _d("history_bytes"),
        _positive_int,
        "bytes of messages kept for dashboards that resume",
        "history_bytes",
    ),
]


class Options(usage.Options):
    """
    Options of C{twistd telemetry}. Each falls back to its environment variable, then to its
    default; C{--help} lists all three.
    """

    synopsis = "[options]"
    longdesc = (
        "Run the telemetry hub: connectors push JSON telemetry over WebSocket, the hub "
        "validates it against the schema files and broadcasts it to every dashboard."
    )
    optParameters = [
        [o.name, None, None, f"{o.help} [env {o.env}; default {o.default}]"] for o in OPTIONS
    ]

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        super().__init__()
        self._environ = os.environ if environ is None else environ
        #: the arguments as given, for the check before an in-place restart
        self.arguments: list[str] = []

    def parseOptions(self, options: list[str] | None = None) -> None:
        self.arguments = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def postOptions(self) -> None:
        values: dict[str, Any] = {}
        for option in OPTIONS:
            raw = self[option.name]
            source = f"--{option.name}"
            if raw is None and self._environ.get(option.env, "").strip():
                raw, source = self._environ[option.env], option.env
            if raw is None and not option.default.startswith("("):
                # the table's default, the one place it is stated ("(...)" describes a
                # default that is worked out below)
                raw, source = option.default, f"the default of --{option.name}"
            if raw is None:
                values[option.name] = None
                continue
            try:
                values[option.name] = option.coerce(raw)
            except ValueError as e:
                raise usage.UsageError(f"{source}: {e}") from None
        settings = _DEFAULTS
        for option in OPTIONS:
            if option.setting is not None and values[option.name] is not None:
                settings = replace(settings, **{option.setting: values[option.name]})
        if settings.ping_timeout < 1 or settings.ping_interval < 1:
            raise usage.UsageError("ping interval and timeout must be at least 1 second")
        if settings.max_queued_bytes < 2 * settings.max_message_bytes:
            raise usage.UsageError(
                "--max-queued-bytes must be at least twice --max-message-bytes: "
                "a dashboard must be able to hold the largest message"
            )
        self.settings = settings
        self.endpoint = endpoint_description(values["port"], settings.backlog)
        http = values["http-port"].strip()
        self.http_endpoint: str | None = (
            None if http.lower() == "off" else endpoint_description(http, settings.backlog)
        )
        self.schemas_dir = Path(values["schemas"]) if values["schemas"] else shipped_schemas_dir()
        self.store: str = values["store"]
        self.redis: RedisAddress | None = None
        if values["redis"]:
            # imported only when asked for: txredisapi is a good part of a start's imports
            from telemetry_service.bus.redis.address import RedisAddress

            try:
                self.redis = RedisAddress.parse(values["redis"])
            except ConfigurationError as e:
                raise usage.UsageError(str(e)) from None
        self.tokens_file = Path(values["tokens"]).expanduser() if values["tokens"] else None
        self.allowed_origins: tuple[str, ...] | None = values["allowed-origins"]
        self.state_dir = (
            Path(values["state-dir"]).expanduser()
            if values["state-dir"]
            else default_state_dir(self._environ)
        )
        self.log_level: str = values["log-level"]
        self.log_format: str = values["log-format"]


def default_state_dir(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_STATE_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".local" / "state") / "telemetry-hub"


def endpoint_description(port: str, backlog: int) -> str:
    """
    Turn C{--port} into a server endpoint string: a bare number means TCP on every
    interface; the listen backlog is added where the endpoint takes one and none is given.
    """
    port = port.strip()
    if port.isdigit():
        port = f"tcp:{port}"
    kind = port.split(":", 1)[0]
    if kind in ("tcp", "tcp6", "ssl", "unix") and "backlog=" not in port:
        port = f"{port}:backlog={backlog}"
    return port
