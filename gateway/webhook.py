"""StackOne webhook bodies: parsed here, once, into the `Webhook` the inbox keeps.

The signature is checked before (`gateway.signature`); here a payload is validated and
given a stable event id. StackOne documents no delivery id, so a webhook without one is
known by a digest of its payload without `sent_at`, the one field that changes between
attempts. Nothing below the gateway parses a body: the parsed `Webhook` travels with its
inbox entry, and the verifier builds the event from it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from service.events.ingest import DIGEST_PREFIX
from service.events.model import ACCOUNT_EVENT_TYPE, InboxEntry, Webhook
from service.stackone.models import MAX_ID, plausible_moment, usable_id

_log = logging.getLogger(__name__)
_PER_ATTEMPT_FIELDS = frozenset({"sent_at"})
# Bounds as on the gRPC side; ids follow the same rule as StackOne's (MAX_ID, usable_id):
# they reach URLs, NATS subjects and headers, so they are short.
MAX_TYPE = 100
MAX_TEXT = 1024


class InvalidWebhook(ValueError):
    """The webhook body is not an event we can record; the message says why."""


@dataclass(slots=True)
class ParseCount:
    """How many bodies `parse_webhook` has parsed in this process: one per webhook, which
    a test holds the gateway and the verifier to."""

    value: int = 0


PARSES = ParseCount()


def parse_webhook(body: bytes, *, event_id: str | None = None) -> Webhook:
    """Parses a webhook body; raises `InvalidWebhook` with a reason a person can act on.

    Fields are read from the top level, or from a `data` object where StackOne nests them.
    `event_id`, when the caller knows it already, saves computing it again.
    """
    PARSES.value += 1
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
    return Webhook(
        event_id=event_id or _event_id(payload),
        type=event_type,
        account_id=_id(fields, "account_id", required=is_account_event),
        provider=_text(fields, "provider"),
        origin_owner_id=_text(fields, "origin_owner_id"),
        origin_owner_name=_text(fields, "origin_owner_name"),
        origin_username=_text(fields, "origin_username"),
        occurred_at=_moment(fields, "event_date"),
    )


def upgraded(entry: InboxEntry) -> InboxEntry:
    """The upgrade path: an inbox entry written by a release that stored only the raw
    body, with its body parsed (once, here) into the `Webhook` entries carry now. A body
    that no longer parses (the rules changed since it was accepted) keeps the id, type and
    account id it was stored under."""
    if not entry.from_raw_body_only:
        return entry
    try:
        webhook = parse_webhook(entry.body, event_id=entry.event_id)
    except InvalidWebhook as error:
        _log.error(
            "inbox entry %s no longer parses, recording its id only: %s", entry.event_id, error
        )
        webhook = entry.webhook
    return replace(entry, webhook=webhook, from_raw_body_only=False)


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
        plausible = plausible_moment(moment)
    except ValueError as error:
        raise InvalidWebhook(f"the webhook field '{key}': {error}") from error
    # StackOne's clock may run ahead of ours: nothing happened after it was received.
    return min(plausible, datetime.now(UTC))


def _event_id(payload: Mapping[str, Any]) -> str:
    for key in ("id", "event_id"):
        value = payload.get(key)
        if isinstance(value, str) and value:
            return _id(payload, key, required=True)
    stable = {key: value for key, value in payload.items() if key not in _PER_ATTEMPT_FIELDS}
    digest = hashlib.sha256(orjson.dumps(stable, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return DIGEST_PREFIX + digest
