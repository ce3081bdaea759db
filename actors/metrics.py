"""What the actors report: messages by channel and status, provider latency, throttling, lane
depth and lease reclaims. Exported through `ray.util.metrics` inside Ray (Ray's metrics
agent serves them to Prometheus); a silent stand-in when the state objects run without Ray."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from channels.base import SendResult


class _Null:
    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None: ...
    def set(self, value: float, tags: dict[str, str] | None = None) -> None: ...
    def observe(self, value: float, tags: dict[str, str] | None = None) -> None: ...


class Metrics:
    """Metric handles, created once per actor process."""

    def __init__(self, factory: Any = None) -> None:
        make = factory or (lambda kind, name, desc, tags, **kw: _Null())
        self._messages = make("counter", "hub_messages_total",
                              "messages by channel and send outcome", ("channel", "outcome"))
        self._latency = make("histogram", "hub_provider_latency_seconds",
                             "provider API call latency per request", ("provider",),
                             boundaries=[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5])
        self._throttled = make("counter", "hub_provider_throttled_total",
                               "provider throttling answers (429, 20429, SMTP 4xx)",
                               ("provider",))
        self._depth = make("gauge", "hub_lane_depth", "messages waiting in a shard's lanes",
                           ("shard",))
        self._reclaims = make("counter", "hub_lease_reclaims_total",
                              "expired leases taken back by the supervisor", ("kind",))
        self._restarts = make("counter", "hub_actor_restarts_total",
                              "shard actors found dead and restarted", ("role",))

    def outcome(self, channel: str, result: SendResult) -> None:
        self.outcomes([(channel, result)])

    def outcomes(self, results: Iterable[tuple[str, SendResult]]) -> None:
        """A batch's outcomes: one increment per (channel, outcome), not one per message."""
        counts = Counter(
            (channel, "accepted" if r.ok else r.error.kind.value)  # type: ignore[union-attr]
            for channel, r in results)
        for (channel, outcome), n in counts.items():
            self._messages.inc(float(n), {"channel": channel, "outcome": outcome})

    def provider_latency(self, provider: str, seconds: float) -> None:
        self._latency.observe(seconds, {"provider": provider})

    def throttled(self, provider: str) -> None:
        self._throttled.inc(1.0, {"provider": provider})

    def lane_depth(self, shard: str, depth: int) -> None:
        self._depth.set(float(depth), {"shard": shard})

    def reclaimed(self, kind: str, n: int) -> None:
        if n:
            self._reclaims.inc(float(n), {"kind": kind})

    def restarted(self, role: str) -> None:
        self._restarts.inc(1.0, {"role": role})
