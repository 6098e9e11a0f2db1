"""The event log's own conversions: v1 event messages to the log's records, and an inbox
entry's webhook to its unverified event.

StackOne's models become messages in `service.api.convert`, which knows nothing of the
log; these go the other way round: storage knows the messages its records carry.
"""

from __future__ import annotations

from service.api.convert import timestamp
from service.events.model import EventRecord, EventSource, InboxEntry
from stackone_connect.v1 import stackone_connect_pb2 as pb


def webhook_event(entry: InboxEntry) -> pb.AccountEvent:
    """The event an inbox entry's parsed webhook describes, unverified."""
    webhook = entry.webhook
    return pb.AccountEvent(
        event_id=entry.event_id,
        type=entry.type,
        account=pb.Account(
            id=entry.account_id,
            provider=webhook.provider,
            origin_owner_id=webhook.origin_owner_id,
            origin_owner_name=webhook.origin_owner_name,
            origin_username=webhook.origin_username,
        ),
        occurred_at=timestamp(webhook.occurred_at),
        source=pb.EVENT_SOURCE_WEBHOOK,
    )


def event_source(source: pb.EventSource.ValueType) -> EventSource:
    """The log's name for an event message's source."""
    if source == pb.EVENT_SOURCE_RECONCILIATION:
        return EventSource.RECONCILIATION
    return EventSource.WEBHOOK


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
        source=event_source(message.source),
        covered_ids=tuple(message.covered_event_ids),
        inbox_through=inbox_through,
        repeat=repeat,
    )
