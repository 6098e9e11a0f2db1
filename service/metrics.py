"""Prometheus metrics of one running service, in a registry of its own.

A registry per runtime (not the process-global default) keeps services started side by
side in tests from sharing counters.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Waits for the StackOne budget can last up to its window (a minute).
_WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
LOOP_LAG_TICK = 0.01
"""Seconds the loop-lag monitor sleeps between measurements."""
LOOP_LAG_WINDOW = 10.0
"""Seconds over which the loop-lag gauge reports the largest lag."""


@dataclass
class Metrics:
    """Every metric the service exports, all registered in `registry`."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        registry = self.registry
        # Labelled children of the upstream metrics, looked up once per label pair: each
        # `labels()` takes a lock and builds a key, twice for every StackOne call.
        self._upstream_children: dict[tuple[str, str], tuple[Any, Any]] = {}
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
        self.audit_records = Counter(
            "stackone_connect_audit_records",
            "Audit records by outcome (written; failed: the sink refused it).",
            ["outcome"], registry=registry,
        )  # fmt: skip
        self.credential_reloads = Counter(
            "stackone_connect_credential_reloads",
            "Re-reads of a changed credentials file (clients, webhook_secrets, tls) by outcome"
            " (loaded; rejected: the previous version stays in force).",
            ["credential", "outcome"], registry=registry,
        )  # fmt: skip
        # The StackOne rate budget (service.stackone.budget).
        self.budget_calls = Counter(
            "stackone_connect_budget_calls",
            "StackOne calls granted a slot of the rate budget, by priority"
            " (caller, verify, reconcile).",
            ["priority"], registry=registry,
        )  # fmt: skip
        self.client_calls = Counter(
            "stackone_connect_client_calls",
            "StackOne calls of clients with their own calls_per_minute, by client and"
            " outcome (ok: counted against its share; refused: past it, not sent).",
            ["client", "outcome"], registry=registry,
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
        self.loop_lag_seconds = Histogram(
            "stackone_connect_event_loop_lag_seconds",
            "How late the event loop woke a task that slept a fixed tick: time during which"
            " nothing else (RPCs, webhooks, streams) could run.",
            buckets=_LAG_BUCKETS, registry=registry,
        )  # fmt: skip
        self.loop_lag_max_seconds = Gauge(
            "stackone_connect_event_loop_lag_max_seconds",
            f"The largest event-loop lag of the last {LOOP_LAG_WINDOW:g} to"
            f" {2 * LOOP_LAG_WINDOW:g} seconds.",
            registry=registry,
        )  # fmt: skip

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
        self.registry_complete = Gauge(
            "stackone_connect_registry_complete",
            "1 once a full listing of StackOne has been folded into the account registry "
            "(reads from it are answered from it), else 0.",
            registry=registry,
        )

    def observe_upstream(self, endpoint: str, status: str, seconds: float) -> None:
        """Records one StackOne HTTP attempt (`status` is the HTTP status or an error name)."""
        children = self._upstream_children.get((endpoint, status))
        if children is None:
            children = self._upstream_children[endpoint, status] = (
                self.upstream_calls.labels(endpoint, status),
                self.upstream_seconds.labels(endpoint),
            )
        children[0].inc()
        children[1].observe(seconds)

    async def watch_loop_lag(self, tick: float = LOOP_LAG_TICK) -> None:
        """Measures the event loop's lag until cancelled: sleeps `tick` and records how
        much later than that it woke (a blocked loop wakes nobody on time)."""
        loop = asyncio.get_running_loop()
        window_started, window_max, previous_max = loop.time(), 0.0, 0.0
        while True:
            asleep_at = loop.time()
            await asyncio.sleep(tick)
            now = loop.time()
            lag = max(0.0, now - asleep_at - tick)
            self.loop_lag_seconds.observe(lag)
            if now - window_started >= LOOP_LAG_WINDOW:
                window_started, window_max, previous_max = now, 0.0, window_max
            window_max = max(window_max, lag)
            self.loop_lag_max_seconds.set(max(window_max, previous_max))

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)
