"""Prometheus metrics for one engine (a registry of its own, so several engines never collide).

Label values are bounded sets (route, status, event, reason) — never session ids or content — so
the metrics endpoint can be scraped by anyone allowed to see the admin API without leaking anything.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """Counters and histograms the engine updates once per request and per transition."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "trooper_requests",
            "Requests served, by route and HTTP status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.transitions = Counter(
            "trooper_transitions", "State-machine transitions, by event.", ["event"], registry=self.registry
        )
        self.fallbacks = Counter(
            "trooper_fallbacks",
            "Turns answered locally because the cloud could not.",
            ["reason"],
            registry=self.registry,
        )
        self.withheld = Counter(
            "trooper_withheld_blocks", "Content blocks withheld from cloud requests.", registry=self.registry
        )
        self.guard_hits = Counter(
            "trooper_egress_guard_hits", "Egress-guard matches, by action taken.", ["action"], registry=self.registry
        )
        self.first_byte = Histogram(
            "trooper_time_to_first_byte_seconds",
            "Time from request to response headers, by route.",
            ["route"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.duration = Histogram(
            "trooper_request_duration_seconds",
            "Time from request to the response's last byte, by route.",
            ["route"],
            buckets=_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
