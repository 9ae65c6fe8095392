"""
C{telemetry-healthcheck [URL]}: exit 0 if the hub at URL completes a WebSocket opening
handshake, 1 otherwise. Used by the Docker HEALTHCHECK; needs nothing but the stdlib.

The URL defaults to C{ws://127.0.0.1:$TELEMETRY_WS_PORT/} (port 9000 when unset or not a
plain number).
"""

from __future__ import annotations

import base64
import os
import socket
import sys
from urllib.parse import urlsplit


def default_url() -> str:
    port = os.environ.get("TELEMETRY_WS_PORT", "9000").strip()
    return f"ws://127.0.0.1:{port if port.isdigit() else 9000}/"


def check(url: str, timeout: float = 3.0) -> str | None:
    """
    Try one opening handshake.

    @return: C{None} when the hub answered C{101 Switching Protocols}, else what went wrong.
    """
    parts = urlsplit(url)
    if parts.scheme != "ws" or not parts.hostname:
        return f"unsupported URL {url!r} (expected ws://host:port/)"
    port = parts.port or 80
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {parts.path or '/'} HTTP/1.1\r\n"
        f"Host: {parts.hostname}:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout) as conn:
            conn.sendall(request.encode())
            status = conn.recv(1024).split(b"\r\n", 1)[0].decode("latin-1")
    except OSError as e:
        return f"cannot reach {url}: {e}"
    if " 101 " not in f"{status} ":
        return f"unexpected answer from {url}: {status!r}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    url = args[0] if args else default_url()
    problem = check(url)
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    print(f"healthy: {url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
