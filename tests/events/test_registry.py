"""The account registry on real servers, on SQLite and on a real nats-server: reads that
make no StackOne call, list then watch and snapshot starts with writes racing, the status
before each event, reconciled deletions that filtered streams see, and the fallback of a
registry that is not complete yet."""

from __future__ import annotations

import asyncio
import random
import signal
from pathlib import Path

import grpc
import httpx
import nats
import pytest
from google.protobuf.empty_pb2 import Empty
from grpc_health.v1 import health_pb2

from service.events.registry import RegistryQuery
from stackone_connect.v1 import stackone_connect_pb2 as pb
from tests.harness.processes import serve_env, serve_process
from tests.harness.registries import Registry, registry_service
from tests.harness.streams import StreamCall, next_item, subscribed
from tests.harness.support import WEBHOOK_SECRET, LogBackend, deliver, eventually
from tests.harness.support import webhook as plain_webhook

pytestmark = pytest.mark.asyncio
BACKENDS = ["sqlite", "jetstream"]
LOOK_UP = "GET /accounts/{account_id}"
LISTING = "GET /accounts"


async def _events_until(stream: StreamCall, cursor: int) -> list[pb.AccountEvent]:
    """Events of the stream up to a bookmark or event at `cursor` or later."""
    events: list[pb.AccountEvent] = []
    while True:
        item = await next_item(stream, timeout=10)
        if item.HasField("bookmark"):
            if int(item.bookmark.cursor) >= cursor:
                return events
            continue
        arrived = [item.event] if item.HasField("event") else list(item.events.events)
        events.extend(arrived)
        if int(arrived[-1].cursor) >= cursor:
            return events


def _fold(accounts: list[pb.Account], events: list[pb.AccountEvent]) -> dict[str, tuple[str, str]]:
    """A subscriber's view: the listed accounts, then each event applied in order."""
    view = {account.id: (account.raw_status, account.origin_owner_id) for account in accounts}
    for event in events:
        if event.type == "account.deleted":
            view.pop(event.account.id, None)
        else:
            view[event.account.id] = (event.account.raw_status, event.account.origin_owner_id)
    return view


async def _writes(registry: Registry, accounts: list[str], stop: asyncio.Event) -> None:
    """Changes accounts at StackOne until `stop`: statuses flip, some are deleted, new ones
    are linked."""
    rng = random.Random(7)
    live = list(accounts)
    while not stop.is_set():
        choice = rng.random()
        if choice < 0.15 and len(live) > 2:
            await registry.delete(live.pop(rng.randrange(len(live))))
        elif choice < 0.3:
            live.append(await registry.account())
        else:
            await registry.set_status(rng.choice(live), rng.choice(["active", "error"]))
        await asyncio.sleep(0.005)  # paces the writer only; nothing waits on it


async def _writes_stopped_then_followed(
    registry: Registry, writer: asyncio.Task[None], stop: asyncio.Event, stream: StreamCall
) -> tuple[dict[str, tuple[str, str]], list[pb.AccountEvent]]:
    """Lets the writer go on a moment (load while the stream runs), stops it, and returns
    the registry's final state and the stream's events up to the cursor it reflects."""
    await asyncio.sleep(0.3)  # paces the load only; what follows waits on state
    stop.set()
    await writer
    final, cursor = await _settled_view(registry)
    events = await _events_until(stream, cursor)
    stream.cancel()
    return final, [event for event in events if int(event.cursor) <= cursor]


async def _settled_view(registry: Registry) -> tuple[dict[str, tuple[str, str]], int]:
    """The registry's final state and the (public) cursor it reflects, once everything the
    writes caused is recorded: every webhook delivered by the emulator (the inbox is empty
    while its queue still holds some) and out of the inbox, and nothing recorded past the
    listing (a sweep with no grace may correct a stale listing of its own after it)."""
    await asyncio.wait_for(registry.state.wait_for_deliveries(), timeout=20)
    log = registry.service.event_log
    listed: tuple[list[pb.Account], int] = ([], 0)

    async def settled() -> bool:
        nonlocal listed
        if (await log.inbox_stats()).depth:
            return False
        listed = await registry.listed()
        latest = (await log.bounds(exact=True)).latest
        return listed[1] == int(log.incarnation.public(latest))

    await eventually(settled, timeout=20)
    accounts, cursor = listed
    view = {account.id: (account.raw_status, account.origin_owner_id) for account in accounts}
    return view, cursor


@pytest.mark.timeout(120)
async def test_list_then_watch_with_writes_racing_loses_nothing_and_sees_nothing_twice(
    tmp_path: Path, backend: LogBackend
) -> None:
    """A registry listing (pages of 3) taken while accounts change, then a stream after
    its cursor: every event is past the cursor, every listed account's state was set at
    or before it, and the list plus the events fold into the registry's final state."""
    async with registry_service(tmp_path, backend) as registry:
        accounts = [await registry.account() for _ in range(8)]
        await registry.complete()
        stop = asyncio.Event()
        untouched = max(accounts)  # changed once, by the test itself
        writer = asyncio.create_task(_writes(registry, sorted(accounts)[:-1], stop))
        await asyncio.sleep(0.1)  # let writes be in flight while listing (load, not a wait)

        async def change_a_later_page(first_page: list[pb.Account]) -> None:
            # An account the first page has not reached changes, and is recorded, before
            # the next page is read: the listing leaves it to the stream.
            later = untouched
            assert later > first_page[-1].id
            await registry.set_status(later, "suspended")
            asked = pb.GetAccountRequest(account_id=later, read_from=pb.READ_FROM_REGISTRY)

            async def recorded() -> bool:
                return (await registry.stub.GetAccount(asked)).raw_status == "suspended"

            await eventually(recorded, timeout=10)

        listed, cursor = await registry.listed(change_a_later_page)
        stream = registry.stub.StreamAccountEvents(
            pb.StreamAccountEventsRequest(after_cursor=str(cursor), max_events_per_message=50)
        )
        final, events = await _writes_stopped_then_followed(registry, writer, stop, stream)
    assert all(int(account.registry_cursor) <= cursor for account in listed)
    assert all(int(event.cursor) > cursor for event in events), "nothing seen twice"
    assert len({event.cursor for event in events}) == len(events)
    assert _fold(listed, events) == final, "nothing lost"


@pytest.mark.timeout(120)
async def test_a_snapshot_under_concurrent_writes_then_its_events_fold_into_the_registry(
    tmp_path: Path, backend: LogBackend
) -> None:
    """`from_snapshot` while accounts change: each live account once in the snapshot
    (state set at or before the bookmark that ends it) or in an event after it, deleted
    ones left out, and the two fold into the registry's final state."""
    async with registry_service(tmp_path, backend) as registry:
        accounts = [await registry.account() for _ in range(8)]
        await registry.complete()
        stop = asyncio.Event()
        writer = asyncio.create_task(_writes(registry, accounts, stop))
        await asyncio.sleep(0.1)
        stream = registry.stub.StreamAccountEvents(
            pb.StreamAccountEventsRequest(from_snapshot=Empty(), max_events_per_message=4)
        )
        snapshot: list[pb.Account] = []
        while True:
            item = await next_item(stream, timeout=10)
            if item.HasField("bookmark") and item.bookmark.initial_state_end:
                end = int(item.bookmark.cursor)
                break
            if item.HasField("account"):
                snapshot.append(item.account)
            elif item.HasField("accounts"):
                snapshot.extend(item.accounts.accounts)
        final, events = await _writes_stopped_then_followed(registry, writer, stop, stream)
    assert len({account.id for account in snapshot}) == len(snapshot), "each account once"
    assert all(int(account.registry_cursor) <= end for account in snapshot)
    assert all(int(event.cursor) > end for event in events)
    assert _fold(snapshot, events) == final


async def test_events_carry_the_status_before_them_across_break_and_recovery(
    tmp_path: Path, backend: LogBackend
) -> None:
    """An account linked, broken, recovered: its events' previous_status are unset, ACTIVE,
    ERROR; the registry answers with the recovered state and the last event's cursor."""
    async with registry_service(tmp_path, backend, reconcile_interval=0) as registry:
        stream = registry.stub.StreamAccountEvents(pb.StreamAccountEventsRequest())
        await next_item(stream)
        account_id = await registry.account()
        events = [await _next_event(stream)]
        for status in ("error", "active"):
            await registry.set_status(account_id, status)
            events.append(await _next_event(stream))
        stream.cancel()
    assert [(e.account.raw_status, e.previous_status, e.previous_raw_status) for e in events] == [
        ("active", pb.ACCOUNT_STATUS_UNSPECIFIED, ""),
        ("error", pb.ACCOUNT_STATUS_ACTIVE, "active"),
        ("active", pb.ACCOUNT_STATUS_ERROR, "error"),
    ]


async def test_a_reconciled_deletion_reaches_streams_filtered_by_owner_and_by_provider(
    tmp_path: Path, backend: LogBackend
) -> None:
    """An account deleted at StackOne with no webhook: reconciliation's account.deleted
    carries the owner and provider the registry knows, and previous_status, so streams
    filtered by either get it."""
    async with registry_service(tmp_path, backend) as registry:
        account_id = await registry.account(owner="acme", provider="personio")
        await registry.complete()
        by_owner = registry.stub.StreamAccountEvents(
            pb.StreamAccountEventsRequest(origin_owner_ids=["acme"])
        )
        by_provider = registry.stub.StreamAccountEvents(
            pb.StreamAccountEventsRequest(providers=["personio"])
        )
        for stream in (by_owner, by_provider):
            await next_item(stream)
        await registry.emulator.put("/emulator/webhooks", json={"enabled": False})
        await registry.delete(account_id)
        deleted = [await _next_event(stream) for stream in (by_owner, by_provider)]
    for event in deleted:
        assert (event.type, event.account.id) == ("account.deleted", account_id)
        assert event.source == pb.EVENT_SOURCE_RECONCILIATION
        assert (event.account.origin_owner_id, event.account.provider) == ("acme", "personio")
        assert event.previous_status == pb.ACCOUNT_STATUS_ACTIVE


async def test_registry_reads_make_no_stackone_call_and_say_what_they_reflect(
    tmp_path: Path, backend: LogBackend
) -> None:
    """From the complete registry: GetAccount and filtered ListAccounts without a StackOne
    call, with cursors; a deleted id is NOT_FOUND saying where it looked."""
    # One sweep at start (the registry is not complete), none after.
    async with registry_service(tmp_path, backend, reconcile_interval=3600) as registry:
        await registry.complete()
        mine = [await registry.account(owner="acme") for _ in range(4)]
        other = await registry.account(owner="globex")
        await registry.set_status(mine[0], "error")

        async def from_registry(account_id: str) -> pb.Account | grpc.StatusCode:
            try:
                return await registry.stub.GetAccount(
                    pb.GetAccountRequest(account_id=account_id, read_from=pb.READ_FROM_REGISTRY)
                )
            except grpc.aio.AioRpcError as error:
                return error.code()

        async def recorded() -> bool:
            found = [await from_registry(account_id) for account_id in [*mine, other]]
            first = found[0]
            live = all(isinstance(a, pb.Account) for a in found)
            return live and isinstance(first, pb.Account) and first.raw_status == "error"

        await eventually(recorded, timeout=20)
        calls = {k: registry.state.calls[k] for k in (LOOK_UP, LISTING)}
        account = await from_registry(mine[0])
        listed, cursor = await registry.listed(origin_owner_ids=["acme"])
        errors, _ = await registry.listed(origin_owner_ids=["acme"], statuses=["error"])
        assert {k: registry.state.calls[k] for k in (LOOK_UP, LISTING)} == calls, "no call"
        await registry.delete(other)

        async def gone() -> bool:
            return await from_registry(other) == grpc.StatusCode.NOT_FOUND

        await eventually(gone, timeout=20)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await registry.stub.GetAccount(
                pb.GetAccountRequest(account_id=other, read_from=pb.READ_FROM_REGISTRY)
            )
    assert isinstance(account, pb.Account)
    assert (account.id, account.raw_status, account.origin_owner_id) == (mine[0], "error", "acme")
    assert 0 < int(account.registry_cursor) <= cursor
    assert sorted(a.id for a in listed) == sorted(mine)
    assert [a.id for a in errors] == [mine[0]]
    # A lookup reads the account's newest entry: there is no cursor its answer is as of.
    assert (refused.value.details() or "").startswith(f"account {other!r} is not in the registry: ")


async def test_an_incomplete_registry_answers_from_stackone_and_says_so(
    tmp_path: Path, backend: LogBackend
) -> None:
    """With no reconciliation sweep yet: a registry listing comes from StackOne (answered_from
    says so, no cursor), GetAccount has no registry cursor, a snapshot is UNAVAILABLE."""
    async with registry_service(tmp_path, backend, reconcile_interval=0) as registry:
        account_id = await registry.account()
        page = await registry.stub.ListAccounts(
            pb.ListAccountsRequest(read_from=pb.READ_FROM_REGISTRY)
        )
        account = await registry.stub.GetAccount(
            pb.GetAccountRequest(account_id=account_id, read_from=pb.READ_FROM_REGISTRY)
        )
        stream = registry.stub.StreamAccountEvents(
            pb.StreamAccountEventsRequest(from_snapshot=Empty())
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stream.read()
        assert registry.state.calls[LISTING] >= 1
        assert await registry.health() == health_pb2.HealthCheckResponse.NOT_SERVING
    assert (page.answered_from, page.cursor) == (pb.READ_FROM_STACKONE, "")
    assert [a.id for a in page.accounts] == [account_id]
    assert (account.id, account.registry_cursor) == (account_id, "")
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "not complete" in (refused.value.details() or "")


async def _next_event(stream: StreamCall) -> pb.AccountEvent:
    while True:
        item = await next_item(stream, timeout=10)
        if item.HasField("event"):
            return item.event


@pytest.mark.slow
async def test_after_a_sigkill_and_lost_registry_writes_the_registry_is_the_fold_of_the_log(
    tmp_path: Path, backend: LogBackend
) -> None:
    """A `serve` SIGKILLed while webhooks are being recorded; then, on JetStream, every
    registry write lost as a replica dying between its publish and its write would lose
    it (entries and watermark deleted in NATS itself): once a log opens again, the
    registry holds exactly the last event of every account."""
    env = serve_env(tmp_path, WEBHOOK_SECRET, **backend.env())
    accounts = [f"kill-{n:03d}" for n in range(60)]
    async with (
        serve_process(env) as serve,
        httpx.AsyncClient(base_url=serve.gateway_url, timeout=10) as http,
        subscribed(serve.grpc_target) as live,
    ):
        for account_id in accounts:
            body = plain_webhook("account.updated", account_id=account_id)
            assert (await deliver(http, body)).status_code == 200
        await _next_event(live)  # the verifier is recording
        assert await serve.stop(signal.SIGKILL) == -signal.SIGKILL
    if backend.stream:
        await _lose_registry_writes(backend)
    log = await backend.open()
    try:
        events = await log.read(0, 100_000)
        last = {event.account_id: event.cursor for event in events}
        page = await log.registry(RegistryQuery(limit=1000))
    finally:
        await log.close()
    assert last, "something was recorded before the kill"
    assert {entry.account_id: entry.cursor for entry in page.accounts} == last


async def _lose_registry_writes(backend: LogBackend) -> None:
    """Deletes every entry of the accounts bucket, the watermark included."""
    connection = await nats.connect(backend.url)
    try:
        bucket = await connection.jetstream().key_value(f"{backend.stream}_ACCOUNTS")
        for key in await bucket.keys():
            await bucket.purge(key)
    finally:
        await connection.close()


async def test_a_folded_event_carries_the_status_before_the_webhooks_it_folds(
    tmp_path: Path, backend: LogBackend
) -> None:
    """Two webhooks folded into one event (error, then suspended) carry the status before
    the fold: ACTIVE."""
    async with registry_service(
        tmp_path, backend, verify_quiet=1.0, reconcile_interval=3600
    ) as registry:
        await registry.complete()  # the one sweep, at start
        stream = registry.stub.StreamAccountEvents(pb.StreamAccountEventsRequest())
        await next_item(stream)
        account_id = await registry.account()
        created = await _next_event(stream)
        for status in ("error", "suspended"):  # within the quiet period: one look-up
            await registry.set_status(account_id, status)
        folded = await _next_event(stream)
        stream.cancel()
    assert created.previous_status == pb.ACCOUNT_STATUS_UNSPECIFIED
    assert len(folded.covered_event_ids) == 2
    assert (folded.account.raw_status, folded.previous_raw_status) == ("suspended", "active")
    assert folded.previous_status == pb.ACCOUNT_STATUS_ACTIVE


async def test_a_change_only_reconciliation_sees_carries_the_status_before_it(
    tmp_path: Path, backend: LogBackend
) -> None:
    """An account broken at StackOne with no webhook: reconciliation's account.updated
    carries previous_status ACTIVE."""
    async with registry_service(tmp_path, backend) as registry:
        account_id = await registry.account()
        await registry.complete()
        stream = registry.stub.StreamAccountEvents(
            pb.StreamAccountEventsRequest(account_ids=[account_id], from_earliest=Empty())
        )
        await _next_event(stream)  # account.created
        await registry.emulator.put("/emulator/webhooks", json={"enabled": False})
        await registry.set_status(account_id, "error")
        reconciled = await _next_event(stream)
        stream.cancel()
    assert reconciled.source == pb.EVENT_SOURCE_RECONCILIATION
    assert (reconciled.account.raw_status, reconciled.previous_raw_status) == ("error", "active")
    assert reconciled.previous_status == pb.ACCOUNT_STATUS_ACTIVE
