"""Prometheus metrics of one running service, in a registry of its own.

A registry per runtime (not the process-global default) keeps services started side by
side in tests from sharing counters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Waits for the StackOne budget can last up to its window (a minute).
_WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass
class Metrics:
    """Every metric the service exports, all registered in `registry`."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        registry = self.registry
        self.rpcs = Counter(
            "stackone_connect_rpcs", "gRPC calls by method and status code.",
            ["method", "code"], registry=registry,
        )  # fmt: skip
        self.rpc_seconds = Histogram(
            "stackone_connect_rpc_duration_seconds", "gRPC call latency (unary calls).",
            ["method"], buckets=_LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.webhooks = Counter(
            "stackone_connect_webhooks", "Webhooks received by event type and outcome.",
            ["type", "outcome"], registry=registry,
        )  # fmt: skip
        self.subscribers = Gauge(
            "stackone_connect_stream_subscribers", "Open StreamAccountEvents streams.",
            registry=registry,
        )  # fmt: skip
        self.append_seconds = Histogram(
            "stackone_connect_event_log_append_seconds",
            "Time for an event to be durably appended (group commit included).",
            buckets=_LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.delivery_lag_seconds = Histogram(
            "stackone_connect_stream_delivery_lag_seconds",
            "Time from an event being recorded to it being sent on a stream.",
            buckets=_LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.latest_cursor = Gauge(
            "stackone_connect_event_log_latest_cursor", "Cursor of the newest recorded event.",
            registry=registry,
        )  # fmt: skip
        self.upstream_calls = Counter(
            "stackone_connect_upstream_calls", "StackOne calls by endpoint and HTTP status.",
            ["endpoint", "status"], registry=registry,
        )  # fmt: skip
        self.upstream_seconds = Histogram(
            "stackone_connect_upstream_duration_seconds", "StackOne call latency by endpoint.",
            ["endpoint"], buckets=_LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        # The StackOne rate budget (service.stackone.budget).
        self.budget_calls = Counter(
            "stackone_connect_budget_calls",
            "StackOne calls granted a slot of the rate budget, by priority"
            " (caller, verify, reconcile).",
            ["priority"], registry=registry,
        )  # fmt: skip
        self.budget_wait_seconds = Histogram(
            "stackone_connect_budget_wait_seconds",
            "Time calls waited for a slot of the rate budget (refused ones included).",
            ["priority"], buckets=_WAIT_BUCKETS, registry=registry,
        )  # fmt: skip
        self.upstream_rate_limited = Counter(
            "stackone_connect_upstream_rate_limited", "429 answers StackOne sent.",
            registry=registry,
        )  # fmt: skip

        self._add_pipeline_metrics(registry)

    def _add_pipeline_metrics(self, registry: CollectorRegistry) -> None:
        """The inbox between the gateway and the verifier, and background work."""
        self.inbox_depth = Gauge(
            "stackone_connect_inbox_depth", "Webhooks accepted and waiting for verification.",
            registry=registry,
        )  # fmt: skip
        self.inbox_oldest_age = Gauge(
            "stackone_connect_inbox_oldest_age_seconds",
            "Age of the oldest webhook waiting for verification (0 when none waits).",
            registry=registry,
        )  # fmt: skip
        self.verifications = Counter(
            "stackone_connect_verifications",
            "Recorded webhook events by verification outcome (verified, error, deadline,"
            " superseded, not_needed, no_client).",
            ["outcome"], registry=registry,
        )  # fmt: skip
        self.background_failures = Counter(
            "stackone_connect_background_failures",
            "Failures of background work (retried at its next interval), by task.",
            ["task"], registry=registry,
        )  # fmt: skip
        self.reconcile_sweeps = Counter(
            "stackone_connect_reconcile_sweeps",
            "Reconciliation sweeps by outcome (ok, failed).",
            ["outcome"], registry=registry,
        )  # fmt: skip

    def observe_upstream(self, endpoint: str, status: str, seconds: float) -> None:
        """Records one StackOne HTTP attempt (`status` is the HTTP status or an error name)."""
        self.upstream_calls.labels(endpoint, status).inc()
        self.upstream_seconds.labels(endpoint).observe(seconds)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)
