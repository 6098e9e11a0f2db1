"""The door for StackOne webhooks: parse, give a stable id, put in the inbox.

Verification of the signature happens before this (in the gateway); here a payload is
validated, given a stable event id, and durably added to the inbox, which is all a
webhook waits for. StackOne documents no delivery id, so a redelivery is recognised by a
digest of the payload without `sent_at`, the one field that changes between attempts.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import Enum
from typing import Any

import orjson
from opentelemetry import trace

from service.api.v1 import stackone_connect_pb2 as pb
from service.events.log import EventLog
from service.events.model import ACCOUNT_EVENT_TYPE, STATE_TYPES, Accepted, EventRecord, InboxEntry
from service.metrics import Metrics
from service.stackone.models import MAX_ID, plausible_moment, usable_id
from service.tracing import traceparent_of

_log = logging.getLogger(__name__)
_PER_ATTEMPT_FIELDS = frozenset({"sent_at"})
# Bounds as on the gRPC side; ids follow the same rule as StackOne's (MAX_ID, usable_id):
# they reach URLs, NATS subjects and headers, so they are short.
MAX_TYPE = 100
MAX_TEXT = 1024
_DIGEST_PREFIX = "sha256:"  # the id of a webhook StackOne sent none for
_REPEAT_MARK = "~"
# The types whose repeat a look-up can tell from a redelivery (the state they report).
_CONFIRMABLE_TYPES = STATE_TYPES


class InvalidWebhook(ValueError):
    """The webhook body is not an event we can record; the message says why."""


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """The fields of a StackOne webhook that this service uses."""

    event_id: str
    type: str
    account_id: str
    provider: str
    origin_owner_id: str
    origin_owner_name: str
    origin_username: str
    occurred_at: datetime | None

    @property
    def is_account_event(self) -> bool:
        """True for `account.*` events, the only ones recorded."""
        return self.type.startswith("account.")


class IngestResult(Enum):
    """What the door did with one webhook."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    CONFIRMING = "confirming"  # the content of a recorded webhook: a look-up tells if it is new
    IGNORED = "ignored"


def _text(
    fields: Mapping[str, Any], key: str, *, required: bool = False, limit: int = MAX_TEXT
) -> str:
    value = fields.get(key)
    if value is None:
        if required:
            raise InvalidWebhook(f"the webhook has no '{key}' field")
        return ""
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise InvalidWebhook(f"the webhook field '{key}' must be a string")
    text = str(value)
    if len(text) > limit:
        raise InvalidWebhook(f"the webhook field '{key}' is over {limit} characters")
    return text


def _id(fields: Mapping[str, Any], key: str, *, required: bool) -> str:
    value = _text(fields, key, required=required, limit=MAX_ID)
    try:
        return usable_id(value) if value else value
    except ValueError as error:
        raise InvalidWebhook(f"the webhook field '{key}': {error}") from error


def _moment(fields: Mapping[str, Any], key: str) -> datetime | None:
    raw = fields.get(key)
    if not isinstance(raw, str):
        return None
    if len(raw) > MAX_TYPE:
        raise InvalidWebhook(f"the webhook field '{key}' is not an ISO-8601 time")
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as error:
        raise InvalidWebhook(f"the webhook field '{key}' is not an ISO-8601 time") from error
    try:
        return plausible_moment(moment)
    except ValueError as error:
        raise InvalidWebhook(f"the webhook field '{key}': {error}") from error


def _event_id(payload: Mapping[str, Any]) -> str:
    for key in ("id", "event_id"):
        value = payload.get(key)
        if isinstance(value, str) and value:
            return _id(payload, key, required=True)
    stable = {key: value for key, value in payload.items() if key not in _PER_ATTEMPT_FIELDS}
    digest = hashlib.sha256(orjson.dumps(stable, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return _DIGEST_PREFIX + digest


def is_repeat(event_id: str) -> bool:
    """True for the id `Ingestor` gives a webhook that repeats a recorded one's content."""
    return event_id.startswith(_DIGEST_PREFIX) and _REPEAT_MARK in event_id


def _repeat_id(event_id: str, received_at: float) -> str:
    return f"{event_id}{_REPEAT_MARK}{int(received_at * 1e9)}"


def parse_webhook(body: bytes, *, event_id: str | None = None) -> WebhookEvent:
    """Parses a webhook body; raises `InvalidWebhook` with a reason a person can act on.

    Fields are read from the top level, or from a `data` object where StackOne nests them.
    `event_id`, when the caller knows it already, saves computing it again.
    """
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidWebhook(f"the webhook body is not valid JSON: {error}") from error
    if not isinstance(payload, dict):
        raise InvalidWebhook("the webhook body must be a JSON object")
    fields: dict[str, Any] = payload
    nested = payload.get("data")
    if isinstance(nested, dict) and "account_id" not in payload:
        fields = {**nested, **{k: v for k, v in payload.items() if k != "data"}}
    event_type = _text(fields, "event", required=True, limit=MAX_TYPE)
    is_account_event = event_type.startswith("account.")
    if is_account_event and not ACCOUNT_EVENT_TYPE.fullmatch(event_type):
        # Recorded, it could be selected by no stream filter.
        raise InvalidWebhook(
            f"'event' {event_type!r} is not an account event type: 'account.' then 1 to 64 "
            "lowercase letters or '_'"
        )
    return WebhookEvent(
        event_id=event_id or _event_id(payload),
        type=event_type,
        account_id=_id(fields, "account_id", required=is_account_event),
        provider=_text(fields, "provider"),
        origin_owner_id=_text(fields, "origin_owner_id"),
        origin_owner_name=_text(fields, "origin_owner_name"),
        origin_username=_text(fields, "origin_username"),
        occurred_at=_moment(fields, "event_date"),
    )


def event_record(
    message: pb.AccountEvent, *, inbox_through: int = 0, repeat: bool = False
) -> EventRecord:
    """The log record of an event message (indexed by the fields filters use);
    `inbox_through` is the highest inbox sequence the event settles; `repeat`: it records
    only webhooks that repeated recorded ones (see `EventRecord.repeat`)."""
    account = message.account
    return EventRecord(
        event_id=message.event_id,
        type=message.type,
        account_id=account.id,
        provider=account.provider,
        origin_owner_id=account.origin_owner_id,
        body=message.SerializeToString(),
        account_status=account.raw_status,
        account_updated_at=account.updated_at.ToJsonString()
        if account.HasField("updated_at")
        else "",
        source="reconciliation" if message.source == pb.EVENT_SOURCE_RECONCILIATION else "webhook",
        covered_ids=tuple(message.covered_event_ids),
        inbox_through=inbox_through,
        repeat=repeat,
    )


class Ingestor:
    """The door: durably puts account webhooks in the inbox, recognising redeliveries.

    Nothing here calls StackOne; the verifier (`service.events.verify`) turns the inbox
    into recorded events. With `record_alone` (the verifier's rule for a webhook that
    needs no look-up), such a webhook is recorded at once when nothing of its account is
    pending: one durable write instead of two, and no wait for the verifier.
    """

    def __init__(
        self,
        log: EventLog,
        *,
        record_alone: Callable[[InboxEntry], EventRecord | None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._log = log
        self._record_alone = record_alone
        self._metrics = metrics

    async def ingest(self, event: WebhookEvent, body: bytes) -> IngestResult:
        """Adds `event` (whose raw webhook is `body`) to the inbox unless it is a
        redelivery or not an account event; raises `InboxFull` or `EventLogUnavailable`."""
        if not event.is_account_event:
            _log.info("ignoring webhook of type %s: not an account event", event.type)
            return IngestResult.IGNORED
        receipt = trace.get_current_span()  # the webhook request's, when traced
        if receipt.is_recording():
            receipt.set_attributes(
                {
                    "stackone.event_id": event.event_id,
                    "stackone.event_type": event.type,
                    "stackone.account_id": event.account_id,
                }
            )
        entry = InboxEntry(
            0,
            event.event_id,
            event.type,
            event.account_id,
            time.time(),
            body,
            traceparent_of(receipt.get_span_context()),
        )
        alone = self._record_alone(entry) if self._record_alone is not None else None
        started = time.perf_counter()
        accepted = await self._log.accept(entry, alone)
        if accepted is Accepted.REPEATED:
            return await self._confirm_repeat(event, entry)
        if accepted is Accepted.DUPLICATE:
            return IngestResult.DUPLICATE
        if accepted is Accepted.RECORDED and self._metrics is not None:
            # Counted as the verifier counts the events it records.
            self._metrics.append_seconds.observe(time.perf_counter() - started)
            self._metrics.verifications.labels("not_needed").inc()
        return IngestResult.ACCEPTED

    async def _confirm_repeat(self, event: WebhookEvent, entry: InboxEntry) -> IngestResult:
        """A webhook whose id was recorded before. An id StackOne sent names a delivery:
        this is a redelivery. An id that is only a digest of the content names the content,
        and an account that breaks, recovers and breaks again sends the same content
        twice: such a webhook goes to the inbox under an id of its own, and the verifier
        records it only if the account's state at StackOne differs from the last recorded."""
        if not event.event_id.startswith(_DIGEST_PREFIX) or event.type not in _CONFIRMABLE_TYPES:
            return IngestResult.DUPLICATE
        repeat = replace(entry, event_id=_repeat_id(entry.event_id, entry.received_at))
        if await self._log.accept(repeat) is not Accepted.QUEUED:
            return IngestResult.DUPLICATE
        return IngestResult.CONFIRMING
