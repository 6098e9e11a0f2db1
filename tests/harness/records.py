"""Event-log records and inbox entries made by hand, for tests of the log and its users."""

from __future__ import annotations

import time

import orjson

from service.events.model import EventRecord, InboxEntry, Webhook
from stackone_connect.v1 import stackone_connect_pb2 as pb


def record(n: int, *, provider: str = "hibob", type_: str = "account.created") -> EventRecord:
    """A record with a distinct id and body for number `n`."""
    return EventRecord(
        event_id=f"evt-{n}",
        type=type_,
        account_id=f"acct-{n}",
        provider=provider,
        origin_owner_id=f"owner-{n % 2}",
        body=f"body-{n}".encode(),
    )


def webhook_entry(event_id: str, type_: str, account_id: str) -> InboxEntry:
    """An inbox entry for a webhook of `type_` (its body as the gateway would keep it)."""
    body = orjson.dumps({"event": type_, "account_id": account_id, "provider": "hibob"})
    return InboxEntry(0, Webhook(event_id, type_, account_id, "hibob"), time.time(), body)


def padded_record(number: int, label_bytes: int = 0) -> EventRecord:
    """An account.updated event of account `acct-<number>`, padded by a long label."""
    account = pb.Account(id=f"acct-{number}", provider="hibob", label="x" * label_bytes)
    body = pb.AccountEvent(event_id=f"evt-{number}", type="account.updated", account=account)
    return EventRecord(
        f"evt-{number}", "account.updated", f"acct-{number}", "hibob", "owner",
        body.SerializeToString(), "active", f"2026-01-01T00:00:{number % 60:02}.{number:06}Z",
    )  # fmt: skip
