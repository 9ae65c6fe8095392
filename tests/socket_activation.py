"""
A stand-in for systemd's socket activation, as a program of its own: it binds the listening
sockets a unit's .socket files describe, starts the service's command with them from fd 3
on (C{LISTEN_FDS}, C{LISTEN_PID}, C{LISTEN_FDNAMES}, as systemd passes them), and starts it
again whenever it exits (C{Restart=always}), until it is sent SIGTERM itself (then the
service is sent SIGTERM and waited for).

    python tests/socket_activation.py --listen websocket=127.0.0.1:0 --listen http=127.0.0.1:0 \\
        --log hub.log -- twistd -n --pidfile= telemetry

It says what happens as JSON lines on standard output: C{listening} (name and port of each
socket), C{started} (the PID), C{exited} (the PID and how it ended), C{stopped}.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time
from typing import Any


def say(**event: Any) -> None:
    print(json.dumps(event), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", action="append", default=[], help="NAME=HOST:PORT")
    parser.add_argument("--backlog", type=int, default=1024)
    parser.add_argument("--restart-sec", type=float, default=0.1)
    parser.add_argument("--log", required=True, help="the service's stdout and stderr")
    parser.add_argument("command", nargs="+")
    args = parser.parse_args()

    sockets: list[tuple[str, socket.socket]] = []
    for item in args.listen:
        name, address = item.split("=", 1)
        host, port = address.rsplit(":", 1)
        listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind((host, int(port)))
        listening.listen(args.backlog)
        sockets.append((name, listening))
        say(event="listening", name=name, port=listening.getsockname()[1])

    child = 0
    stopping = False

    def stop(number: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child:
            os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    while not stopping:
        child = os.fork()
        if child == 0:
            _exec_service(sockets, args.log, args.command)
        say(event="started", pid=child)
        _, status = os.waitpid(child, 0)
        say(
            event="exited",
            pid=child,
            code=os.waitstatus_to_exitcode(status),
        )
        child = 0
        if not stopping:
            time.sleep(args.restart_sec)
    say(event="stopped")
    return 0


def _exec_service(sockets: list[tuple[str, socket.socket]], log: str, command: list[str]) -> None:
    try:
        # out of the way first, so that placing one at 3 never closes another
        high = [os.dup2(s.fileno(), 100 + i) for i, (_, s) in enumerate(sockets)]
        for i, fd in enumerate(high):
            os.dup2(fd, 3 + i, inheritable=True)
            os.close(fd)
        output = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.dup2(output, 1)
        os.dup2(output, 2)
        environ = dict(os.environ)
        environ["LISTEN_FDS"] = str(len(sockets))
        environ["LISTEN_PID"] = str(os.getpid())
        environ["LISTEN_FDNAMES"] = ":".join(name for name, _ in sockets)
        os.execvpe(command[0], command, environ)
    finally:
        os._exit(127)


if __name__ == "__main__":
    sys.exit(main())
