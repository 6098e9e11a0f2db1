"""The embedded event log: durable, ordered, de-duplicating, resumable, filtered."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from service.events.feed import Feed, StartPosition, resolve_start
from service.events.log import EventLog
from service.events.model import (
    Accepted,
    Bookmark,
    CursorOutOfRange,
    EventFilter,
    EventRecord,
    InboxEntry,
    StoredEvent,
    Webhook,
)
from service.events.sqlite import SqliteEventLog, SqliteOptions
from service.events.verify import record_alone
from tests.harness.records import record, webhook_entry
from tests.harness.support import LogBackend

pytestmark = pytest.mark.asyncio
BACKENDS = ["sqlite", "jetstream"]


async def take(items: AsyncIterator[list[StoredEvent] | Bookmark], count: int) -> list[StoredEvent]:
    """The events of a feed until at least `count` arrived, skipping bookmarks."""
    events: list[StoredEvent] = []
    async with asyncio.timeout(5):
        async for item in items:
            if not isinstance(item, Bookmark):
                events.extend(item)
                if len(events) >= count:
                    break
    return events


async def test_appends_get_increasing_cursors_and_read_back_in_order(
    event_log: EventLog,
) -> None:
    """Cursors increase with each append and reads return events in cursor order."""
    outcomes = await event_log.append([record(n) for n in range(5)])
    cursors = [outcome.cursor for outcome in outcomes]
    assert cursors == sorted(cursors)
    assert len(set(cursors)) == 5
    events = await event_log.read(0, 100)
    assert [event.event_id for event in events] == [f"evt-{n}" for n in range(5)]
    assert [event.body for event in events][2] == b"body-2"


async def test_duplicate_ids_are_recorded_once_sequentially_and_concurrently(
    event_log: EventLog,
) -> None:
    """The same event id appended again, in turn or at once, keeps its first cursor."""
    (first,) = await event_log.append([record(1)])
    (again,) = await event_log.append([record(1)])
    concurrent = await asyncio.gather(*(event_log.append([record(2)]) for _ in range(20)))
    assert again.duplicate
    assert again.cursor == first.cursor
    assert sum(not outcomes[0].duplicate for outcomes in concurrent) == 1
    assert len({outcomes[0].cursor for outcomes in concurrent}) == 1
    assert [event.event_id for event in await event_log.read(0, 100)] == ["evt-1", "evt-2"]


async def test_events_and_dedup_keys_survive_reopening(backend: LogBackend) -> None:
    """After close and reopen, events are still there and a redelivery is still a duplicate."""
    log = await backend.open()
    await log.append([record(n) for n in range(3)])
    await log.close()
    reopened = await backend.open()
    try:
        (outcome,) = await reopened.append([record(1)])
        (fresh,) = await reopened.append([record(7)])
        assert outcome.duplicate
        assert fresh.cursor == 4
        assert len(await reopened.read(0, 100)) == 4
    finally:
        await reopened.close()


async def test_reads_after_a_cursor_have_no_gap_and_no_duplicate(
    event_log: EventLog,
) -> None:
    """Reading in small batches from any cursor visits each later event exactly once."""
    await event_log.append([record(n) for n in range(50)])
    seen: list[int] = []
    position = 10
    while batch := await event_log.read(position, 7):
        seen.extend(event.cursor for event in batch)
        position = batch[-1].cursor
    assert seen == list(range(11, 51))


async def test_cold_reads_come_from_disk_when_the_tail_is_empty(backend: LogBackend) -> None:
    """A reopened log (empty memory tail) still serves old events from SQLite."""
    log = await backend.open(tail_bytes=24)
    await log.append([record(n) for n in range(20)])
    await log.close()
    log = await backend.open(tail_bytes=24)
    try:
        await log.append([record(100)])
        assert [event.cursor for event in await log.read(0, 100)] == list(range(1, 22))
    finally:
        await log.close()


async def test_filters_combine_kinds_with_and_and_values_with_or(
    event_log: EventLog,
) -> None:
    """A feed with filters yields only the events every filter kind admits."""
    await event_log.append(
        [
            record(1, provider="hibob"),
            record(2, provider="personio"),
            record(3, provider="hibob", type_="account.deleted"),
            record(4, provider="bamboohr"),
            record(5, provider="hibob"),
        ]
    )
    event_filter = EventFilter.of(providers=["hibob", "bamboohr"], event_types=["account.created"])
    feed = Feed(event_log, 0, event_filter, bookmark_interval=10)
    events = await take(feed, 3)
    assert [event.event_id for event in events] == ["evt-1", "evt-4", "evt-5"]


async def test_a_live_feed_receives_events_appended_after_it_started(
    event_log: EventLog,
) -> None:
    """A feed started from now gets later appends and nothing earlier."""
    await event_log.append([record(0)])
    after = await resolve_start(event_log, StartPosition.now())
    feed = Feed(event_log, after, EventFilter(), bookmark_interval=0.05)
    assert await anext(feed) == Bookmark(after)
    async with asyncio.timeout(5):
        # A second bookmark: the feed read the log, found nothing and waited. It is live.
        assert await anext(feed) == Bookmark(after)
    await event_log.append([record(1)])
    await event_log.append([record(2)])
    assert [event.event_id for event in await take(feed, 2)] == ["evt-1", "evt-2"]


async def test_filtered_idle_feeds_get_bookmarks_that_advance(
    event_log: EventLog,
) -> None:
    """A feed whose filter matches nothing still gets bookmarks with the read position."""
    feed = Feed(event_log, 0, EventFilter.of(providers=["nobody"]), bookmark_interval=0.05)
    assert await anext(feed) == Bookmark(0)
    await event_log.append([record(n) for n in range(3)])
    async with asyncio.timeout(5):
        bookmark = await anext(feed)
        while isinstance(bookmark, Bookmark) and bookmark.cursor < 3:
            bookmark = await anext(feed)
    assert bookmark == Bookmark(3)


async def test_a_cursor_older_than_retention_is_out_of_range_with_the_earliest(
    backend: LogBackend,
) -> None:
    """After count retention prunes, resuming before the pruned point names the earliest cursor."""
    log = await backend.open(max_count=5)
    try:
        await log.append([record(n) for n in range(12)])
        assert await log.enforce_retention() == 7
        earliest = log.incarnation.public(7)  # as clients see cursor 7
        with pytest.raises(CursorOutOfRange, match=f"earliest valid cursor is {earliest} "):
            await resolve_start(log, StartPosition.after(3))
        assert await resolve_start(log, StartPosition.earliest()) == 7
        assert [event.cursor for event in await log.read(7, 100)] == [8, 9, 10, 11, 12]
        (redelivered,) = await log.append([record(2)])
        assert redelivered.duplicate, "dedup keys outlive count-based retention"
    finally:
        await log.close()


async def test_a_cursor_ahead_of_the_log_is_out_of_range(event_log: EventLog) -> None:
    """A cursor from another (or a reset) log is refused rather than waited on forever."""
    await event_log.append([record(1)])
    with pytest.raises(CursorOutOfRange, match="ahead of the log"):
        await resolve_start(event_log, StartPosition.after(99))


async def test_a_follower_overtaken_by_retention_gets_an_error_not_a_gap(
    backend: LogBackend,
) -> None:
    """Retention pruning past a slow follower's position ends its feed with CursorOutOfRange."""
    log = await backend.open(max_count=3, tail_bytes=12)
    try:
        await log.append([record(n) for n in range(3)])  # within the count: nothing pruned
        feed = Feed(log, 0, EventFilter(), bookmark_interval=10, batch_size=1)
        assert isinstance(await anext(feed), Bookmark)
        assert await anext(feed) == await log.read(0, 1)
        await log.append([record(n) for n in range(3, 10)])
        await log.enforce_retention()
        with pytest.raises(CursorOutOfRange):
            await take(feed, 10)
    finally:
        await log.close()


async def test_concurrent_appends_all_get_distinct_cursors(event_log: EventLog) -> None:
    """Many concurrent single-event appends all succeed and keep distinct cursors."""
    outcomes = await asyncio.gather(*(event_log.append([record(n)]) for n in range(300)))
    cursors = sorted(result[0].cursor for result in outcomes)
    assert cursors == list(range(1, 301))


async def test_concurrent_appends_are_group_committed(tmp_path: Path) -> None:
    """300 concurrent single-event appends to SQLite share a handful of transactions."""
    log = await SqliteEventLog.open(SqliteOptions(tmp_path / "events.db"))
    try:
        before = log.commits
        outcomes = await asyncio.gather(*(log.append([record(n)]) for n in range(300)))
        commits = log.commits - before
    finally:
        await log.close()
    assert sorted(result[0].cursor for result in outcomes) == list(range(1, 301))
    assert 1 <= commits <= 10, f"{commits} commits for 300 appends"


async def test_a_change_already_recorded_by_another_source_is_not_recorded_again(
    event_log: EventLog,
) -> None:
    """A created/deleted for an account already in that state is dropped inside the append."""
    created_again = EventRecord("evt-b", "account.created", "acct-1", "hibob", "o", b"", "active")
    (first,) = await event_log.append([record(1)])
    (second,) = await event_log.append([created_again])
    deleted = [
        EventRecord(f"del-{n}", "account.deleted", "acct-1", "hibob", "o", b"") for n in range(2)
    ]
    outcomes = await event_log.append(deleted)
    assert not first.duplicate
    assert second.duplicate
    assert [outcome.duplicate for outcome in outcomes] == [False, True]
    assert [event.event_id for event in await event_log.read(0, 10)] == ["evt-1", "del-0"]


def accept_alone(log: SqliteEventLog, entry: InboxEntry) -> Awaitable[Accepted]:
    """`accept` offering the event the verifier would record for the entry by itself."""
    return log.accept(entry, record_alone(entry))


async def test_a_webhook_needing_no_look_up_is_recorded_in_its_own_transaction(
    tmp_path: Path,
) -> None:
    """A deletion with nothing of its account pending is recorded by the one commit that
    accepts it, not queued for the verifier; its redelivery is a duplicate."""
    log = await SqliteEventLog.open(SqliteOptions(tmp_path / "events.db"))
    try:
        commits = log.commits
        deleted = webhook_entry("evt-del", "account.deleted", "acct-1")
        assert await accept_alone(log, deleted) is Accepted.RECORDED
        assert log.commits == commits + 1
        assert await log.pending(0, 10) == []
        (event,) = await log.read(0, 10)
        assert (event.event_id, event.type, event.account_id) == (
            "evt-del",
            "account.deleted",
            "acct-1",
        )
        assert await accept_alone(log, deleted) is Accepted.REPEATED  # recorded before
        assert await log.read(0, 10) == [event]
    finally:
        await log.close()


async def test_a_webhook_behind_pending_ones_of_its_account_waits_in_the_inbox(
    tmp_path: Path,
) -> None:
    """With an update of the account pending (accepted in an earlier transaction, in the
    same one, or before a restart), a deletion queues behind it, so the verifier records
    the two in order; other accounts are not held back, and once the account's entries
    are settled its next deletion is recorded at once again."""
    path = tmp_path / "events.db"
    log = await SqliteEventLog.open(SqliteOptions(path))
    try:
        updated = webhook_entry("evt-upd-1", "account.updated", "acct-1")
        assert await log.accept(updated) is Accepted.QUEUED
        assert await accept_alone(log, webhook_entry("evt-del-1", "account.deleted", "acct-1")) is (
            Accepted.QUEUED
        )
        same_transaction = await asyncio.gather(
            log.accept(webhook_entry("evt-upd-2", "account.updated", "acct-2")),
            accept_alone(log, webhook_entry("evt-del-2", "account.deleted", "acct-2")),
            accept_alone(log, webhook_entry("evt-del-3", "account.deleted", "acct-3")),
        )
        assert list(same_transaction) == [Accepted.QUEUED, Accepted.QUEUED, Accepted.RECORDED]
    finally:
        await log.close()
    log = await SqliteEventLog.open(SqliteOptions(path))
    try:
        again = webhook_entry("evt-del-1b", "account.deleted", "acct-1")
        assert await accept_alone(log, again) is Accepted.QUEUED, "pending after a restart"
        pending = await log.pending(0, 10)
        assert [entry.event_id for entry in pending] == [
            "evt-upd-1", "evt-del-1", "evt-upd-2", "evt-del-2", "evt-del-1b",
        ]  # fmt: skip
        for account in ("acct-1", "acct-2"):
            of_account = [entry for entry in pending if entry.account_id == account]
            records = [record_alone(entry) or record(0) for entry in of_account]
            await log.settle(of_account, records)
        assert await log.pending(0, 10) == []
        later = webhook_entry("evt-del-4", "account.deleted", "acct-1")
        assert await accept_alone(log, later) is Accepted.RECORDED
    finally:
        await log.close()


async def test_an_inbox_entry_keeps_its_parsed_webhook_and_an_older_one_only_its_body(
    event_log: EventLog,
) -> None:
    """The inbox hands back the parsed webhook it was given, every field (the verifier
    builds the event from it, parsing nothing); an entry written as an earlier release
    wrote it, raw body only, reads back marked so, for the upgrade path to parse."""
    webhook = Webhook(
        "evt-parsed", "account.updated", "acct-1", "hibob", "tenant-1",
        "Tenant Ünø\u2028\x85\r\n<b>One</b>",  # line breaks of every kind, escaped or not
        "admin@tenant.example", datetime(2026, 11, 24, 14, 6, 49, 120_000, tzinfo=UTC),
    )  # fmt: skip
    parsed = InboxEntry(0, webhook, time.time(), b'{"event": "account.updated"}')
    older = InboxEntry(
        0, Webhook("evt-older", "account.deleted", "acct-2"), time.time(), b"{}",
        from_raw_body_only=True,
    )  # fmt: skip
    for entry in (parsed, older):
        assert await event_log.accept(entry) is Accepted.QUEUED
    read = await event_log.pending(0, 10)
    assert [(e.webhook, e.body, e.from_raw_body_only) for e in read] == [
        (webhook, parsed.body, False),
        (older.webhook, b"{}", True),
    ]
    # As read again by the account (JetStream: one message at a time).
    assert [e.webhook for e in await event_log.unsettled(read[:1])] == [webhook]
