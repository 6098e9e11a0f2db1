"""Event stream guarantees on real servers: exactly-once recording, durability, isolation,
retention, reconciliation and verified enrichment."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
import httpx
import orjson
import pytest
from google.protobuf.empty_pb2 import Empty
from google.rpc import error_details_pb2

from service.runtime import Runtime, running
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.processes import ServeProcess, serve_env, serve_process
from tests.harness.registries import registry_service
from tests.harness.streams import (
    StreamCall,
    attached,
    events_covering,
    events_until_caught_up,
    next_event,
    replay_all,
)
from tests.harness.support import (
    WEBHOOK_SECRET,
    LogBackend,
    deliver,
    details_of,
    eventually,
    inbox_is_empty,
    make_settings,
    more_sweeps,
    wait_recorded,
    webhook,
)

pytestmark = pytest.mark.asyncio
BACKENDS = ["sqlite", "jetstream"]  # the service fixture runs on each


async def test_duplicate_deliveries_appear_once_on_every_stream(
    service: Runtime, stub: pb_grpc.ConnectServiceAsyncStub
) -> None:
    """The same webhook delivered in turn and concurrently reaches each subscriber once."""
    streams = [stub.StreamAccountEvents(pb.StreamAccountEventsRequest()) for _ in range(2)]
    for stream in streams:
        await attached(stream)
    body, marker = webhook(), webhook()
    async with httpx.AsyncClient(base_url=service.gateway.base_url) as http:
        first, *_ = answers = [(await deliver(http, body)).json() for _ in range(3)]
        concurrent = await asyncio.gather(*(deliver(http, body) for _ in range(10)))
        marked = (await deliver(http, marker)).json()
    assert [answer["result"] for answer in answers] == ["accepted", "duplicate", "duplicate"]
    await wait_recorded(service.event_log, [first["event_id"], marked["event_id"]])
    assert all(response.json()["result"] == "duplicate" for response in concurrent)
    latest = str((await service.event_log.bounds()).latest)
    for stream in streams:
        events = await events_until_caught_up(stream, latest)
        # Two accounts: the verifier may record them in either order.
        assert sorted(event.account.id for event in events) == sorted(
            [orjson.loads(body)["account_id"], orjson.loads(marker)["account_id"]]
        )
        stream.cancel()


async def test_batched_catch_up_carries_the_same_events_in_order(
    service: Runtime, stub: pb_grpc.ConnectServiceAsyncStub
) -> None:
    """With max_events_per_message, a backlog arrives in batches: same events, same order."""
    async with httpx.AsyncClient(base_url=service.gateway.base_url) as http:
        answers = [(await deliver(http, webhook())).json() for _ in range(10)]
    await wait_recorded(service.event_log, [answer["event_id"] for answer in answers])
    latest = str((await service.event_log.bounds()).latest)
    one_by_one = stub.StreamAccountEvents(pb.StreamAccountEventsRequest(from_earliest=Empty()))
    batched = stub.StreamAccountEvents(
        pb.StreamAccountEventsRequest(from_earliest=Empty(), max_events_per_message=4)
    )
    await attached(batched)
    sizes: list[int] = []
    async with asyncio.timeout(5):
        while sum(sizes) < 10:
            item = await batched.read()
            assert isinstance(item, pb.StreamAccountEventsResponse)
            assert not item.HasField("event"), "a batched stream sends batches"
            if item.HasField("events"):
                sizes.append(len(item.events.events))
    assert sizes == [4, 4, 2]
    resumed = stub.StreamAccountEvents(
        pb.StreamAccountEventsRequest(after_cursor="4", max_events_per_message=100)
    )
    expected = await events_until_caught_up(one_by_one, latest)
    public = service.event_log.incarnation.public
    assert [e.cursor for e in expected] == [public(n) for n in range(1, 11)]
    await attached(resumed)
    assert await events_until_caught_up(resumed, latest) == expected[4:]
    for stream in (one_by_one, batched, resumed):
        stream.cancel()


async def test_an_oversized_batch_request_names_the_field(
    stub: pb_grpc.ConnectServiceAsyncStub,
) -> None:
    """max_events_per_message above the limit is INVALID_ARGUMENT naming the field."""
    stream = stub.StreamAccountEvents(pb.StreamAccountEventsRequest(max_events_per_message=1001))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stream.read()
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_events_per_message" in str(raised.value.details())


async def replay(serve: ServeProcess, covering: set[str]) -> list[pb.AccountEvent]:
    """Every retained event of a running `serve`, from the earliest, until the webhooks
    in `covering` are all recorded (the verifier may still be working) and the stream
    has caught up with what was recorded by then."""
    async with grpc.aio.insecure_channel(serve.grpc_target) as channel:
        stub = pb_grpc.ConnectServiceStub(channel)
        stream = stub.StreamAccountEvents(pb.StreamAccountEventsRequest(from_earliest=Empty()))
        await attached(stream)
        events = await events_covering(stream, covering)
        live = stub.StreamAccountEvents(pb.StreamAccountEventsRequest())
        latest = await attached(live)
        live.cancel()
        if events[-1].cursor != latest:
            events += await events_until_caught_up(stream, latest)
        stream.cancel()
        return events


@pytest.mark.slow
async def test_duplicates_across_a_restart_are_recorded_once(
    tmp_path: Path, backend: LogBackend
) -> None:
    """A redelivery after the service restarted on the same log is still a duplicate."""
    body = webhook()
    env = serve_env(tmp_path, WEBHOOK_SECRET, **backend.env())
    async with serve_process(env) as serve, httpx.AsyncClient(base_url=serve.gateway_url) as http:
        answer = (await deliver(http, body)).json()
        assert answer["result"] == "accepted"
        await replay(serve, {answer["event_id"]})  # recorded, not only in the inbox
        assert await serve.stop() == 0
    async with serve_process(env) as serve, httpx.AsyncClient(base_url=serve.gateway_url) as http:
        assert (await deliver(http, body)).json()["result"] == "duplicate"
        assert len(await replay(serve, {answer["event_id"]})) == 1


@pytest.mark.slow
async def test_sigkill_under_load_loses_no_acknowledged_event(
    tmp_path: Path, backend: LogBackend
) -> None:
    """Every webhook answered 2xx before a SIGKILL is replayed after restart, once, in order."""
    env = serve_env(tmp_path, WEBHOOK_SECRET, **backend.env())
    acknowledged: list[str] = []
    enough_load = asyncio.Event()

    async def sender(http: httpx.AsyncClient) -> None:
        while True:
            body = webhook()
            try:
                response = await deliver(http, body)
            except httpx.TransportError:
                return  # the server died mid-request: not acknowledged
            if response.status_code == 200:
                acknowledged.append(response.json()["event_id"])
                if len(acknowledged) >= 500:
                    enough_load.set()

    async with serve_process(env) as serve:
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=serve.gateway_url, limits=limits) as http:
            senders = [asyncio.create_task(sender(http)) for _ in range(16)]
            await asyncio.wait_for(enough_load.wait(), timeout=60)
            assert await serve.stop(signal.SIGKILL) == -signal.SIGKILL
            await asyncio.wait(senders, timeout=10)
    async with serve_process(env) as serve:
        events = await replay(serve, set(acknowledged))
    replayed = [event_id for event in events for event_id in event.covered_event_ids]
    assert len(replayed) == len(set(replayed)), "no webhook is recorded twice"
    assert set(acknowledged) <= set(replayed), "every acknowledged webhook survived"
    cursors = [int(event.cursor) for event in events]
    assert cursors == sorted(cursors)


@pytest.mark.slow
# 10,000 webhooks through the door: 35-60 s on JetStream with the other worker busy, where
# the suite's default timeout is 60 s.
@pytest.mark.timeout(180)
async def test_a_stalled_subscriber_neither_delays_others_nor_grows_memory(
    tmp_path: Path, backend: LogBackend
) -> None:
    """10,000 events flow past three subscribers that read nothing: others get them all,
    server memory stays bounded, and the stalled ones later get every event in order."""
    total = 10_000
    padding = "x" * 2000  # 20 MB of events: buffering them per subscriber would show
    env = serve_env(tmp_path, WEBHOOK_SECRET, **backend.env())
    async with serve_process(env) as serve, grpc.aio.insecure_channel(serve.grpc_target) as ch:
        stub = pb_grpc.ConnectServiceStub(ch)
        stalled = [stub.StreamAccountEvents(pb.StreamAccountEventsRequest()) for _ in range(3)]
        live = [stub.StreamAccountEvents(pb.StreamAccountEventsRequest()) for _ in range(2)]
        for stream in [*stalled, *live]:
            await attached(stream)
        rss_before = serve.rss_kib()

        async def count_events(stream: StreamCall) -> list[str]:
            return [(await next_event(stream, timeout=60)).account.id for _ in range(total)]

        readers = [asyncio.create_task(count_events(stream)) for stream in live]
        sent = await _send_many(serve.gateway_url, total, padding)
        received = await asyncio.gather(*readers)
        rss_after = serve.rss_kib()
        assert sorted(received[0]) == sorted(sent)
        assert received[1] == received[0], "every subscriber sees the same cursor order"
        # Each stalled subscriber holding the events would add 20 MB (60 for the three);
        # the rest is the service's own state of 10,000 new accounts (the registry's index
        # on JetStream, about 0.3 KiB an account) and the shared tail: 17-21 MiB measured.
        assert rss_after - rss_before < 30 * 1024, (rss_before, rss_after)
        for stream in stalled:
            assert await count_events(stream) == received[0]
            stream.cancel()
        for stream in live:
            stream.cancel()
        print(f"serve RSS {rss_before} KiB -> {rss_after} KiB with {total} events")


async def _send_many(gateway_url: str, total: int, padding: str) -> list[str]:
    """Posts `total` distinct webhooks from 8 concurrent senders; returns the account ids."""
    ids = [f"bulk-{n:05d}" for n in range(total)]
    queue: asyncio.Queue[str] = asyncio.Queue()
    for account_id in ids:
        queue.put_nowait(account_id)
    async with httpx.AsyncClient(base_url=gateway_url) as http:

        async def worker() -> None:
            while not queue.empty():
                account_id = queue.get_nowait()
                # Webhook texts are bounded at 1,024 characters: spread over two fields.
                body = webhook(
                    account_id=account_id,
                    origin_owner_name=padding[:1000],
                    origin_username=padding[1000:],
                )
                response = await deliver(http, body)
                assert response.status_code == 200, response.text

        await asyncio.gather(*(worker() for _ in range(8)))
    return ids


async def test_an_expired_cursor_is_out_of_range_naming_the_earliest(
    tmp_path: Path, backend: LogBackend
) -> None:
    """After retention passed a cursor, resuming from it fails OUT_OF_RANGE with the earliest."""
    settings = make_settings(tmp_path, **backend.settings(retention_max_count=3))
    async with (
        running(settings) as service,
        httpx.AsyncClient(base_url=service.gateway.base_url) as http,
        grpc.aio.insecure_channel(service.grpc_target) as channel,
    ):
        answers = [(await deliver(http, webhook())).json() for _ in range(6)]
        await wait_recorded(service.event_log, [answer["event_id"] for answer in answers])
        pruned = await service.event_log.enforce_retention()
        stub = pb_grpc.ConnectServiceStub(channel)
        stream = stub.StreamAccountEvents(pb.StreamAccountEventsRequest(after_cursor="1"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stream.read()
    assert pruned == 3
    assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE
    earliest = service.event_log.incarnation.public(3)  # as clients see cursor 3
    assert f"earliest valid cursor is {earliest} " in (caught.value.details() or "")
    (info,) = details_of(caught.value, error_details_pb2.ErrorInfo)
    assert info.metadata["earliest_cursor"] == earliest  # type: ignore[attr-defined]


async def test_a_stackone_failure_records_the_event_unverified_at_the_deadline(
    tmp_path: Path, backend: LogBackend
) -> None:
    """With StackOne failing GET /accounts/{id}, account.created still arrives once the
    verification deadline passes, unverified, saying why, with what the webhook said."""
    settings = make_settings(tmp_path, verify_deadline=1.0, **backend.settings())
    async with (
        running(settings) as service,
        grpc.aio.insecure_channel(service.grpc_target) as channel,
    ):
        assert service.emulator is not None
        stub: pb_grpc.ConnectServiceAsyncStub = pb_grpc.ConnectServiceStub(channel)
        stream = stub.StreamAccountEvents(pb.StreamAccountEventsRequest())
        await attached(stream)
        async with httpx.AsyncClient(base_url=service.emulator.base_url) as emulator:
            fault = {"path_prefix": "/accounts/", "method": "GET", "status": 500}
            assert (await emulator.post("/emulator/faults", json=fault)).status_code == 201
            spec = {"provider": "hibob", "origin_owner_id": "t-9", "origin_owner_name": "Nine"}
            account = (await emulator.post("/emulator/accounts", json=spec)).json()
        event = await next_event(stream)
        stream.cancel()
    assert (event.type, event.account.id) == ("account.created", account["id"])
    assert event.verification == pb.VERIFICATION_UNVERIFIED
    assert "not verified within 1s of receipt" in event.verification_error
    assert "500" in event.verification_error, "the last failure is named"
    assert event.account.origin_owner_id == "t-9", "what the webhook said is kept"


async def test_reconciliation_alone_reports_created_updated_and_deleted(
    tmp_path: Path, backend: LogBackend
) -> None:
    """With webhook delivery off, sweeps turn emulator changes into marked events."""
    async with registry_service(tmp_path, backend, reconcile_interval=0.1) as accounts:
        await accounts.emulator.put("/emulator/webhooks", json={"enabled": False})
        stream = accounts.stub.StreamAccountEvents(pb.StreamAccountEventsRequest())
        await attached(stream)
        account_id = await accounts.account("t-1")
        created = await next_event(stream)
        await accounts.set_status(account_id, "error")
        updated = await next_event(stream)
        await accounts.stub.DeleteAccount(pb.DeleteAccountRequest(account_id=account_id))
        deleted = await next_event(stream)
        assert (await accounts.emulator.get("/emulator/deliveries")).json() == []
        stream.cancel()
    assert [e.type for e in (created, updated, deleted)] == [
        "account.created",
        "account.updated",
        "account.deleted",
    ]
    assert {e.account.id for e in (created, updated, deleted)} == {account_id}
    assert {e.source for e in (created, updated, deleted)} == {pb.EVENT_SOURCE_RECONCILIATION}
    assert updated.account.status == pb.ACCOUNT_STATUS_ERROR


async def test_reconciliation_never_repeats_a_change_a_webhook_delivered(
    tmp_path: Path, backend: LogBackend
) -> None:
    """Webhooks and fast sweeps racing each other still give one event per change."""
    async with registry_service(tmp_path, backend, reconcile_interval=0.05) as accounts:
        ids = [await accounts.account("t-2") for _ in range(3)]
        await accounts.set_status(ids[1], "error")
        await accounts.stub.DeleteAccount(pb.DeleteAccountRequest(account_id=ids[2]))
        await accounts.state.wait_for_deliveries()
        log = accounts.service.event_log
        await eventually(lambda: inbox_is_empty(log))  # webhooks recorded
        async with httpx.AsyncClient(base_url=accounts.service.admin.base_url) as admin:
            await more_sweeps([admin], 3)  # each sweeping after every webhook landed
        events = await replay_all(accounts.stub)
    by_account = {
        account_id: [e.type for e in events if e.account.id == account_id] for account_id in ids
    }
    # A created and an updated webhook that waited together fold into one event with the
    # newest state; either way, no change is announced twice.
    updated = ["account.created", "account.updated"]
    assert by_account[ids[1]] in (updated, ["account.created"])
    assert by_account == {
        ids[0]: ["account.created"],
        ids[1]: by_account[ids[1]],
        ids[2]: ["account.created", "account.deleted"],
    }
    last_of_ids1 = [e for e in events if e.account.id == ids[1]][-1]
    assert last_of_ids1.account.status == pb.ACCOUNT_STATUS_ERROR
