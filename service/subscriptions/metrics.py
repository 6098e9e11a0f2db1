"""Prometheus figures of every subscription, read from its dispatcher at each scrape."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from service.subscriptions.manager import SubscriptionManager

_LABELS = ["client", "subscription"]


class SubscriptionCollector(Collector):
    """Pending events, outstanding acks, oldest unacknowledged age, parked events and
    consumers attached, per subscription."""

    def __init__(self, manager: SubscriptionManager) -> None:
        self._manager = manager

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One sample of each figure per subscription."""
        families = {
            "pending": GaugeMetricFamily(
                "stackone_connect_subscription_pending_events",
                "Events recorded after the subscription's position.",
                labels=_LABELS,
            ),
            "outstanding": GaugeMetricFamily(
                "stackone_connect_subscription_outstanding_acks",
                "Deliveries made and not yet acknowledged.",
                labels=_LABELS,
            ),
            "oldest_unacked_age": GaugeMetricFamily(
                "stackone_connect_subscription_oldest_unacked_age_seconds",
                "Age of the oldest event not yet acknowledged (0: none).",
                labels=_LABELS,
            ),
            "parked": GaugeMetricFamily(
                "stackone_connect_subscription_parked_events",
                "Events parked after their maximum of deliveries.",
                labels=_LABELS,
            ),
            "consumers": GaugeMetricFamily(
                "stackone_connect_subscription_consumers",
                "Consumers attached now.",
                labels=_LABELS,
            ),
        }
        for dispatcher in self._manager.all():
            state = dispatcher.state()
            labels = [dispatcher.record.client, dispatcher.record.name]
            families["pending"].add_metric(labels, state.pending)
            families["outstanding"].add_metric(labels, state.outstanding)
            families["oldest_unacked_age"].add_metric(labels, state.oldest_unacked_age)
            families["parked"].add_metric(labels, len(state.parked))
            families["consumers"].add_metric(labels, state.consumers)
        yield from families.values()
