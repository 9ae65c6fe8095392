"""
Run the real C{twistd telemetry} as a child process and read its JSON log.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def twistd_path(python: str = sys.executable) -> str:
    return str(Path(python).parent / "twistd")


class HubProcess:
    """
    C{twistd -n telemetry} with JSON logs on a free loopback port.
    """

    def __init__(
        self,
        *args: str,
        twistd: str | None = None,
        env: dict[str, str] | None = None,
        port: str | None = "tcp:0:interface=127.0.0.1",
        cwd: Path | None = None,
        http_port: str | None = "tcp:0:interface=127.0.0.1",
    ) -> None:
        argv = [twistd or twistd_path(), "-n", "--pidfile=", "telemetry", "--log-format", "json"]
        if port is not None:
            argv += ["--port", port]
        if http_port is not None:
            argv += ["--http-port", http_port]
        argv += list(args)
        environment = {
            k: v for k, v in os.environ.items() if not k.startswith(("TELEMETRY_", "LOG_"))
        }
        # the hub's state goes in a folder of this process's own, never the user's
        self._own_state = tempfile.mkdtemp(prefix="hub-state-")
        environment["TELEMETRY_STATE_DIR"] = self._own_state
        environment.update(env or {})
        self.argv = argv
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment,
            cwd=str(cwd or REPO),
            text=True,
        )
        self.records: list[dict[str, Any]] = []
        self.other_lines: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15
    ) -> dict[str, Any]:
        for record in self.records:
            if predicate(record):
                return record
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            try:
                record = json.loads(line)
            except ValueError:
                self.other_lines.append(line)
                continue
            self.records.append(record)
            if predicate(record):
                return record
        raise AssertionError(
            f"no matching log record; got {self.records[-10:]} {self.other_lines[-5:]}"
        )

    def wait_listening(self) -> int:
        """The WebSocket port, once the hub listens."""
        record = self.wait_for(lambda r: "WebSocket server listening on" in r.get("message", ""))
        return int(record["port"])

    def wait_http(self) -> int:
        """The HTTP port of the page and /health, once the hub listens there."""
        record = self.wait_for(lambda r: "page and /health listening on" in r.get("message", ""))
        return int(record["port"])

    def messages(self) -> list[str]:
        return [r.get("message", "") for r in self.records]

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float = 10) -> int:
        return self.process.wait(timeout=timeout)

    def drain(self) -> None:
        """Read the rest of the log after exit."""
        with contextlib.suppress(AssertionError):
            self.wait_for(lambda r: False, timeout=0.5)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self._own_state, ignore_errors=True)


def run_to_exit(
    argv: Sequence[str], env: dict[str, str] | None = None, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("TELEMETRY_", "LOG_"))}
    environment.update(env or {})
    return subprocess.run(
        list(argv), capture_output=True, text=True, env=environment, timeout=timeout, cwd=str(REPO)
    )
