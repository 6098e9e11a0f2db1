"""JetStream is never poisoned by data: on a real nats-server, ids of any length or
shape, and a message too large for the server, leave the connection up."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import nats
import pytest

from service.events.jetstream import JetStreamEventLog, JetStreamOptions
from service.events.model import EventLogUnavailable, EventRecord, InboxEntry
from tests.nats import NatsServer

pytestmark = pytest.mark.asyncio

# Over 4,096 bytes as a subject token: the server's control line limit, once refused.
LONG_ACCOUNT = "acct-" + "é" * 2_500 + "x" * 2_500


@asynccontextmanager
async def jetstream_log(url: str, stream: str = "") -> AsyncIterator[JetStreamEventLog]:
    """A log on `stream` (a fresh one by default) through `url`, closed at the end."""
    stream = stream or f"T{uuid.uuid4().hex}"
    log = await JetStreamEventLog.open(JetStreamOptions(url, stream=stream, subject_prefix=stream))
    try:
        yield log
    finally:
        await log.close()


def record(event_id: str, account_id: str) -> EventRecord:
    """An update of `account_id` (never "already known", so always recorded)."""
    return EventRecord(
        event_id=event_id,
        type="account.updated",
        account_id=account_id,
        provider="hibob",
        origin_owner_id="tenant-1",
        body=f"event {event_id!r}".encode(),
        account_status="active",
    )


def entry(event_id: str, account_id: str) -> InboxEntry:
    """A webhook for the inbox (its sequence is assigned by the inbox)."""
    return InboxEntry(0, event_id, "account.updated", account_id, time.time(), b"{}")


async def test_a_very_long_account_id_is_recorded_and_the_connection_stays_up(
    nats_server: NatsServer,
) -> None:
    """A 5,000-character (not only ASCII) account id goes through the inbox into the
    stream, reads back, is a known account, and later appends use the same connection."""
    async with jetstream_log(nats_server.url) as log:
        assert await log.accept(entry("evt-long", LONG_ACCOUNT))
        assert (await log.inbox_stats()).depth == 1
        pending = await log.pending(0, 10)
        assert [waiting.account_id for waiting in pending] == [LONG_ACCOUNT]
        assert await log.unsettled(pending) == pending
        settling = replace(record("evt-long", LONG_ACCOUNT), inbox_through=pending[0].seq)
        assert not (await log.settle(pending, [settling]))[0].duplicate
        assert await log.pending(0, 10) == []
        events = await log.read(0, 10)
        assert [(event.event_id, event.account_id) for event in events] == [
            ("evt-long", LONG_ACCOUNT)
        ]
        assert (await log.known_accounts())[LONG_ACCOUNT].status == "active"
        assert not (await log.append([record("evt-later", "acct-later")]))[0].duplicate


async def test_long_account_ids_differing_only_at_the_end_stay_apart(
    nats_server: NatsServer,
) -> None:
    """Two long ids with one prefix are two accounts (the bounded token is not a prefix)."""
    async with jetstream_log(nats_server.url) as log:
        ids = [LONG_ACCOUNT + "-a", LONG_ACCOUNT + "-b"]
        for n, account_id in enumerate(ids):
            await log.append([record(f"evt-{n}", account_id)])
        assert set(await log.known_accounts()) == set(ids)


async def test_short_account_ids_keep_their_base64url_subjects(nats_server: NatsServer) -> None:
    """An ordinary id's event is where existing streams have it: `<prefix>.<base64url>`."""
    stream = f"T{uuid.uuid4().hex}"
    async with jetstream_log(nats_server.url, stream) as log:
        await log.append([record("evt-short", "58810347712093400001")])
    token = base64.urlsafe_b64encode(b"58810347712093400001").decode().rstrip("=")
    connection = await nats.connect(nats_server.url)
    try:
        message = await connection.jetstream().get_last_msg(stream, f"{stream}.{token}")
    finally:
        await connection.close()
    assert message.data == b"event 'evt-short'"


async def test_event_ids_a_header_would_alter_stay_distinct_and_deduplicated(
    nats_server: NatsServer,
) -> None:
    """Ids that differ only by surrounding spaces or a line break, or that are very long,
    are distinct webhooks and events; a redelivery of each is still dropped."""
    ids = ["evt-1", " evt-1", "evt-1 ", "evt\n1", "evt 1", "=evt-1", "e" * 5_000]
    async with jetstream_log(nats_server.url) as log:
        for n, event_id in enumerate(ids):
            assert await log.accept(entry(event_id, f"acct-{n}")), repr(event_id)
            assert not await log.accept(entry(event_id, f"acct-{n}")), repr(event_id)
        assert len(await log.pending(0, 100)) == len(ids)
        records = [record(event_id, f"other-{n}") for n, event_id in enumerate(ids)]
        outcomes = await log.append(records)
        assert [outcome.duplicate for outcome in outcomes] == [False] * len(ids)
        again = await log.append([record(ids[1], "other-1")])
        assert again[0].duplicate
        assert again[0].cursor == outcomes[1].cursor


async def test_a_message_over_max_payload_is_refused_and_the_connection_stays_up(
    nats_server: NatsServer,
) -> None:
    """An event or webhook whose headers alone exceed the server's max_payload is refused
    with EventLogUnavailable, and the connection is the same one afterwards."""
    huge = "a" * 1_100_000  # the index header carries the account id: over 1 MiB
    async with jetstream_log(nats_server.url) as log:
        with pytest.raises(EventLogUnavailable, match="max_payload"):
            await log.append([record("evt-huge", huge)])
        with pytest.raises(EventLogUnavailable, match="max_payload"):
            await log.accept(entry("evt-huge", huge))
        assert not (await log.append([record("evt-after", "acct-after")]))[0].duplicate
