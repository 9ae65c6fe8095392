from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

from telemetry_service.config import Settings
from telemetry_service.hub import Hub
from telemetry_service.schemas import SchemaCatalog, shipped_schemas_dir

from .fakes import RecordingFanout
from .wsclient import RunningHub

REPO = Path(__file__).resolve().parent.parent


class LogCapture:
    def __init__(self) -> None:
        self.events: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)

    def texts(self, level: str | None = None) -> list[str]:
        return [
            formatEvent(e)
            for e in self.events
            if level is None or getattr(e.get("log_level"), "name", None) == level
        ]

    def matching(self, fragment: str, level: str | None = None) -> list[str]:
        return [t for t in self.texts(level) if fragment in t]

    def with_fields(self, **fields: Any) -> list[LogEvent]:
        return [e for e in self.events if all(e.get(k) == v for k, v in fields.items())]


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    capture = LogCapture()
    globalLogPublisher.addObserver(capture)
    yield capture
    globalLogPublisher.removeObserver(capture)


@pytest.fixture(scope="session")
def catalog() -> SchemaCatalog:
    return SchemaCatalog.load(shipped_schemas_dir())


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fanout() -> RecordingFanout:
    return RecordingFanout()


@pytest.fixture
def make_hub(catalog: SchemaCatalog, clock: Clock, fanout: RecordingFanout) -> Any:
    def make(**overrides: Any) -> Hub:
        return Hub(catalog, Settings(**overrides), clock, fanout)

    return make


@pytest.fixture
def hub(make_hub: Any) -> Hub:
    hub: Hub = make_hub()
    return hub


@pytest.fixture
def start() -> Iterator[Callable[..., RunningHub]]:
    """Start the real hub service in this process on loopback ports; drained afterwards."""
    hubs: list[RunningHub] = []

    def starter(*argv: str) -> RunningHub:
        hub = RunningHub(*argv).start()
        hubs.append(hub)
        return hub

    yield starter
    for hub in hubs:
        pytest_twisted.blockon(defer.ensureDeferred(hub.stop()))
