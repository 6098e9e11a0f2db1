"""Prometheus metrics of one running service, in a registry of its own.

A registry per runtime (not the process-global default) keeps services started side by
side in tests from sharing counters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


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

    def observe_upstream(self, endpoint: str, status: str, seconds: float) -> None:
        """Records one StackOne HTTP attempt (`status` is the HTTP status or an error name)."""
        self.upstream_calls.labels(endpoint, status).inc()
        self.upstream_seconds.labels(endpoint).observe(seconds)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)
