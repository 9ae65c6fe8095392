"""
Messages per second by type for the page's chart: fixed memory, the right seconds, and
GET /api/rates on a real hub.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock

from telemetry_service.rates import MessageRates

from . import examples as ex
from .test_web import get
from .wsclient import RunningHub, settle


def test_counts_land_in_their_second() -> None:
    clock = Clock()
    clock.advance(1000)
    rates = MessageRates(clock, seconds=5)
    rates.count("PACKET_SENT")
    rates.count("PACKET_SENT")
    clock.advance(1)
    rates.roll()  # the hub service does, once a second
    rates.count("LOG")
    clock.advance(2)  # second 1002 had nothing
    rates.roll()  # the hub service does, once a second
    rates.count("PACKET_SENT", 3)
    clock.advance(1)
    rates.roll()  # the hub service does, once a second
    answer = rates.series()
    assert answer["until"] == 1003 and answer["seconds"] == 5
    # oldest first: 999, 1000, 1001, 1002, 1003
    assert answer["series"] == {"PACKET_SENT": [0, 2, 0, 0, 3], "LOG": [0, 0, 1, 0, 0]}


def test_the_window_moves_and_old_counts_go() -> None:
    clock = Clock()
    rates = MessageRates(clock, seconds=3)
    rates.count("LOG", 7)
    clock.advance(10)  # far past the window
    rates.roll()  # the hub service does, once a second
    rates.count("LOG")
    clock.advance(1)
    rates.roll()  # the hub service does, once a second
    assert rates.series()["series"] == {"LOG": [0, 0, 1]}


def test_types_are_bounded() -> None:
    clock = Clock()
    rates = MessageRates(clock, seconds=2, max_series=3)
    for n in range(10):
        rates.count(f"TYPE_{n}")
    clock.advance(1)
    rates.roll()  # the hub service does, once a second
    series = rates.series()["series"]
    assert len(series) == 4  # three, and "other" for the rest
    assert series["other"][-1] == 7


@pytest.fixture
def hub() -> Iterator[RunningHub]:
    running = RunningHub().start()
    yield running
    pytest_twisted.blockon(defer.ensureDeferred(running.stop()))


@pytest_twisted.ensureDeferred
async def test_the_hub_serves_its_rates(hub: RunningHub) -> None:
    connector = await hub.connect()
    connector.send(ex.node_status("connector-a"))
    for n in range(3):
        connector.send(ex.packet_sent("connector-a", n))
    connector.send(b"{bad")
    await settle(1.2)  # the second they arrived in is complete
    code, _, body = await get(hub, "/api/rates")
    assert code == 200
    answer = json.loads(body)
    assert answer["seconds"] == 300 and len(answer["series"]["PACKET_SENT"]) == 300
    assert sum(answer["series"]["PACKET_SENT"]) == 3
    assert sum(answer["series"]["NODE_STATUS"]) == 1
    assert sum(answer["series"]["NODE_PRESENCE"]) == 1
    assert sum(answer["series"]["rejected"]) == 1
