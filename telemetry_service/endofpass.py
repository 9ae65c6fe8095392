"""
The end of a reactor pass: where what the pass accepted is made durable, and then what it
sends goes out.

The durable store and the write batcher both work at the end of a pass (one journal write
for all of a pass's messages, one send() per connection for all of its frames), in that
order: a message goes out only once it would survive the process dying. Both are given this
one object; whoever asks first schedules the end of the pass, once however many ask.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime


class EndOfPass:
    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._scheduled = False
        self._commits: list[Callable[[], None]] = []
        self._sends: list[Callable[[], None]] = []

    def commit_with(self, commit: Callable[[], None]) -> None:
        """
        Run C{commit} at the end of every pass that asked, before anything is sent.
        """
        self._commits.append(commit)

    def send_with(self, send: Callable[[], None]) -> None:
        """
        Run C{send} at the end of every pass that asked, after the commits.
        """
        self._sends.append(send)

    def ask(self) -> None:
        """
        This pass has something to commit or to send.
        """
        if not self._scheduled:
            self._scheduled = True
            self._clock.callLater(0, self._end)

    def commit(self) -> None:
        """
        Commit now: something is about to go out before the end of the pass (a slow
        reader's queue, drained when its socket takes more).
        """
        for commit in self._commits:
            commit()

    def _end(self) -> None:
        self._scheduled = False
        self.commit()
        for send in self._sends:
            send()
