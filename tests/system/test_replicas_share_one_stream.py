"""Several `serve` processes sharing one event stream on a real nats-server (JetStream)."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
import httpx
import orjson
import pytest
from google.protobuf.empty_pb2 import Empty
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.emulator import EmulatorConfig, build_emulator_app
from service.events import cursors
from service.web import listening
from stackone_connect.v1 import stackone_connect_pb2 as pb
from tests.harness.nats import NatsServer
from tests.harness.processes import ServeProcess
from tests.harness.replicas import replicas
from tests.harness.streams import events_until_caught_up, next_event, position, subscribed
from tests.harness.support import deliver, eventually, more_sweeps, webhook

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


async def test_a_webhook_redelivered_to_another_replica_appears_once_on_both(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """Posted to replica A, re-delivered to replica B: once, on subscribers of A and of B."""
    body, marker = webhook(), webhook()
    async with (
        replicas(2, tmp_path, nats_server.url) as (a, b),
        subscribed(a.grpc_target) as on_a,
        subscribed(b.grpc_target) as on_b,
        httpx.AsyncClient(base_url=a.gateway_url) as http_a,
        httpx.AsyncClient(base_url=b.gateway_url) as http_b,
    ):
        assert (await deliver(http_a, body)).json()["result"] == "accepted"
        assert (await deliver(http_b, body)).json()["result"] == "duplicate"
        assert (await deliver(http_b, marker)).json()["result"] == "accepted"
        for stream in (on_a, on_b):
            first, second = await next_event(stream), await next_event(stream)
            assert [first.account.id, second.account.id] == [
                webhook_account(body),
                webhook_account(marker),
            ]
            assert int(first.cursor) < int(second.cursor)


def webhook_account(body: bytes) -> str:
    """The account id a test webhook body carries."""
    return str(orjson.loads(body)["account_id"])


async def test_a_subscriber_resumes_on_another_replica_after_a_crash(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """Cursor taken on A, A killed, resumed on B: every later event, no gap, no duplicate."""
    async with replicas(2, tmp_path, nats_server.url) as (a, b):
        bodies = [webhook() for _ in range(9)]
        async with subscribed(a.grpc_target) as on_a:
            async with httpx.AsyncClient(base_url=a.gateway_url) as http_a:
                for body in bodies[:5]:
                    assert (await deliver(http_a, body)).status_code == 200
            read = [await next_event(on_a) for _ in range(3)]
            cursor = read[-1].cursor
            assert await a.stop(signal.SIGKILL) == -signal.SIGKILL
        async with httpx.AsyncClient(base_url=b.gateway_url) as http_b:
            for body in bodies[5:]:
                assert (await deliver(http_b, body)).status_code == 200
        # B's verifier records A's unsettled webhooks and its own in its own time: read
        # until every webhook not read on A has arrived, rather than up to a cursor taken
        # before they were all recorded.
        remaining = {webhook_account(x) for x in bodies} - {e.account.id for e in read}
        async with subscribed(b.grpc_target, after_cursor=cursor) as on_b:
            resumed: list[pb.AccountEvent] = []
            while not remaining <= {e.account.id for e in resumed}:
                resumed.append(await next_event(on_b, timeout=30))
    # Accounts are verified independently, so their order across accounts is not fixed:
    # what matters is that the two reads together hold every webhook exactly once.
    seen = [e.account.id for e in read] + [e.account.id for e in resumed]
    assert sorted(seen) == sorted(webhook_account(x) for x in bodies)
    cursors = [int(e.cursor) for e in resumed]
    assert cursors == sorted(set(cursors))
    assert cursors[0] > int(cursor)


async def _latest_cursor(serve: ServeProcess) -> str:
    async with subscribed(serve.grpc_target) as stream:
        item = await stream.read()
        assert isinstance(item, pb.StreamAccountEventsResponse)
    return item.bookmark.cursor if item.HasField("bookmark") else item.event.cursor


async def test_a_nats_restart_is_not_ready_then_5xx_then_recovers_by_itself(
    tmp_path: Path,
) -> None:
    """While nats-server is down: not ready and webhooks 5xx; after: ready and flowing."""
    server = NatsServer(tmp_path / "nats")
    (tmp_path / "nats").mkdir()
    server.start()
    try:
        async with (
            replicas(1, tmp_path, server.url, STACKONE_CONNECT_READINESS_INTERVAL="0.2") as (one,),
            subscribed(one.grpc_target) as stream,
            httpx.AsyncClient(base_url=one.gateway_url, timeout=10) as http,
            httpx.AsyncClient(base_url=one.admin_url, timeout=10) as admin,
        ):
            before = webhook()
            assert (await deliver(http, before)).status_code == 200
            assert (await next_event(stream)).account.id == webhook_account(before)

            server.stop()
            await _until(admin, "/readyz", 503)
            await _until_health(one, health_pb2.HealthCheckResponse.NOT_SERVING)
            during = webhook()
            refused = await deliver(http, during)
            assert refused.status_code >= 500, refused.text

            server.start()
            await _until(admin, "/readyz", 200)
            await _until_health(one, health_pb2.HealthCheckResponse.SERVING)
            after = webhook()
            assert (await deliver(http, after)).status_code == 200
            assert (await deliver(http, during)).status_code == 200  # StackOne's retry
            seen = [(await next_event(stream, timeout=15)).account.id for _ in range(2)]
    finally:
        server.stop()
    assert seen == [webhook_account(after), webhook_account(during)] or seen == [
        webhook_account(during),  # the refused attempt reached JetStream after all
        webhook_account(after),
    ]


async def _until(http: httpx.AsyncClient, path: str, status: int) -> None:
    """Returns once `path` answers `status` (20 s at most)."""

    async def answers() -> bool:
        return (await http.get(path)).status_code == status

    await eventually(answers, timeout=20)


async def _until_health(serve: ServeProcess, status: int) -> None:
    """Returns once the gRPC health service reports `status` for the whole server (20 s)."""
    async with grpc.aio.insecure_channel(serve.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        async def reports() -> bool:
            response = await health.Check(health_pb2.HealthCheckRequest())
            return int(response.status) == status

        await eventually(reports, timeout=20)


async def test_two_replicas_sweeping_at_once_record_each_change_once(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """Reconciliation on two replicas against one StackOne: one event per account change."""
    config = EmulatorConfig(api_key="replica-key", deliver_webhooks=False)
    async with listening(build_emulator_app(config), "127.0.0.1", 0) as stackone:
        upstream = {
            "STACKONE_CONNECT_API_KEY": "replica-key",
            "STACKONE_CONNECT_BASE_URL": stackone.base_url,
            "STACKONE_CONNECT_RECONCILE_INTERVAL": "0.05",
            "STACKONE_CONNECT_RECONCILE_GRACE": "0",
        }
        async with (
            replicas(2, tmp_path, nats_server.url, **upstream) as (a, b),
            httpx.AsyncClient(base_url=stackone.base_url) as emulator,
            httpx.AsyncClient(base_url=a.admin_url) as admin_a,
            httpx.AsyncClient(base_url=b.admin_url) as admin_b,
        ):
            async with subscribed(a.grpc_target) as live:
                spec = {"provider": "hibob", "origin_owner_id": "t-3", "origin_owner_name": "3"}
                ids = [
                    (await emulator.post("/emulator/accounts", json=spec)).json()["id"]
                    for _ in range(3)
                ]
                for _ in ids:  # every creation swept before anything changes
                    await next_event(live)
                await emulator.patch(f"/emulator/accounts/{ids[1]}", json={"status": "error"})
                await emulator.delete(f"/accounts/{ids[2]}", auth=("replica-key", ""))
                for _ in range(2):  # the update and the deletion
                    await next_event(live)
            await more_sweeps([admin_a, admin_b], 3)  # on both, after every change
            async with subscribed(a.grpc_target, from_earliest=Empty()) as stream:
                events = await events_until_caught_up(stream, await _latest_cursor(a))
    by_account = {i: [e.type for e in events if e.account.id == i] for i in ids}
    assert by_account == {
        ids[0]: ["account.created"],
        ids[1]: ["account.created", "account.updated"],
        ids[2]: ["account.created", "account.deleted"],
    }
    assert {e.source for e in events} == {pb.EVENT_SOURCE_RECONCILIATION}


async def test_nats_back_without_the_streams_is_recovered_from_by_itself(tmp_path: Path) -> None:
    """A nats-server on memory storage restarted, every stream and bucket gone with it:
    health is SERVING again and webhooks are accepted with no restart of the service,
    and the attached subscriber gets the next event at a cursor past every earlier one."""
    server = NatsServer(tmp_path / "nats")
    (tmp_path / "nats").mkdir()
    server.start()
    try:
        async with (
            replicas(
                1,
                tmp_path,
                server.url,
                STACKONE_CONNECT_READINESS_INTERVAL="0.2",
                STACKONE_CONNECT_JETSTREAM_STORAGE="memory",
            ) as (one,),
            subscribed(one.grpc_target) as stream,
            httpx.AsyncClient(base_url=one.gateway_url, timeout=10) as http,
        ):
            before = webhook()
            assert (await deliver(http, before)).status_code == 200
            first = await next_event(stream)
            server.stop()
            await _until_health(one, health_pb2.HealthCheckResponse.NOT_SERVING)
            server.start()
            await _until_health(one, health_pb2.HealthCheckResponse.SERVING)
            after = webhook()
            accepted = await deliver(http, after)
            assert accepted.status_code == 200, accepted.text
            event = await next_event(stream, timeout=15)
            # The streams created again are a new incarnation of the log (issue 32, item
            # 6): numbered on past every earlier event, under a tag of their own, so a
            # cursor of the lost streams cannot resume in them.
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async with subscribed(one.grpc_target, after_cursor=first.cursor) as stale:
                    await next_event(stale)
    finally:
        server.stop()
    assert event.account.id == webhook_account(after)
    assert position(event.cursor) > position(first.cursor)
    assert _tag(event.cursor) != _tag(first.cursor)
    assert refused.value.code() == grpc.StatusCode.OUT_OF_RANGE


def _tag(cursor: str) -> int:
    """The incarnation a public cursor names."""
    parsed = cursors.parse(cursor)
    assert parsed is not None
    return parsed.tag
