"""
The real components the cluster tests need, each started by the test on a free loopback
port in a temporary folder and stopped after it: Debian's C{redis-server} and C{haproxy}.
A test that needs one that is not installed skips, saying which (C{.ci/run} installs both).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 10, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"nothing listens on {host}:{port} after {timeout} s"
                ) from None
            time.sleep(0.05)


def stop(process: subprocess.Popen[bytes] | None, folder: Path) -> None:
    """SIGTERM, SIGKILL if it is not gone in 10 s, and its temporary folder removed."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    shutil.rmtree(folder, ignore_errors=True)


def needs(binary: str) -> str:
    path = shutil.which(binary) or (
        f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None
    )
    if path is None:
        if os.environ.get("CI"):
            raise RuntimeError(f"{binary} is missing: .ci/run installs it from Debian")
        pytest.skip(f"{binary} is not installed (apt-get install {binary}; .ci/run does)")
    return path


class RedisServer:
    """
    C{redis-server} on 127.0.0.1, without persistence unless asked: a restart then loses
    every key, as a Redis restarted without persistence does.
    """

    def __init__(self, persistence: bool = False, password: str | None = None) -> None:
        self.password = password
        self.binary = needs("redis-server")
        self.folder = Path(tempfile.mkdtemp(prefix="test-redis-"))
        self.port = free_port()
        self.persistence = persistence
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.folder),
            "--save",
            "",
            "--appendonly",
            "yes" if self.persistence else "no",
            "--daemonize",
            "no",
            "--logfile",
            str(self.folder / "redis.log"),
            *(["--requirepass", self.password] if self.password else []),
        ]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)

    def kill(self) -> None:
        """SIGKILL: gone at once, with everything in memory."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def freeze(self) -> None:
        """SIGSTOP: connections stay open and nothing answers, as for a hung server or a
        network that drops packets without a reset."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.kill()
        self.start()

    def command(self, *args: str) -> str:
        """One command through redis-cli, for looking at what the hubs wrote."""
        cli = shutil.which("redis-cli") or "redis-cli"
        result = subprocess.run(
            [
                cli,
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                *(["-a", self.password, "--no-auth-warning"] if self.password else []),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return result.stdout.strip()

    def stop(self) -> None:
        stop(self.process, self.folder)


#: the proxy's configuration, as docs/haproxy.cfg has it (with the ports of a test)
HAPROXY_CONFIG = """\
global
    maxconn 4096
    pidfile {folder}/haproxy.pid

defaults
    mode tcp
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    # a connection refused by a hub that is going away is tried on another
    retries 3
    option redispatch

frontend telemetry
    bind 127.0.0.1:{port}
    default_backend hubs

backend hubs
    balance leastconn
    option httpchk GET /health
    http-check expect status 200
    default-server inter 500ms fall 1 rise 2 send-proxy
{servers}
"""


class HAProxy:
    """
    Debian's C{haproxy} in front of hubs: TCP, the PROXY protocol to each hub, health
    checks on each hub's C{/health}.
    """

    def __init__(self, backends: list[tuple[int, int]]) -> None:
        """
        @param backends: (WebSocket port, HTTP port) of each hub.
        """
        self.binary = needs("haproxy")
        self.folder = Path(tempfile.mkdtemp(prefix="test-haproxy-"))
        self.port = free_port()
        servers = "\n".join(
            f"    server hub{i} 127.0.0.1:{ws} check port {http}"
            for i, (ws, http) in enumerate(backends)
        )
        config = self.folder / "haproxy.cfg"
        config.write_text(
            HAPROXY_CONFIG.format(folder=self.folder, port=self.port, servers=servers)
        )
        check = subprocess.run(
            [self.binary, "-c", "-f", str(config)], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
        self.process = subprocess.Popen(
            [self.binary, "-db", "-f", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        stop(self.process, self.folder)
