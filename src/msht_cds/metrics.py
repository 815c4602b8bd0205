"""Prometheus metrics: domain counters that monitoring and the safeguarding team rely on."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """One registry per app, so tests and several apps in one process do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "msht_cds_hook_requests",
            "Hook calls by service and HTTP status",
            ["service", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "msht_cds_hook_latency_seconds",
            "Hook call latency",
            ["service"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.cards = Counter(
            "msht_cds_cards",
            "Cards returned by indicator level and concern",
            ["service", "indicator", "concern"],
            registry=self.registry,
        )
        self.indicators = Counter(
            "msht_cds_indicators_fired",
            "Indicators counted in a card",
            ["indicator"],
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "msht_cds_auth_failures",
            "Rejected JWTs by reason",
            ["reason"],
            registry=self.registry,
        )
        self.feedback = Counter(
            "msht_cds_feedback",
            "Feedback entries by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.library_info = Gauge(
            "msht_cds_library_info",
            "Loaded library (value 1)",
            ["library", "version"],
            registry=self.registry,
        )
        self.library_reload_failures = Counter(
            "msht_cds_library_reload_failures",
            "Library reloads rejected by lint",
            registry=self.registry,
        )
        self.library_last_reload_ok = Gauge(
            "msht_cds_library_last_reload_ok",
            "1 if the last reload succeeded, else 0",
            registry=self.registry,
        )
        self.lint_errors = Gauge(
            "msht_cds_lint_errors",
            "Lint errors in the last rejected reload",
            registry=self.registry,
        )
