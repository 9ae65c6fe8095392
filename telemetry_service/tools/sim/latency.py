"""
C{telemetry-sim --measure}: a dashboard connection that reads the C{sentAt} the simulated
connectors add to their packet events, and the latency from send to receipt it shows.
"""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.application.internet import ClientService

from telemetry_service.tools.wsclient import HubURL, NoDelayClientProtocol


class _MeasuringProtocol(NoDelayClientProtocol):
    """A dashboard that hands every message to its factory's L{LatencyMeter}."""

    def onOpen(self) -> None:
        self.sendMessage(b'{"type":"CLIENT_CONNECT"}')

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.latency.observe(payload)


class LatencyMeter:
    """Latency from a simulated connector's send to a dashboard's receipt, in ms."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def service(self, reactor: Any, url: str, token: str | None = None) -> ClientService:
        """
        A dashboard connection to the hub at C{url}, as a viewer with C{token} if given,
        whose messages this meter observes; not started.
        """
        hub = HubURL.parse(url)
        factory = hub.factory(_MeasuringProtocol, token)
        factory.latency = self  # type: ignore[attr-defined]
        return ClientService(hub.endpoint(reactor), factory)

    def observe(self, payload: bytes) -> None:
        """Take the latency of one message the dashboard received, if it has a C{sentAt}."""
        try:
            sent_at = json.loads(payload)["data"]["sentAt"]
        except (ValueError, KeyError, TypeError):
            return
        if isinstance(sent_at, (int, float)):
            self.samples.append(time.time() * 1000 - sent_at)

    def summary(self) -> dict[str, Any]:
        """How many messages were measured, and their median, 99th percentile and worst."""
        if not self.samples:
            return {"messages": 0}
        ordered = sorted(self.samples)

        def pct(p: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 3)

        return {
            "messages": len(ordered),
            "p50_ms": pct(0.5),
            "p99_ms": pct(0.99),
            "max_ms": round(ordered[-1], 3),
        }
