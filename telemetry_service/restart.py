"""
The in-place restart (SIGUSR2): the same process, with the code, schemas and options now
on disk, and listening sockets that are never closed.

Before it lets go of anything, the running hub runs L{main} in a new interpreter (with its
own arguments, environment and module search path),
which imports the code on disk, parses the options and loads the schema folder and the
token file as a start would. Only if that works does the hub stop accepting (connections
wait in the kernel's backlog), close every connection with 1012, close its store, and
replace itself (C{execve}, so the PID stays: PID 1 of a container, the main process of a
systemd unit) with the command line it was started with, handing its listening sockets
over (L{telemetry_service.transport.listeners.LISTEN_FDS_ENV}) and a note of the restart
(L{RESTART_ENV}) for the new process to log.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

from twisted.python import usage

from telemetry_service import __version__
from telemetry_service.errors import ConfigurationError

#: what the replaced process tells the new one (see L{RestartNote})
RESTART_ENV = "TELEMETRY_RESTART"
#: how long the check of the new code may take before the restart is refused
CHECK_TIMEOUT = 60.0


class RestartRefused(Exception):  # noqa: N818 (a refusal, said in one line)
    """
    The restart would not start; the hub goes on serving. The message says why.
    """


@dataclass(frozen=True)
class RestartNote:
    """
    What the replaced process hands the new one, for its log line.
    """

    #: the version that was running
    version: str
    #: when the restart was asked for, stopped accepting, and replaced itself (Unix time)
    asked: float
    paused: float
    replaced: float

    def to_text(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_environment(
        cls, environ: MutableMapping[str, str] | None = None
    ) -> RestartNote | None:
        """
        The note this process was started with, if it replaced another (read once).
        """
        environ = os.environ if environ is None else environ
        text = environ.pop(RESTART_ENV, None)
        if text is None:
            return None
        try:
            fields = json.loads(text)
            return cls(
                str(fields["version"]),
                float(fields["asked"]),
                float(fields["paused"]),
                float(fields["replaced"]),
            )
        except (ValueError, TypeError, KeyError):
            return None


class InPlaceRestart:
    """
    Checks the code and configuration on disk, then replaces this process with them.
    """

    def __init__(
        self,
        arguments: Sequence[str],
        command: Sequence[str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """
        @param arguments: the arguments of C{twistd telemetry}, after C{telemetry}.
        @param command: how this process was started, interpreter first (default: as it
            was, C{sys.orig_argv}).
        """
        self._arguments = list(arguments)
        self._command = list(command if command is not None else sys.orig_argv)
        self._environ = os.environ if environ is None else environ

    def check(self) -> str:
        """
        Run the checks of L{main} in a new interpreter. This blocks: run it in a thread.

        @return: the version of the code on disk.
        @raise RestartRefused: saying what is wrong with it.
        """
        # The same module search path as the new process will have: its first entry is
        # this process's (the script's folder, or the working folder for -m), which -P
        # keeps the checking interpreter from replacing with its own.
        code = (
            f"import sys; sys.path.insert(0, {sys.path[0]!r}); "
            "from telemetry_service.restart import main; raise SystemExit(main(sys.argv[1:]))"
        )
        try:
            done = subprocess.run(
                [sys.executable, "-P", "-c", code, *self._arguments],
                capture_output=True,
                text=True,
                timeout=CHECK_TIMEOUT,
                env=dict(self._environ),
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise RestartRefused(
                f"checking the new code took more than {CHECK_TIMEOUT:.0f} s"
            ) from None
        except OSError as e:
            raise RestartRefused(f"cannot run {sys.executable}: {e}") from None
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            raise RestartRefused(lines[-1] if lines else f"the check exited {done.returncode}")
        return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "unknown"

    def replace_process(self, sockets: Mapping[str, int], note: RestartNote) -> NoReturn:
        """
        Become the hub on disk: the same PID, the same command line, these listening
        sockets handed over.

        @raise OSError: the new program could not be run (this process is then as it was
            when called: its sockets paused, its connections and store closed).
        """
        from telemetry_service.transport.listeners import LISTEN_FDS_ENV

        environ = dict(self._environ)
        environ[LISTEN_FDS_ENV] = ",".join(f"{name}={fd}" for name, fd in sockets.items())
        environ[RESTART_ENV] = note.to_text()
        for fd in sockets.values():
            os.set_inheritable(fd, True)
        self._forget_pidfile()
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            with contextlib.suppress(Exception):
                stream.flush()  # type: ignore[union-attr]
        # An ignored signal stays ignored across exec (a handled one reverts to its
        # default, which for SIGUSR2 ends the process): another SIGUSR2 while the new
        # process starts is then lost, not fatal.
        previous = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        try:
            os.execve(sys.executable, [sys.executable, *self._command[1:]], environ)
        finally:
            signal.signal(signal.SIGUSR2, previous)

    def _forget_pidfile(self) -> None:
        """
        twistd refuses to start where a pidfile names a live process, and after the
        replacement that process is this one: remove the file, the new twistd writes it.
        """
        if Path(sys.argv[0]).name != "twistd":
            return
        try:
            from twisted.scripts import twistd

            # the options of the twistd that runs here (twistd's own module picks them)
            config: Any = twistd.ServerOptions()  # type: ignore[attr-defined]
            config.parseOptions(sys.argv[1:])
            pidfile = Path(config["pidfile"]) if config["pidfile"] else None
            if pidfile is not None and pidfile.read_text().strip() == str(os.getpid()):
                pidfile.unlink()
        except (Exception, SystemExit):
            return


def main(arguments: Sequence[str] | None = None) -> int:
    """
    C{python -m telemetry_service.restart ARGUMENTS...}: exit 0, printing the version, when
    the code on disk imports and a hub started with these arguments (and this environment)
    would load its options, schemas and tokens; else exit 1 with the reason on one line.
    """
    args = list(sys.argv[1:] if arguments is None else arguments)
    try:
        # the plugin file twistd reads, and through it everything a start imports
        import twisted.plugins.telemetry_plugin  # noqa: F401
        from telemetry_service import tap
        from telemetry_service.options import Options

        options = Options()
        options.parseOptions(args)
        tap.check_configuration(options)
    except (ConfigurationError, usage.UsageError) as e:
        # what a start would say, on one line
        print(e, file=sys.stderr)
        return 1
    except BaseException as e:
        # code that does not import or breaks on the way: the error and where it was raised
        ours = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith("<")]
        place = f" ({Path(ours[-1].filename).name}, line {ours[-1].lineno})" if ours else ""
        if isinstance(e, SyntaxError):
            place = ""  # it names the file and line itself
        lines = str(e).strip().splitlines()
        print(f"{type(e).__name__}: {lines[0] if lines else ''}{place}", file=sys.stderr)
        return 1
    print(__version__)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
