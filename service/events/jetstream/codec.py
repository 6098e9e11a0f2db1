"""What a JetStream message or bucket value says besides its body, written and read here:
subject tokens and message ids, the event and inbox headers, the accounts bucket's values
and the ids bucket's."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from email.header import Header, decode_header
from typing import Any

import orjson
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js.api import RawStreamMsg

from service.events.model import (
    EventRecord,
    InboxEntry,
    KnownAccount,
    StoredEvent,
    Webhook,
    deletes_account,
)
from service.events.records import event_source
from service.events.registry import RegisteredAccount, registered
from stackone_connect.v1 import stackone_connect_pb2 as pb

EVENT_HEADER = "Sc-Event"  # our index columns, as JSON, so reads need not parse the body
INBOX_HEADER = "Sc-Inbox"
_TRACEPARENT_HEADER = "traceparent"
# base64url of 1,020 bytes (1,360 characters): every id of up to 255 characters, the
# gateway's bound, keeps its token; subjects stay far below the server's control line.
_MAX_TOKEN_BYTES = 1020
_MAX_MSG_ID = 255


def token(account_id: str) -> str:
    """A subject token and accounts-bucket key for any account id: its unpadded base64url
    (subjects forbid '.', '*', '>' and spaces), or for a long id '=' and its SHA-256, so
    a subject never outgrows the server's control line; '=' never occurs in the former."""
    raw = account_id.encode(errors="surrogatepass")
    if len(raw) > _MAX_TOKEN_BYTES:
        return "=" + hashlib.sha256(raw).hexdigest()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=") or "_"


def msg_id(event_id: str) -> str:
    """`Nats-Msg-Id` for an event id: the id itself when a header keeps it verbatim
    (nats-py strips surrounding spaces and blanks line breaks, which would make two ids
    one), else '=' and its SHA-256, which no verbatim id starts with."""
    verbatim = (
        0 < len(event_id) <= _MAX_MSG_ID
        and event_id.isprintable()
        and event_id == event_id.strip()
        and not event_id.startswith("=")
    )
    if verbatim:
        return event_id
    return "=" + hashlib.sha256(event_id.encode(errors="surrogatepass")).hexdigest()


def id_key(event_id: str) -> str:
    """The ids bucket's key for an event id."""
    return hashlib.sha256(event_id.encode(errors="surrogatepass")).hexdigest()


def event_headers(record: EventRecord, recorded_at: float, inbox_through: int) -> dict[str, str]:
    """An event message's index columns, as JSON in one header, so reads need not parse
    the body (`stored_event` and `last_event` read them back)."""
    fields = {
        "event_id": record.event_id,
        "type": record.type,
        "account_id": record.account_id,
        "provider": record.provider,
        "origin_owner_id": record.origin_owner_id,
        "recorded_at": recorded_at,
        "status": record.account_status,
        "updated_at": record.account_updated_at,
        "source": record.source,
        "inbox_through": inbox_through,
    }
    return {EVENT_HEADER: orjson.dumps(fields).decode()}


def inbox_headers(entry: InboxEntry) -> dict[str, str]:
    """An inbox message's columns and its parsed webhook (`inbox_entry` reads them back;
    the body stays the raw webhook), and its trace context under W3C's own header name,
    which NATS tooling shows as such."""
    fields: dict[str, object] = {
        "event_id": entry.event_id,
        "type": entry.type,
        "account_id": entry.account_id,
        "received_at": entry.received_at,
    }
    if (details := entry.stored_details()) is not None:
        fields["webhook"] = details
    headers = {INBOX_HEADER: orjson.dumps(fields).decode()}
    if entry.traceparent:
        headers[_TRACEPARENT_HEADER] = entry.traceparent
    return headers


def header_fields(headers: Mapping[str, object] | None, name: str) -> dict[str, Any]:
    """Our JSON header `name`. nats-py's get of a stream message parses headers as e-mail,
    which hands back a value with non-ASCII bytes (an id such as 'café') as an
    `email.header.Header`; `decode_header` gives back its bytes."""
    value = (headers or {})[name]
    if isinstance(value, Header):
        value = b"".join(p if isinstance(p, bytes) else p.encode() for p, _ in decode_header(value))
    fields: dict[str, Any] = orjson.loads(value if isinstance(value, bytes) else str(value))
    return fields


def inbox_entry(seq: int, headers: Mapping[str, object] | None, body: bytes) -> InboxEntry:
    """An inbox message as `inbox_headers` wrote it; one an earlier release wrote has
    no parsed webhook, only its raw body (see `InboxEntry.from_raw_body_only`)."""
    fields = header_fields(headers, INBOX_HEADER)
    details = fields.get("webhook")
    return InboxEntry(
        seq,
        Webhook.stored(fields["event_id"], fields["type"], fields["account_id"], details),
        float(fields["received_at"]),
        body,
        str((headers or {}).get(_TRACEPARENT_HEADER, "")),
        from_raw_body_only=details is None,
    )


def received_at(headers: Mapping[str, object] | None) -> float:
    """When the webhook of an inbox message was received."""
    return float(header_fields(headers, INBOX_HEADER)["received_at"])


def stored(message: Msg) -> StoredEvent:
    """The event a message of the events' stream holds."""
    fields = header_fields(message.headers, EVENT_HEADER)
    return stored_event(fields, message.metadata.sequence.stream, message.data)


def stored_event(fields: Mapping[str, Any], cursor: int, body: bytes) -> StoredEvent:
    """The event a message's header fields and body describe, at `cursor`."""
    return StoredEvent(
        cursor,
        fields["event_id"],
        fields["type"],
        fields["account_id"],
        fields["provider"],
        fields["origin_owner_id"],
        fields["recorded_at"],
        body,
    )


@dataclass(frozen=True, slots=True)
class LastEvent:
    """The last event of an account: its sequence, state, id and inbox position."""

    sequence: int
    known: KnownAccount | None
    event_id: str
    inbox_through: int
    entry: RegisteredAccount | None  # the registry entry it left

    @classmethod
    def none(cls) -> LastEvent:
        """An account with no event in the stream."""
        return cls(0, None, "", 0, None)

    @classmethod
    def of(cls, message: RawStreamMsg) -> LastEvent:
        """What the last message on an account's subject says."""
        fields = header_fields(message.headers, EVENT_HEADER)
        known = KnownAccount(
            fields["account_id"],
            fields["status"],
            fields["updated_at"],
            deletes_account(fields["type"]),
            fields["source"],
        )
        sequence = int(message.seq or 0)
        return cls(
            sequence,
            known,
            str(fields["event_id"]),
            int(fields.get("inbox_through", 0)),
            registered(stored_event(fields, sequence, message.data or b"")),
        )


@dataclass(frozen=True, slots=True)
class Recorded:
    """An ids-bucket value: the event's cursor (0: its change was known already) and the
    inbox sequence the recording covered (0 when not from the inbox)."""

    cursor: int
    inbox_through: int

    @classmethod
    def parse(cls, value: bytes) -> Recorded:
        cursor, _, through = value.decode().partition(" ")
        return cls(int(cursor or 0), int(through or 0))

    def value(self) -> bytes:
        """The bucket value `parse` reads back."""
        return f"{self.cursor} {self.inbox_through}".encode()


def state_of(event: StoredEvent) -> tuple[KnownAccount, RegisteredAccount]:
    """What an accounts-bucket value holds once `event` is the account's last."""
    try:
        message = pb.AccountEvent.FromString(event.body)
    except DecodeError:
        message = pb.AccountEvent()
    account = message.account
    known = KnownAccount(
        event.account_id,
        account.raw_status,
        account.updated_at.ToJsonString() if account.HasField("updated_at") else "",
        deletes_account(event.type),
        event_source(message.source),
    )
    return known, registered(event)


def registry_value(known: KnownAccount, entry: RegisteredAccount) -> bytes:
    """An accounts-bucket value: what reconciliation compares, and the registry entry."""
    return orjson.dumps(
        {
            "known": known,
            "cursor": entry.cursor,
            "account": base64.b64encode(entry.account).decode(),
            "provider": entry.provider,
            "origin_owner_id": entry.origin_owner_id,
            "recorded_at": entry.recorded_at,
        }
    )


def from_registry_value(value: bytes) -> tuple[KnownAccount, RegisteredAccount]:
    """The two halves of an accounts-bucket value (one written before the registry holds
    only the first: its entry then has no account and cursor 0)."""
    state = orjson.loads(value)
    known = KnownAccount(**state.get("known", state))
    entry = RegisteredAccount(
        known.account_id,
        int(state.get("cursor", 0)),
        known.deleted,
        base64.b64decode(state.get("account", "")),
        state.get("provider", ""),
        state.get("origin_owner_id", ""),
        known.status,
        float(state.get("recorded_at", 0.0)),
    )
    return known, entry
