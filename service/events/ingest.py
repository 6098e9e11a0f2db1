"""The door for StackOne webhooks: give a redelivery its answer, put in the inbox.

The gateway checks the signature and parses the body (`gateway.webhook`); here the parsed
`Webhook` is durably added to the inbox, with its raw body, which is all a webhook waits
for. StackOne documents no delivery id, so a webhook without one has a digest of its
payload for an id (`DIGEST_PREFIX`), which names the content rather than the delivery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from enum import Enum

from opentelemetry import trace

from service.events.log import Inbox
from service.events.model import STATE_TYPES, Accepted, EventRecord, InboxEntry, Webhook
from service.metrics import Metrics
from service.tracing import traceparent_of

_log = logging.getLogger(__name__)
DIGEST_PREFIX = "sha256:"  # the id of a webhook StackOne sent none for
_REPEAT_MARK = "~"
# The types whose repeat a look-up can tell from a redelivery (the state they report).
_CONFIRMABLE_TYPES = STATE_TYPES


class IngestResult(Enum):
    """What the door did with one webhook."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    CONFIRMING = "confirming"  # the content of a recorded webhook: a look-up tells if it is new
    IGNORED = "ignored"


def is_repeat(event_id: str) -> bool:
    """True for the id `Ingestor` gives a webhook that repeats a recorded one's content."""
    return event_id.startswith(DIGEST_PREFIX) and _REPEAT_MARK in event_id


def _repeat_id(event_id: str, received_at: float) -> str:
    return f"{event_id}{_REPEAT_MARK}{int(received_at * 1e9)}"


class Ingestor:
    """The door: durably puts account webhooks in the inbox, recognising redeliveries.

    Nothing here calls StackOne; the verifier (`service.events.verify`) turns the inbox
    into recorded events. With `record_alone` (the verifier's rule for a webhook that
    needs no look-up), such a webhook is recorded at once when nothing of its account is
    pending: one durable write instead of two, and no wait for the verifier.
    """

    def __init__(
        self,
        log: Inbox,
        *,
        record_alone: Callable[[InboxEntry], EventRecord | None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._log = log
        self._record_alone = record_alone
        self._metrics = metrics

    async def ingest(self, webhook: Webhook, body: bytes) -> IngestResult:
        """Adds `webhook` (parsed from the raw `body`, kept with it) to the inbox unless it is a
        redelivery or not an account event; raises `InboxFull` or `EventLogUnavailable`."""
        if not webhook.is_account_event:
            _log.info("ignoring webhook of type %s: not an account event", webhook.type)
            return IngestResult.IGNORED
        receipt = trace.get_current_span()  # the webhook request's, when traced
        if receipt.is_recording():
            receipt.set_attributes(
                {
                    "stackone.event_id": webhook.event_id,
                    "stackone.event_type": webhook.type,
                    "stackone.account_id": webhook.account_id,
                }
            )
        entry = InboxEntry(
            0, webhook, time.time(), body, traceparent_of(receipt.get_span_context())
        )
        alone = self._record_alone(entry) if self._record_alone is not None else None
        started = time.perf_counter()
        accepted = await self._log.accept(entry, alone)
        if accepted is Accepted.REPEATED:
            return await self._confirm_repeat(webhook, entry)
        if accepted is Accepted.DUPLICATE:
            return IngestResult.DUPLICATE
        if accepted is Accepted.RECORDED and self._metrics is not None:
            # Counted as the verifier counts the events it records.
            self._metrics.append_seconds.observe(time.perf_counter() - started)
            self._metrics.verifications.labels("not_needed").inc()
        return IngestResult.ACCEPTED

    async def _confirm_repeat(self, webhook: Webhook, entry: InboxEntry) -> IngestResult:
        """A webhook whose id was recorded before. An id StackOne sent names a delivery:
        this is a redelivery. An id that is only a digest of the content names the content,
        and an account that breaks, recovers and breaks again sends the same content
        twice: such a webhook goes to the inbox under an id of its own, and the verifier
        records it only if the account's state at StackOne differs from the last recorded."""
        if not webhook.event_id.startswith(DIGEST_PREFIX) or webhook.type not in _CONFIRMABLE_TYPES:
            return IngestResult.DUPLICATE
        repeat_id = _repeat_id(entry.event_id, entry.received_at)
        repeat = replace(entry, webhook=replace(webhook, event_id=repeat_id))
        if await self._log.accept(repeat) is not Accepted.QUEUED:
            return IngestResult.DUPLICATE
        return IngestResult.CONFIRMING
