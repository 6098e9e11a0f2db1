"""Turns verified StackOne webhooks into recorded account events.

Verification of the signature happens before this (in the gateway); here a payload is
validated, given a stable event id, enriched with the account's verified status, and
appended. StackOne documents no delivery id, so a redelivery is recognised by a digest of
the payload without `sent_at`, which is the one field that changes between attempts.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Protocol

import orjson
from google.protobuf.timestamp_pb2 import Timestamp

from service.api.v1 import stackone_connect_pb2 as pb
from service.convert import account_message, timestamp
from service.events.log import EventLog
from service.events.model import EventRecord
from service.metrics import Metrics
from service.stackone.errors import StackOneError
from service.stackone.models import LinkedAccount

_log = logging.getLogger(__name__)
_PER_ATTEMPT_FIELDS = frozenset({"sent_at"})
_ENRICHED_TYPES = frozenset({"account.created", "account.updated"})


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
    """What ingesting one webhook did."""

    RECORDED = "recorded"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"


class AccountSource(Protocol):
    """Where verified account state comes from (the StackOne client)."""

    async def get_account(self, account_id: str, *, deadline: float | None = None) -> LinkedAccount:
        """Fetches one account."""
        ...


def _text(fields: Mapping[str, Any], key: str, *, required: bool = False) -> str:
    value = fields.get(key)
    if value is None:
        if required:
            raise InvalidWebhook(f"the webhook has no '{key}' field")
        return ""
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise InvalidWebhook(f"the webhook field '{key}' must be a string")
    return str(value)


def _moment(fields: Mapping[str, Any], key: str) -> datetime | None:
    raw = fields.get(key)
    if not isinstance(raw, str):
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as error:
        raise InvalidWebhook(f"the webhook field '{key}' is not an ISO-8601 time") from error


def _event_id(payload: Mapping[str, Any]) -> str:
    for key in ("id", "event_id"):
        value = payload.get(key)
        if isinstance(value, str) and value:
            return value
    stable = {key: value for key, value in payload.items() if key not in _PER_ATTEMPT_FIELDS}
    return "sha256:" + hashlib.sha256(orjson.dumps(stable, option=orjson.OPT_SORT_KEYS)).hexdigest()


def parse_webhook(body: bytes) -> WebhookEvent:
    """Parses a webhook body; raises `InvalidWebhook` with a reason a person can act on.

    Fields are read from the top level, or from a `data` object where StackOne nests them.
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
    event_type = _text(fields, "event", required=True)
    is_account_event = event_type.startswith("account.")
    return WebhookEvent(
        event_id=_event_id(payload),
        type=event_type,
        account_id=_text(fields, "account_id", required=is_account_event),
        provider=_text(fields, "provider"),
        origin_owner_id=_text(fields, "origin_owner_id"),
        origin_owner_name=_text(fields, "origin_owner_name"),
        origin_username=_text(fields, "origin_username"),
        occurred_at=_moment(fields, "event_date"),
    )


def event_record(message: pb.AccountEvent) -> EventRecord:
    """The log record of an event message (indexed by the fields filters use)."""
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
    )


class Ingestor:
    """Records webhook events, verifying created/updated accounts with StackOne first."""

    def __init__(
        self,
        log: EventLog,
        accounts: AccountSource | None,
        *,
        enrich_timeout: float = 3.0,
        metrics: Metrics | None = None,
    ) -> None:
        self._log = log
        self._metrics = metrics or Metrics()
        self._accounts = accounts
        self._enrich_timeout = enrich_timeout

    async def ingest(self, event: WebhookEvent) -> IngestResult:
        """Durably records `event` unless it is a duplicate or not an account event."""
        if not event.is_account_event:
            _log.info("ignoring webhook of type %s: not an account event", event.type)
            return IngestResult.IGNORED
        # A redelivery skips the StackOne round trip; the append below de-duplicates
        # every event (this check only saves the enrichment call, so only they pay for it).
        if event.type in _ENRICHED_TYPES and await self._log.contains(event.event_id):
            return IngestResult.DUPLICATE
        record = event_record(await self._message(event))
        with self._metrics.append_seconds.time():
            (outcome,) = await self._log.append([record])
        return IngestResult.DUPLICATE if outcome.duplicate else IngestResult.RECORDED

    async def _message(self, event: WebhookEvent) -> pb.AccountEvent:
        received_at = Timestamp()
        received_at.GetCurrentTime()
        message = pb.AccountEvent(
            event_id=event.event_id,
            type=event.type,
            account=pb.Account(
                id=event.account_id,
                provider=event.provider,
                origin_owner_id=event.origin_owner_id,
                origin_owner_name=event.origin_owner_name,
                origin_username=event.origin_username,
            ),
            occurred_at=timestamp(event.occurred_at) or received_at,
            received_at=received_at,
            source=pb.EVENT_SOURCE_WEBHOOK,
            verification=pb.VERIFICATION_NOT_APPLICABLE,
        )
        if event.type in _ENRICHED_TYPES:
            await self._enrich(message)
        return message

    async def _enrich(self, message: pb.AccountEvent) -> None:
        if self._accounts is None:
            message.verification = pb.VERIFICATION_UNVERIFIED
            message.verification_error = "no StackOne client is configured"
            return
        try:
            account = await self._accounts.get_account(
                message.account.id, deadline=self._enrich_timeout
            )
        except StackOneError as error:
            _log.warning("could not verify account %s: %s", message.account.id, error)
            message.verification = pb.VERIFICATION_UNVERIFIED
            message.verification_error = str(error)
            return
        verified = account_message(account)
        # Keep what the webhook said where StackOne's answer leaves a field empty.
        for field, value in message.account.ListFields():
            if not getattr(verified, field.name):
                setattr(verified, field.name, value)
        message.account.CopyFrom(verified)
        message.verification = pb.VERIFICATION_VERIFIED
