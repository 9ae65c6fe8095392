"""
C{GET /metrics}: the hub's counters in Prometheus' text format.

The hub counts in plain integers (L{telemetry_service.hub.HubStats}, the factory's refusals
and closes); this collector reads them only when Prometheus scrapes, so the per-message path
never calls a metrics library.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from telemetry_service.hub import Hub


class HubCollector:
    """
    Everything an operator graphs or alerts on, read from the hub and its WebSocket factory.
    """

    def __init__(self, hub: Hub, factory: Any, reloads: Callable[[], dict[str, int]]) -> None:
        self._hub = hub
        self._factory = factory
        self._reloads = reloads

    def collect(self) -> Iterator[Metric]:
        hub, factory = self._hub, self._factory
        stats, store = hub.stats, hub.store
        connections = GaugeMetricFamily(
            "telemetry_connections", "Open WebSocket connections, by role", labels=["role"]
        )
        counts = hub.counts()
        for role in ("listener", "dashboard", "connector", "unidentified"):
            connections.add_metric([role], counts[role])
        yield connections
        yield _labelled(
            CounterMetricFamily(
                "telemetry_messages_accepted",
                "Telemetry events accepted and broadcast, by type",
                labels=["type"],
            ),
            stats.accepted_by_type,
        )
        yield _labelled(
            CounterMetricFamily(
                "telemetry_messages_refused",
                "Messages refused with an error frame, by reason",
                labels=["reason"],
            ),
            stats.rejected_by_reason,
        )
        yield CounterMetricFamily(
            "telemetry_deliveries",
            "Broadcast frames handed to connections (one per message and recipient)",
            value=stats.deliveries,
        )
        yield _labelled(
            CounterMetricFamily(
                "telemetry_connections_closed",
                "Connections the hub closed for what they cost (slow_reader: over "
                "--max-queued-bytes; global_budget: cut when all queues passed "
                "--max-total-queued-bytes; send_failed)",
                labels=["why"],
            ),
            factory.closes,
        )
        yield _labelled(
            CounterMetricFamily(
                "telemetry_handshakes_refused",
                "Connections refused at the handshake (total, per_address: connection "
                "limits; unauthorized: token; origin: Origin not allowed)",
                labels=["reason"],
            ),
            factory.refused,
        )
        yield GaugeMetricFamily(
            "telemetry_queued_bytes",
            "Bytes waiting for slow readers, all connections together",
            value=factory.budget.total,
        )
        yield GaugeMetricFamily(
            "telemetry_history_messages", "Messages held for resume", value=len(store)
        )
        yield GaugeMetricFamily(
            "telemetry_history_bytes", "Bytes of messages held for resume", value=store.size_bytes
        )
        yield GaugeMetricFamily("telemetry_last_seq", "The newest seq", value=store.last_seq)
        yield GaugeMetricFamily(
            "telemetry_nodes", "Nodes in the replay cache", value=len(hub.node_ids)
        )
        yield GaugeMetricFamily(
            "telemetry_replay_bytes",
            "Bytes of NODE_STATUS in the replay cache",
            value=hub.replay_bytes,
        )
        yield GaugeMetricFamily(
            "telemetry_store_degraded",
            "1 while the durable store cannot be written (the hub runs from memory)",
            value=1 if store.degraded not in (None, "closed") else 0,
        )
        yield _labelled(
            CounterMetricFamily(
                "telemetry_reloads",
                "SIGHUP reloads, by what and outcome (schemas_ok, schemas_failed, tokens_ok, "
                "tokens_failed)",
                labels=["outcome"],
            ),
            self._reloads(),
        )


def _labelled(family: Any, values: dict[str, int]) -> Any:
    for label, value in sorted(values.items()):
        family.add_metric([label], value)
    return family


def registry(hub: Hub, factory: Any, reloads: Callable[[], dict[str, int]]) -> CollectorRegistry:
    """
    The hub's metrics, with the process's own (memory, CPU, open files).
    """
    result = CollectorRegistry(auto_describe=False)
    result.register(HubCollector(hub, factory, reloads))
    ProcessCollector(registry=result)
    PlatformCollector(registry=result)
    return result
