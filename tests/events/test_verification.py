"""The inbox and the verifier on real servers: webhooks are answered without StackOne,
pending webhooks of an account share one look-up and fold into one event, an account's
events keep their order, a full inbox answers 503, and a SIGKILL during a backlog loses
nothing and records nothing twice."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import grpc
import httpx
import orjson
import pytest
import pytest_asyncio
from google.protobuf.empty_pb2 import Empty

from gateway.webhook import PARSES
from service.emulator import EMULATOR_STATE, EmulatorConfig, build_emulator_app
from service.events.model import InboxEntry, Webhook
from service.events.sqlite import SqliteEventLog
from service.runtime import running
from service.web import listening
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.processes import serve_env, serve_process
from tests.harness.streams import (
    StreamCall,
    events_covering,
    next_event,
    next_item,
    position,
    subscribed,
)
from tests.harness.support import (
    WEBHOOK_SECRET,
    LogBackend,
    eventually,
    inbox_is_empty,
    make_settings,
    signed_headers,
)
from tests.harness.verification import LOOK_UP, Harness, running_harness, webhook

pytestmark = pytest.mark.asyncio
BACKENDS = ["sqlite", "jetstream"]


def event_date(body: bytes) -> datetime:
    """The moment a webhook body says its event occurred."""
    return datetime.fromisoformat(orjson.loads(body)["event_date"])


@pytest_asyncio.fixture
async def harness(tmp_path: Path, backend: LogBackend) -> AsyncIterator[Harness]:
    """The service on the test's backend."""
    async with running_harness(tmp_path, backend) as running_one:
        yield running_one


@pytest_asyncio.fixture
async def stream(harness: Harness) -> AsyncIterator[StreamCall]:
    """A subscriber of every event from now on."""
    async with subscribed(harness.service.grpc_target) as call:
        yield call


async def test_a_webhook_is_answered_while_stackone_is_still_being_asked(
    harness: Harness, stream: StreamCall
) -> None:
    """With look-ups taking 30 s, the webhook is accepted at once (the client's 5 s
    timeout would fail an answer that waited) and nothing is recorded before StackOne
    answers."""
    account_id = await harness.account()
    await harness.slow_look_ups(30)
    response = await harness.deliver(webhook("account.updated", account_id))
    assert response.status_code == 200
    assert response.json()["result"] == "accepted"
    await eventually(lambda: harness.look_ups() == 1)  # the verifier is asking now
    assert harness.service.event_log.latest_cursor == 0, "recorded only once verified"


async def test_pending_webhooks_of_an_account_fold_into_one_event_with_one_look_up(
    harness: Harness, stream: StreamCall
) -> None:
    """While the first look-up is in flight, four more updates wait together: they share
    the second look-up and arrive as one verified event covering the four; a redelivery
    of any webhook, pending or recorded, is a duplicate."""
    account_id = await harness.account()
    await harness.slow_look_ups(0.5, times=1)
    first = (await harness.deliver(webhook("account.updated", account_id))).json()
    await eventually(lambda: harness.look_ups() == 1)
    bodies = [webhook("account.updated", account_id) for _ in range(4)]
    answers = [(await harness.deliver(body)).json() for body in bodies]
    assert (await harness.deliver(bodies[1])).json()["result"] == "duplicate", "pending"
    ids = [first["event_id"], *(answer["event_id"] for answer in answers)]
    events = await events_covering(stream, set(ids))
    assert [list(event.covered_event_ids) for event in events] == [ids[:1], ids[1:]]
    assert [event.event_id for event in events] == [ids[0], ids[1]]
    assert {event.verification for event in events} == {pb.VERIFICATION_VERIFIED}
    assert {event.type for event in events} == {"account.updated"}
    assert harness.look_ups() == 2, "one look-up for the four that waited together"
    # (On JetStream an event is readable a moment before its inbox entries are settled;
    # until then a redelivery is still a pending one.)
    await eventually(partial(inbox_is_empty, harness.service.event_log))
    # Its content was recorded: confirmed with StackOne, not taken for a new change.
    assert (await harness.deliver(bodies[3])).json()["result"] == "confirming", "recorded"


async def test_an_accounts_events_keep_their_order_and_a_superseded_update_is_not_looked_up(
    harness: Harness, stream: StreamCall
) -> None:
    """created (looked up slowly), then updated and deleted waiting together: recorded in
    that order; the update, overtaken by the deletion, is unverified without a look-up."""
    account_id = await harness.account()
    await harness.slow_look_ups(0.5, times=1)
    bodies = [webhook(f"account.{kind}", account_id) for kind in ("created", "updated", "deleted")]
    created = (await harness.deliver(bodies[0])).json()["event_id"]
    await eventually(lambda: harness.look_ups() == 1)
    later = [(await harness.deliver(body)).json()["event_id"] for body in bodies[1:]]
    events = await events_covering(stream, {created, *later})
    assert [event.type for event in events] == [
        "account.created",
        "account.updated",
        "account.deleted",
    ]
    assert [event.verification for event in events] == [
        pb.VERIFICATION_VERIFIED,
        pb.VERIFICATION_UNVERIFIED,
        pb.VERIFICATION_NOT_APPLICABLE,
    ]
    assert "superseded by a later account.deleted" in events[1].verification_error
    assert harness.look_ups() == 1


async def test_a_deletion_with_nothing_pending_reaches_subscribers_in_one_commit(
    tmp_path: Path,
) -> None:
    """On SQLite, a deletion of an account with nothing pending is recorded by the same
    transaction that accepts it (one commit, where the inbox and the verifier take two)
    and streamed, marked as needing no verification."""
    async with running_harness(tmp_path, LogBackend(f"sqlite:///{tmp_path / 'events.db'}")) as on:
        log = on.service.event_log
        assert isinstance(log, SqliteEventLog)
        async with subscribed(on.service.grpc_target) as stream:
            commits = log.commits
            answer = (await on.deliver(webhook("account.deleted", "acct-gone"))).json()
            assert answer["result"] == "accepted"
            (event,) = await events_covering(stream, {answer["event_id"]})
            assert log.commits == commits + 1
        assert (event.type, event.account.id) == ("account.deleted", "acct-gone")
        assert event.verification == pb.VERIFICATION_NOT_APPLICABLE
        assert list(event.covered_event_ids) == [answer["event_id"]]
        assert 'verifications_total{outcome="not_needed"} 1.0' in await on.metrics()


async def test_a_full_inbox_answers_503_with_retry_after_and_keeps_nothing(
    tmp_path: Path, backend: LogBackend
) -> None:
    """At the inbox limit (3 here) a webhook gets 503 with Retry-After and is not kept;
    the depth is exported; once the verifier drains the inbox, webhooks are taken again."""
    async with running_harness(tmp_path, backend, inbox_limit=3) as harness:
        # Slow enough for the once-a-second export of the depth to see all three waiting.
        await harness.slow_look_ups(4.0, times=3)
        accounts = [await harness.account() for _ in range(4)]
        accepted = [
            (await harness.deliver(webhook("account.updated", account_id))).json()["event_id"]
            for account_id in accounts[:3]
        ]
        refused = await harness.deliver(webhook("account.updated", accounts[3]))
        assert refused.status_code == 503
        assert refused.headers["retry-after"].isdigit()
        assert "waiting for verification" in refused.json()["error"]
        pending = await harness.service.event_log.pending(0, 10)
        assert [entry.event_id for entry in pending] == accepted
        assert (await harness.service.event_log.inbox_stats()).depth == 3

        async def depth_exported() -> bool:
            return "stackone_connect_inbox_depth 3.0" in await harness.metrics()

        await eventually(depth_exported)
        await eventually(lambda: harness.service.event_log.latest_cursor == 3, timeout=10)
        retried = await harness.deliver(webhook("account.updated", accounts[3]))
        assert retried.json()["result"] == "accepted"


@pytest.mark.slow
async def test_sigkill_during_a_backlog_loses_no_webhook_and_records_none_twice(
    tmp_path: Path, backend: LogBackend
) -> None:
    """A budget of 30 look-ups a minute holds most of 100 accounts' updates in the inbox;
    a SIGKILL while webhooks arrive and the verifier records; after a restart every
    acknowledged webhook is covered by exactly one event, each account's in order."""
    budget = {"STACKONE_CONNECT_RATE_LIMIT": "30", "STACKONE_CONNECT_EMULATOR_RATE_LIMIT": "30"}
    env = serve_env(tmp_path, WEBHOOK_SECRET, **backend.env())
    acknowledged: dict[str, list[str]] = {}
    enough = asyncio.Event()

    async def sender(http: httpx.AsyncClient, accounts: list[str]) -> None:
        for _ in range(10):
            for account_id in accounts:  # one sender per account: its order is the send order
                try:
                    response = await http.post(
                        "/webhooks/stackone",
                        content=(body := webhook("account.updated", account_id)),
                        headers=signed_headers(body),
                    )
                except httpx.TransportError:
                    return  # the server died mid-request: not acknowledged
                if response.status_code == 200:
                    acknowledged.setdefault(account_id, []).append(response.json()["event_id"])
                if sum(map(len, acknowledged.values())) >= 200:
                    enough.set()

    accounts = [f"backlog-{n:03d}" for n in range(100)]
    async with (
        serve_process({**env, **budget}) as serve,
        subscribed(serve.grpc_target) as live,
        httpx.AsyncClient(base_url=serve.gateway_url) as http,
    ):
        senders = [asyncio.create_task(sender(http, accounts[k::16])) for k in range(16)]
        await asyncio.wait_for(enough.wait(), timeout=60)
        recorded_before = await _next_events(live)  # the verifier is recording
        assert await serve.stop(signal.SIGKILL) == -signal.SIGKILL
        await asyncio.wait(senders, timeout=10)
    everything = {event_id for ids in acknowledged.values() for event_id in ids}
    assert len(recorded_before) < len(everything), "the kill came during a backlog"
    async with (
        serve_process(env) as serve,
        subscribed(serve.grpc_target, from_earliest=Empty()) as stream,
    ):
        events = await events_covering(stream, everything)
    covered = [event_id for event in events for event_id in event.covered_event_ids]
    assert len(covered) == len(set(covered)), "no webhook is recorded twice"
    assert everything <= set(covered), "every acknowledged webhook survived"
    for account_id, sent in acknowledged.items():
        in_events = [
            event_id
            for event in events
            if event.account.id == account_id
            for event_id in event.covered_event_ids
            if event_id in everything
        ]
        assert in_events == sent, f"{account_id}'s events keep the order they were sent in"


async def _next_events(stream: StreamCall) -> list[pb.AccountEvent]:
    """The next message's events (at least one)."""
    while True:
        item = await next_item(stream, timeout=30)
        if item.HasField("event"):
            return [item.event]
        if item.HasField("events"):
            return list(item.events.events)


async def test_verification_never_spends_the_callers_reserve_and_the_deadline_bounds_it(
    tmp_path: Path, backend: LogBackend
) -> None:
    """A budget of 5 calls a minute (1 kept for callers) and 6 accounts to verify: 4 are
    verified, the other 2 are recorded unverified at the 1.5 s deadline naming the
    budget, a caller's CreateSession still succeeds, and StackOne never answers 429."""
    async with running_harness(
        tmp_path, backend, rate_limit=5, emulator_rate_limit=5, verify_deadline=1.5
    ) as harness:
        accounts = [await harness.account() for _ in range(6)]
        async with subscribed(harness.service.grpc_target) as stream:
            ids = {
                (await harness.deliver(webhook("account.updated", account_id))).json()["event_id"]
                for account_id in accounts
            }
            events = await events_covering(stream, ids)
        # After the burst has spent all it may, the caller's reserve is still there.
        async with grpc.aio.insecure_channel(harness.service.grpc_target) as channel:
            stub: pb_grpc.ConnectServiceAsyncStub = pb_grpc.ConnectServiceStub(channel)
            session = await stub.CreateSession(
                pb.CreateSessionRequest(origin_owner_id="o", origin_owner_name="O")
            )
        assert session.token
        outcomes = sorted(event.verification for event in events)
        assert outcomes == [pb.VERIFICATION_VERIFIED] * 4 + [pb.VERIFICATION_UNVERIFIED] * 2
        for event in events:
            if event.verification == pb.VERIFICATION_UNVERIFIED:
                assert "not verified within 1.5s" in event.verification_error
                assert "budget" in event.verification_error
        assert harness.state.rate_limited == 0
        assert harness.look_ups() == 4


async def test_a_webhook_pending_at_a_stop_is_verified_after_a_restart_past_its_deadline(
    tmp_path: Path, backend: LogBackend
) -> None:
    """An `account.updated` accepted, the service stopped within the quiet period, and
    started again after the verification deadline has passed: the webhook still gets its
    look-up and is recorded verified (it was recorded unverified with no look-up and a
    false reason, the budget)."""
    config = EmulatorConfig(api_key="restart-key", deliver_webhooks=False)
    stackone_app = build_emulator_app(config)
    async with (
        listening(stackone_app, "127.0.0.1", 0) as stackone,
        httpx.AsyncClient(base_url=stackone.base_url) as emulator,
    ):
        spec = {"provider": "hibob", "origin_owner_id": "tenant-1", "origin_owner_name": "One"}
        account_id = (await emulator.post("/emulator/accounts", json=spec)).json()["id"]
        settings = make_settings(
            tmp_path,
            reconcile_interval=0,
            api_key="restart-key",
            base_url=stackone.base_url,
            verify_deadline=2.0,
            verify_quiet=5.0,  # the look-up would start 1 s (half the deadline) after receipt
            **backend.settings(),
        )
        async with (
            running(settings) as service,
            httpx.AsyncClient(base_url=service.gateway.base_url) as http,
        ):
            body = webhook("account.updated", account_id)
            answer = await http.post(
                "/webhooks/stackone", content=body, headers=signed_headers(body)
            )
            accepted_at = time.time()
        state = stackone_app[EMULATOR_STATE]
        assert state.calls[LOOK_UP] == 0, "stopped before the look-up"
        # The deadline itself must pass while the service is down.
        await eventually(lambda: time.time() > accepted_at + 2.5, timeout=10)
        async with (
            running(settings) as service,
            subscribed(service.grpc_target, from_earliest=Empty()) as stream,
        ):
            (event,) = await events_covering(stream, {answer.json()["event_id"]})
    assert event.verification == pb.VERIFICATION_VERIFIED, event.verification_error
    assert state.calls[LOOK_UP] == 1


async def test_the_same_content_again_is_a_new_change_when_stackone_says_so(
    harness: Harness, stream: StreamCall
) -> None:
    """An account breaks, recovers and breaks again, StackOne sending the same bytes for
    both breaks (no id, no change time): the second break is an event, confirmed with one
    look-up; the same bytes once more, with nothing changed at StackOne, record nothing."""
    account_id = await harness.account()

    def status_webhook(status: str) -> bytes:
        payload = {"event": "account.updated", "account_id": account_id, "status": status}
        return orjson.dumps({**payload, "provider": "hibob", "origin_owner_id": "tenant-1"})

    async def changes_to(status: str) -> httpx.Response:
        await harness.emulator.patch(f"/emulator/accounts/{account_id}", json={"status": status})
        return await harness.deliver(status_webhook(status))

    seen = []
    for status in ("error", "active", "error"):
        answer = (await changes_to(status)).json()
        event = await next_event(stream, timeout=10)
        seen.append((answer["result"], event.account.raw_status, event.verification))
    assert seen == [
        ("accepted", "error", pb.VERIFICATION_VERIFIED),
        ("accepted", "active", pb.VERIFICATION_VERIFIED),
        ("confirming", "error", pb.VERIFICATION_VERIFIED),
    ]
    assert event.event_id.startswith(answer["event_id"] + "~"), "an id of its own"
    look_ups = harness.look_ups()
    redelivered = (await harness.deliver(status_webhook("error"))).json()
    assert redelivered["result"] == "confirming"
    await eventually(lambda: harness.look_ups() == look_ups + 1)
    log = harness.service.event_log
    await eventually(partial(inbox_is_empty, log))
    assert (await log.bounds(exact=True)).latest == position(event.cursor), "nothing new recorded"


async def test_a_webhook_is_parsed_once_from_the_gateway_to_its_recorded_event(
    harness: Harness, stream: StreamCall
) -> None:
    """One signed webhook, through the gateway, the inbox and the verifier's look-up to
    its event, is parsed once: the event still carries what only the body said (its
    `event_date`), taken from the parsed webhook its inbox entry kept."""
    account_id = await harness.account()
    body = webhook("account.updated", account_id)
    parses = PARSES.value
    answer = (await harness.deliver(body)).json()
    (event,) = await events_covering(stream, {answer["event_id"]})
    assert event.verification == pb.VERIFICATION_VERIFIED
    assert event.occurred_at.ToDatetime(UTC) == event_date(body)
    assert PARSES.value - parses == 1


async def test_an_entry_an_earlier_release_left_in_the_inbox_is_parsed_once_and_verified(
    harness: Harness, stream: StreamCall
) -> None:
    """The upgrade path: an inbox entry stored as the release before stored it (the raw
    body only, no parsed webhook) is parsed once by the verifier and recorded with what
    its body says, as a webhook the gateway parsed would be."""
    account_id = await harness.account()
    body = webhook("account.updated", account_id)
    stored = Webhook("evt-from-before", "account.updated", account_id)
    older = InboxEntry(0, stored, time.time(), body, from_raw_body_only=True)
    parses = PARSES.value
    await harness.service.event_log.accept(older)
    (event,) = await events_covering(stream, {"evt-from-before"})
    assert event.verification == pb.VERIFICATION_VERIFIED
    assert event.occurred_at.ToDatetime(UTC) == event_date(body)
    assert PARSES.value - parses == 1
