"""JetStream is never poisoned by data and recovers from any loss of its connection.

On a real nats-server: ids of any length or shape, a message too large for the server,
a dropped connection, a connection nats-py closes for good after a protocol error, and a
nats-server restart under a stream of webhooks to a real `serve` process.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import httpx
import nats
import pytest
from google.protobuf.empty_pb2 import Empty

from service.events.jetstream import JetStreamEventLog, JetStreamOptions
from service.events.model import Accepted, EventLogUnavailable, EventRecord, InboxEntry, Webhook
from stackone_connect.v1 import stackone_connect_pb2 as pb
from tests.harness.nats import NatsProxy, NatsServer
from tests.harness.processes import serve_env, serve_process
from tests.harness.streams import StreamCall, events_covering, next_item, subscribed
from tests.harness.support import WEBHOOK_SECRET, LogBackend, deliver, eventually, metric, webhook

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
    return InboxEntry(0, Webhook(event_id, "account.updated", account_id), time.time(), b"{}")


async def test_a_very_long_account_id_is_recorded_and_the_connection_stays_up(
    nats_server: NatsServer,
) -> None:
    """A 5,000-character (not only ASCII) account id goes through the inbox into the
    stream, reads back, is a known account, and later appends use the same connection."""
    async with jetstream_log(nats_server.url) as log:
        assert await log.accept(entry("evt-long", LONG_ACCOUNT)) is Accepted.QUEUED
        assert (await log.inbox_stats()).depth == 1
        pending = await log.pending(0, 10)
        assert [waiting.account_id for waiting in pending] == [LONG_ACCOUNT]
        assert await log.unsettled(pending) == pending
        settling = replace(record("evt-long", LONG_ACCOUNT), inbox_through=pending[0].seq)
        assert not (await log.settle(pending, [settling])).outcomes[0].duplicate
        assert await log.pending(0, 10) == []
        events = await log.read(0, 10)
        assert [(event.event_id, event.account_id) for event in events] == [
            ("evt-long", LONG_ACCOUNT)
        ]
        assert (await log.known_accounts())[LONG_ACCOUNT].status == "active"
        assert not (await log.append([record("evt-later", "acct-later")]))[0].duplicate
        assert (log.reconnects, log.reopens) == (0, 0)


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
            assert await log.accept(entry(event_id, f"acct-{n}")) is Accepted.QUEUED, repr(event_id)
            assert await log.accept(entry(event_id, f"acct-{n}")) is Accepted.DUPLICATE, repr(
                event_id
            )
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
        assert (log.reconnects, log.reopens) == (0, 0)


async def test_opening_an_unreachable_nats_fails_instead_of_waiting_forever() -> None:
    """With nothing listening, open() gives up with EventLogUnavailable (start-up then
    names the setting) rather than retrying for ever."""
    async with NatsProxy(server_port=1) as proxy:  # accepts, then finds no server
        proxy.refusing = True
        async with asyncio.timeout(20):
            with pytest.raises(EventLogUnavailable, match="cannot reach NATS"):
                await JetStreamEventLog.open(JetStreamOptions(proxy.url))


async def follows_and_hears(log: JetStreamEventLog, other: JetStreamEventLog) -> None:
    """`log` sees what another connection appends, and hears of its inbox entries."""
    seen = log.latest_cursor
    cursor = (await other.append([record(f"evt-{uuid.uuid4().hex}", "acct-other")]))[0].cursor
    async with asyncio.timeout(10):
        while log.latest_cursor < cursor:
            await log.wait_for_append(log.latest_cursor, 1.0)
    assert [event.cursor for event in await log.read(seen, 10)][-1] == cursor
    await log.wait_for_inbox(0, 0)  # takes the hints so far
    await other.accept(entry(f"evt-{uuid.uuid4().hex}", "acct-other"))
    async with asyncio.timeout(10):
        await log.wait_for_inbox(0, 60)  # a hint ends it long before its timeout


@asynccontextmanager
async def proxied(
    nats_server: NatsServer,
) -> AsyncIterator[tuple[NatsProxy, JetStreamEventLog, JetStreamEventLog]]:
    """A log reaching nats-server through a proxy (with one event recorded), and another
    log on the same stream connected directly."""
    stream = f"T{uuid.uuid4().hex}"
    async with (
        NatsProxy(nats_server.port) as proxy,
        jetstream_log(proxy.url, stream) as log,
        jetstream_log(nats_server.url, stream) as other,
    ):
        await log.append([record("evt-before", "acct-1")])
        yield proxy, log, other


async def test_the_log_reconnects_after_its_connection_drops(nats_server: NatsServer) -> None:
    """Every connection cut: nats-py reconnects, and appends, the follower and the inbox
    hints work on the reconnected connection."""
    async with proxied(nats_server) as (proxy, log, other):
        await proxy.cut()
        await eventually(lambda: log.reconnects == 1, timeout=10)
        await log.check_writable()
        assert not (await log.append([record("evt-after", "acct-1")]))[0].duplicate
        await follows_and_hears(log, other)
        assert log.reopens == 0


async def test_a_connection_closed_for_good_is_opened_afresh(nats_server: NatsServer) -> None:
    """After the server's `-ERR` nats-py closes the connection for good: the log reports
    itself unavailable, counts the follower's failures, and once NATS can be reached
    opens a fresh connection on which everything works again."""
    async with proxied(nats_server) as (proxy, log, other):
        proxy.refusing = True
        proxy.send_to_clients(b"-ERR 'Maximum Control Line Exceeded'\r\n")

        async def unavailable() -> bool:
            try:
                await log.check_writable()
            except EventLogUnavailable:
                return True
            return False

        await eventually(unavailable, timeout=10)
        await eventually(lambda: log.background_failures["event_log_follow"] > 0, timeout=10)
        with pytest.raises(EventLogUnavailable):
            await log.append([record("evt-during", "acct-1")])
        proxy.refusing = False
        await eventually(lambda: log.reopens == 1, timeout=20)
        await log.check_writable()
        assert not (await log.append([record("evt-after", "acct-1")]))[0].duplicate
        await follows_and_hears(log, other)


class Sender:
    """Posts signed webhooks one after another, as StackOne does, keeping every answer."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http
        self.answers: list[tuple[bytes, int, str]] = []  # body, status, event id if 2xx
        self.running = True

    def count(self, status: int) -> int:
        """Answers with `status` so far."""
        return sum(1 for _, answered, _ in self.answers if answered == status)

    async def run(self) -> None:
        """Sends fresh webhooks until `running` is cleared."""
        while self.running:
            await self.send(webhook())

    async def send(self, body: bytes) -> int:
        """Posts `body` once; returns the status."""
        response = await deliver(self._http, body)
        event_id = response.json().get("event_id", "") if response.status_code < 300 else ""
        self.answers.append((body, response.status_code, event_id))
        return response.status_code


async def answers(http: httpx.AsyncClient, path: str, status: int) -> bool:
    """True when `path` answers `status` now."""
    return (await http.get(path)).status_code == status


async def metric_is(http: httpx.AsyncClient, sample: str, value: float) -> bool:
    """True when the metrics page shows `sample` at `value` now."""
    return await metric(http, sample) == value


@pytest.mark.slow
async def test_a_nats_restart_under_webhooks_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """A `serve` on JetStream receiving webhooks while nats-server stops and starts again:
    503 during the outage, ready again after it, and every webhook answered 2xx (then
    every one StackOne retried) recorded exactly once."""
    server = NatsServer(tmp_path / "nats")
    (tmp_path / "nats").mkdir()
    server.start()
    backend = LogBackend(server.url, stream=f"R{uuid.uuid4().hex}")
    env = serve_env(
        tmp_path, WEBHOOK_SECRET, **backend.env(), STACKONE_CONNECT_READINESS_INTERVAL="0.2"
    )
    try:
        async with (
            serve_process(env) as serve,
            httpx.AsyncClient(base_url=serve.gateway_url, timeout=10) as http,
            httpx.AsyncClient(base_url=serve.admin_url, timeout=10) as admin,
        ):
            sender = Sender(http)
            sending = asyncio.create_task(sender.run())
            await eventually(lambda: sender.count(200) >= 20, timeout=20)
            await asyncio.to_thread(server.stop)
            await eventually(lambda: sender.count(503) >= 5, timeout=20)
            await eventually(lambda: answers(admin, "/readyz", 503), timeout=10)
            accepted_before = sender.count(200)
            await asyncio.to_thread(server.start)
            await eventually(lambda: sender.count(200) >= accepted_before + 20, timeout=30)
            sender.running = False
            await sending
            await eventually(lambda: answers(admin, "/readyz", 200), timeout=10)
            assert {status for _, status, _ in sender.answers} == {200, 503}
            refused = [body for body, status, _ in sender.answers if status != 200]
            for body in refused:  # StackOne's retries
                assert await sender.send(body) == 200
            wanted = {event_id for _, status, event_id in sender.answers if status == 200}
            depth = "stackone_connect_inbox_depth"  # then any second recording is in the log
            await eventually(lambda: metric_is(admin, depth, 0), timeout=30)
            async with subscribed(serve.grpc_target, from_earliest=Empty()) as stream:
                events = await events_covering(stream, wanted)
                bookmark = await next_bookmark(stream)
            assert int(bookmark.cursor) == max(int(event.cursor) for event in events)
    finally:
        server.stop()
    recorded = Counter(
        covered for event in events for covered in {event.event_id, *event.covered_event_ids}
    )
    assert set(recorded) == wanted
    assert set(recorded.values()) == {1}
    assert len(refused) >= 5


async def next_bookmark(stream: StreamCall) -> pb.Bookmark:
    """The next message, which must be a bookmark: nothing follows the covering events."""
    item = await next_item(stream)
    assert item.HasField("bookmark"), f"an event after every webhook was covered: {item}"
    return item.bookmark
