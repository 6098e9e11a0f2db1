"""The Python client library against real servers: its RPC methods, and a watch that
resumes across restarts, shutdowns, replica switches, expired cursors and its own crash."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest
from aiohttp import web
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from examples.web.app import Config, build_app
from service.runtime import running
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect_client import (
    Client,
    FileCursorStore,
    MemoryCursorStore,
    Resynced,
    Retry,
    SnapshotEnd,
    WatchItem,
)
from tests.harness.certificates import make_certificates
from tests.harness.nats import NatsServer
from tests.harness.processes import serve_env, serve_process
from tests.harness.registries import registry_service
from tests.harness.replicas import replicas
from tests.harness.streams import position
from tests.harness.support import (
    WEBHOOK_SECRET,
    LogBackend,
    deliver,
    eventually,
    make_settings,
    webhook,
)
from tests.harness.tls_services import ADMIN, READER, tls_service

pytestmark = pytest.mark.asyncio
CLI = [sys.executable, "-m", "service.cli"]
OWNER = Config.owner_id


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _next(items: AsyncIterator[WatchItem], timeout: float = 30) -> WatchItem:
    async with asyncio.timeout(timeout):
        return await anext(items)


async def _next_event(items: AsyncIterator[WatchItem]) -> pb.AccountEvent:
    item = await _next(items)
    assert isinstance(item, pb.AccountEvent), item
    return item


async def _deliver(gateway_url: str, count: int, **fields: str) -> list[str]:
    """Posts `count` account.deleted webhooks of new accounts; returns their account ids."""
    ids = [f"acct-{uuid.uuid4().hex[:8]}" for _ in range(count)]
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as http:
        for account_id in ids:
            answer = await deliver(http, webhook(account_id=account_id, **fields))
            assert answer.status_code == 200, answer.text
    return ids


def _in_cursor_order(events: list[pb.AccountEvent]) -> bool:
    cursors = [int(event.cursor) for event in events]
    return cursors == sorted(set(cursors))


async def test_every_rpc_is_a_method_with_keyword_arguments_and_a_deadline(
    tmp_path: Path,
) -> None:
    """Sessions, accounts (every page, from StackOne and from the registry with its
    cursor), deletion; a deadline too short ends the call with DEADLINE_EXCEEDED."""
    backend = LogBackend(f"sqlite:///{tmp_path / 'events.db'}")
    async with registry_service(tmp_path, backend) as accounts:
        ids = sorted([await accounts.account() for _ in range(3)])
        await accounts.holds(ids)
        async with Client.connect(accounts.service.grpc_target, timeout=10) as client:
            session = await client.create_session(
                origin_owner_id="tenant-1", origin_owner_name="Tenant One", categories=["hris"]
            )
            registry = client.list_accounts(read_from=pb.READ_FROM_REGISTRY, page_size=1)
            from_registry = sorted([account.id async for account in registry])
            from_stackone = sorted(
                [account.id async for account in client.list_accounts(page_size=2)]
            )
            got = await client.get_account(account_id=ids[0], read_from=pb.READ_FROM_REGISTRY)
            deleted = await client.delete_account(account_id=ids[1])
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.get_account(account_id=ids[0], timeout=1e-6)
    assert session.token
    assert session.origin_owner_id == "tenant-1"
    assert from_registry == from_stackone == ids
    assert registry.answered_from == pb.READ_FROM_REGISTRY
    assert int(registry.cursor) > 0
    assert got.id == ids[0]
    assert got.registry_cursor
    assert deleted.id == ids[1]
    # The deadline ends the call here, or reaches the server first, which then gives
    # StackOne no time (and says so).
    details = caught.value.details() or ""
    expired = caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert expired or ("deadline" in details or "in time" in details), details


async def test_the_client_authenticates_as_the_cli_does_token_tls_and_mutual_tls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Target and token from the CLI's variables, TLS and mutual TLS from the CLI's files:
    a client certificate is required, a token's scopes apply, and a watch the token may not
    read fails at once with PERMISSION_DENIED rather than retrying."""
    certificates = make_certificates(tmp_path)
    ca, cert, key = (
        str(f) for f in (certificates.ca, certificates.client_cert, certificates.client_key)
    )
    async with tls_service(tmp_path, certificates, mutual=True) as service:
        monkeypatch.setenv("STACKONE_CONNECT_TARGET", service.grpc_target)
        monkeypatch.setenv("STACKONE_CONNECT_TOKEN", READER)
        async with Client.connect(ca_file=ca, cert_file=cert, key_file=key) as reader:
            listed = [account async for account in reader.list_accounts()]
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                async for _ in reader.watch():
                    pass
        async with Client.connect(token=ADMIN, ca_file=ca) as no_certificate:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await no_certificate.create_session(origin_owner_id="t-1", origin_owner_name="A")
        async with Client.connect(token=ADMIN, ca_file=ca, cert_file=cert, key_file=key) as admin:
            session = await admin.create_session(origin_owner_id="t-1", origin_owner_name="A")
    assert listed == []
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert session.token


class _BusyOnce:
    """A hand-written StreamAccountEvents whose first call fails UNAVAILABLE with a
    RetryInfo delay, and whose next ones send a bookmark and an event; it records the
    requests it was sent."""

    def __init__(self, retry_delay: float) -> None:
        self.retry_delay = retry_delay
        self.requests: list[pb.StreamAccountEventsRequest] = []

    async def stream(
        self, request: pb.StreamAccountEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.StreamAccountEventsResponse]:
        self.requests.append(request)
        if len(self.requests) == 1:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(self.retry_delay * 1e9))
            detail = any_pb2.Any()
            detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
            busy = rpc_status.to_status(
                status_pb2.Status(code=code_pb2.UNAVAILABLE, message="busy", details=[detail])
            )
            await context.abort(busy.code, busy.details, busy.trailing_metadata)
        yield pb.StreamAccountEventsResponse(bookmark=pb.Bookmark(cursor="7"))
        yield pb.StreamAccountEventsResponse(event=pb.AccountEvent(event_id="e-8", cursor="8"))

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        stream = grpc.unary_stream_rpc_method_handler(
            self.stream,
            request_deserializer=pb.StreamAccountEventsRequest.FromString,
            response_serializer=pb.StreamAccountEventsResponse.SerializeToString,
        )
        return grpc.method_handlers_generic_handler(
            "stackone_connect.v1.ConnectService", {"StreamAccountEvents": stream}
        )


async def test_a_watch_waits_as_long_as_the_servers_retry_info_asks() -> None:
    """UNAVAILABLE with RetryInfo of 0.5 s: the watch waits that long (plus up to 20 %
    jitter), not its own backoff's 0.1 s at most, then reads on from where it was."""
    busy = _BusyOnce(retry_delay=0.5)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([busy.handler()])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    retries: list[Retry] = []
    try:
        async with Client.connect(f"127.0.0.1:{port}") as client:
            items = aiter(client.watch(on_retry=retries.append))
            event = await _next_event(items)
    finally:
        await server.stop(None)
    (retry,) = retries
    assert retry.code == grpc.StatusCode.UNAVAILABLE
    assert 0.5 <= retry.delay <= 0.6
    assert event.cursor == "8"
    assert len(busy.requests) == 2


@pytest.mark.slow
async def test_a_watch_resumes_after_its_server_is_killed_and_restarted_mid_stream(
    tmp_path: Path,
) -> None:
    """The server SIGKILLed while the watch reads, then started again: the watch retries
    until it is back and continues after the last event, none twice, none missed."""
    target = f"127.0.0.1:{_free_port()}"
    env = serve_env(tmp_path, WEBHOOK_SECRET, STACKONE_CONNECT_GRPC_ADDRESS=target)
    retries: list[Retry] = []
    async with Client.connect(target) as client:
        items = aiter(client.watch(start="earliest", on_retry=retries.append))
        async with serve_process(env) as first:
            before = await _deliver(first.gateway_url, 3)
            got = [await _next_event(items) for _ in range(3)]
            pending = asyncio.ensure_future(_next_event(items))  # reading when it dies
            assert await first.stop(signal.SIGKILL) == -signal.SIGKILL
            await eventually(lambda: len(retries) >= 2, timeout=20)  # down, and retrying
        async with serve_process(env) as second:
            after = await _deliver(second.gateway_url, 3)
            got.append(await pending)
            got += [await _next_event(items) for _ in range(2)]
    # Accounts are verified independently: their order within a delivery is not fixed.
    assert {e.account.id for e in got[:3]} == set(before)
    assert {e.account.id for e in got[3:]} == set(after)
    assert _in_cursor_order(got)
    assert all(retry.resume_after == got[2].cursor for retry in retries)


@pytest.mark.slow
async def test_a_server_shutting_down_says_where_to_resume_and_the_watch_follows_it(
    tmp_path: Path,
) -> None:
    """SIGTERM: the stream ends with `resume_after_cursor` past the events the filter left
    out (no bookmark told them); the watch keeps it, then resumes after it elsewhere."""
    target = f"127.0.0.1:{_free_port()}"
    env = serve_env(
        tmp_path,
        WEBHOOK_SECRET,
        STACKONE_CONNECT_GRPC_ADDRESS=target,
        STACKONE_CONNECT_BOOKMARK_INTERVAL="60",  # no bookmark carries the position
    )
    store = FileCursorStore(tmp_path / "watch.cursor")
    retries: list[Retry] = []
    async with Client.connect(target) as client:
        watched = aiter(
            client.watch(
                providers=["workday"], start="earliest", cursor_store=store,
                on_retry=retries.append,
            )
        )  # fmt: skip
        everything = aiter(client.watch(start="earliest"))
        async with serve_process(env) as first:
            (kept,) = await _deliver(first.gateway_url, 1, provider="workday")
            first_event = await _next_event(watched)
            await _deliver(first.gateway_url, 3)  # filtered out
            latest = [await _next_event(everything) for _ in range(4)][-1].cursor
            pending = asyncio.ensure_future(_next_event(watched))
            assert await first.stop(signal.SIGTERM) == 0
            await eventually(lambda: bool(retries), timeout=20)
        assert retries[0].draining
        assert retries[0].resume_after == latest
        assert await store.load() == latest
        async with serve_process(env) as second:
            (later,) = await _deliver(second.gateway_url, 1, provider="workday")
            resumed = await pending
    assert first_event.account.id == kept
    assert resumed.account.id == later
    assert int(resumed.cursor) > int(latest) > int(first_event.cursor)


async def test_a_cursor_past_retention_resyncs_with_a_marker_and_misses_nothing(
    tmp_path: Path,
) -> None:
    """A stored cursor the log no longer retains: `Resynced`, then every matching account as
    it is now (those whose events were pruned too), `SnapshotEnd`, then live events."""
    backend = LogBackend(f"sqlite:///{tmp_path / 'events.db'}")
    async with registry_service(tmp_path, backend, retention_max_count=2) as accounts:
        ids = sorted([await accounts.account() for _ in range(5)])
        await accounts.holds(ids)
        await accounts.service.event_log.enforce_retention()
        store = MemoryCursorStore("1")
        async with Client.connect(accounts.service.grpc_target) as client:
            items = aiter(client.watch(cursor_store=store))
            marker = await _next(items)
            snapshot: list[pb.Account] = []
            while not isinstance(item := await _next(items), SnapshotEnd):
                assert isinstance(item, pb.Account), item
                snapshot.append(item)
            await accounts.set_status(ids[0], "error")
            event = await _next_event(items)
    assert isinstance(marker, Resynced)
    assert marker.stale_cursor == "1"
    assert int(marker.earliest_cursor) > 1
    assert sorted(account.id for account in snapshot) == ids
    assert store.cursor == item.cursor  # kept once the next item was asked for
    assert (event.account.id, event.account.status) == (ids[0], pb.ACCOUNT_STATUS_ERROR)
    assert int(event.cursor) > int(item.cursor)


@pytest.mark.slow
async def test_a_watch_moves_to_another_jetstream_replica_when_its_own_dies(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """Two replicas on one JetStream stream behind one target; the one read from (the
    first: pick-first) is killed: the watch continues on the other after its last event,
    in order, none missed."""
    retries: list[Retry] = []
    async with replicas(2, tmp_path, nats_server.url) as (a, b):
        target = f"ipv4:{a.grpc_target},{b.grpc_target}"  # a first: pick-first uses it
        async with Client.connect(target) as client:
            items = aiter(client.watch(start="earliest", on_retry=retries.append))
            first = await _deliver(a.gateway_url, 3)
            got = [await _next_event(items) for _ in range(3)]
            pending = asyncio.ensure_future(_next_event(items))
            assert await a.stop(signal.SIGKILL) == -signal.SIGKILL
            second = await _deliver(b.gateway_url, 3)
            got.append(await pending)
            got += [await _next_event(items) for _ in range(2)]
    assert retries, "the stream on the killed replica ended"
    assert {e.account.id for e in got[:3]} == set(first)
    assert {e.account.id for e in got[3:]} == set(second)
    assert _in_cursor_order(got)


async def _watch_process(target: str, cursor_file: Path) -> asyncio.subprocess.Process:
    """`events watch` as a subscriber of its own, printing events as JSON lines."""
    return await asyncio.create_subprocess_exec(
        *CLI, "events", "watch", "--from-earliest", "--json", "--target", target,
        "--cursor-file", str(cursor_file),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def _killed_after(process: asyncio.subprocess.Process, last_cursor: int) -> list[int]:
    """The positions of the events `process` printed: read until it printed `last_cursor`
    (or, for a negative one, that many events), then killed, with whatever else it printed."""
    assert process.stdout is not None
    cursors: list[int] = []
    async with asyncio.timeout(30):
        while (cursors[-1:] != [last_cursor]) if last_cursor > 0 else len(cursors) < -last_cursor:
            cursors.append(position(orjson.loads(await process.stdout.readline())["cursor"]))
    process.kill()
    rest, _ = await process.communicate()
    return cursors + [position(orjson.loads(line)["cursor"]) for line in rest.splitlines()]


@pytest.mark.slow
async def test_a_subscriber_killed_and_started_again_continues_from_its_cursor_file(
    tmp_path: Path,
) -> None:
    """`events watch --cursor-file` (the library's file store) SIGKILLed mid-stream and
    started again: every event at least once, each run in order, none skipped, and the
    second run starts where the first stopped (at most its last event again)."""
    cursor_file = tmp_path / "watch.cursor"
    async with running(make_settings(tmp_path)) as service:
        await _deliver(service.gateway.base_url, 10)
        killed = await _killed_after(await _watch_process(service.grpc_target, cursor_file), -4)
        await _deliver(service.gateway.base_url, 10)
        again = await _watch_process(service.grpc_target, cursor_file)
        started_again = await _killed_after(again, 20)
    assert killed == sorted(set(killed))
    assert started_again == sorted(set(started_again))
    assert started_again[0] >= killed[-1]
    assert sorted(set(killed) | set(started_again)) == list(range(1, 21))


async def _server_sent_events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    """(event, data) of each server-sent event of a text/event-stream."""
    kind = data = ""
    async for line in lines:
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")
        elif not line and kind:
            yield kind, data
            kind = data = ""


@pytest.mark.slow
async def test_the_example_apps_event_stream_outlives_a_restart_of_the_service(
    tmp_path: Path,
) -> None:
    """examples/web's `/api/events` (the client library's watch): the service restarts and
    the page's one response goes on with the next event; nothing ends, nothing repeats."""
    settings = make_settings(tmp_path, grpc_address=f"127.0.0.1:{_free_port()}")
    app = build_app(Config(grpc_target=settings.grpc_address))
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    page_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with (
            httpx.AsyncClient(base_url=page_url, timeout=30) as page,
            page.stream("GET", "/api/events") as stream,
        ):
            events = aiter(_server_sent_events(stream.aiter_lines()))
            async with running(settings) as service:
                assert (await anext(events))[0] == "bookmark"  # attached
                before = await _deliver(service.gateway.base_url, 1, origin_owner_id=OWNER)
                first = await _next_account_event(events)
            async with running(settings) as service:
                after = await _deliver(service.gateway.base_url, 1, origin_owner_id=OWNER)
                second = await _next_account_event(events)
    finally:
        await runner.cleanup()
    assert [first["account"]["id"], second["account"]["id"]] == before + after


async def _next_account_event(events: AsyncIterator[tuple[str, str]]) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while True:
            kind, data = await anext(events)
            if kind == "account":
                event: dict[str, Any] = orjson.loads(data)
                return event
