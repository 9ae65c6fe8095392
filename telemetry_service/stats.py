"""
What the hub counts, in plain integers: read by C{/health} and C{/metrics} only when asked
(a metrics library's objects cost more per message than the rest of a broadcast).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class HubStats:
    accepted: int = 0
    accepted_by_type: dict[str, int] = field(default_factory=dict)
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    #: frames of broadcasts handed to connections (one per message and recipient)
    deliveries: int = 0
