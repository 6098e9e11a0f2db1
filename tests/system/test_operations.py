"""Operating the service: health, reflection, metrics, settings and graceful shutdown."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import grpc
import httpx
import orjson
import pytest
from google.protobuf.empty_pb2 import Empty
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.app import WEBHOOK_PATH
from service.rpc.server import SERVICE_NAME
from service.runtime import Runtime, running
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.processes import serve_env, serve_process
from tests.harness.streams import StreamCall, attached, next_event
from tests.harness.support import WEBHOOK_SECRET, eventually, make_settings, metric, signed_headers

pytestmark = pytest.mark.asyncio


async def health_of(channel: grpc.aio.Channel, service: str = "") -> int:
    """The serving status the health service reports."""
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(response.status)


async def test_health_reports_serving_and_follows_event_log_writability(tmp_path: Path) -> None:
    """SERVING for the server and the service; NOT_SERVING once the log cannot be written."""
    async with (
        running(make_settings(tmp_path, readiness_interval=0.05)) as service,
        grpc.aio.insecure_channel(service.grpc_target) as channel,
        httpx.AsyncClient(base_url=service.admin.base_url) as admin,
    ):
        assert await health_of(channel) == health_pb2.HealthCheckResponse.SERVING
        assert await health_of(channel, SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING
        await service.event_log.close()
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        async with asyncio.timeout(5):
            async for update in watch:
                if update.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
        assert (await admin.get("/readyz")).status_code == 503


async def test_reflection_lists_the_service(service: Runtime) -> None:
    """grpcurl-style reflection lists ConnectService, health and reflection itself."""
    async with grpc.aio.insecure_channel(service.grpc_target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = [response async for response in stub.ServerReflectionInfo(iter([request]))]
    names = {s.name for s in responses[0].list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names


async def test_metrics_move_with_real_traffic(
    service: Runtime, stub: pb_grpc.ConnectServiceAsyncStub
) -> None:
    """RPC, webhook, upstream and subscriber metrics count what actually happened."""
    await stub.CreateSession(pb.CreateSessionRequest(origin_owner_id="o", origin_owner_name="O"))
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.GetAccount(pb.GetAccountRequest(account_id="missing"))
    stream = stub.StreamAccountEvents(pb.StreamAccountEventsRequest())
    await attached(stream)
    body = orjson.dumps({"event": "account.deleted", "account_id": "a1", "provider": "hibob"})
    # Two refusals, each for one reason only: the content type, then the signature.
    not_json = {**signed_headers(body), "content-type": "text/plain"}
    badly_signed = {**signed_headers(body), "x-stackone-signature": "x"}
    async with (
        httpx.AsyncClient(base_url=service.gateway.base_url) as http,
        httpx.AsyncClient(base_url=service.admin.base_url) as admin,
    ):
        refused = [
            (await http.post(WEBHOOK_PATH, content=body, headers=headers)).status_code
            for headers in (not_json, badly_signed)
        ]
        await http.post(WEBHOOK_PATH, content=body, headers=signed_headers(body))
        await next_event(stream)  # recorded by the door: a deletion needs no look-up
        # The append is counted just after the event reaches subscribers.
        await eventually(lambda: _counted(admin, "stackone_connect_event_log_append_seconds_count"))
        metrics = (await admin.get("/metrics")).text
    stream.cancel()
    assert refused == [415, 401]
    expected = [
        'stackone_connect_rpcs_total{code="OK",method="CreateSession"} 1.0',
        'stackone_connect_rpcs_total{code="NOT_FOUND",method="GetAccount"} 1.0',
        'stackone_connect_webhooks_total{outcome="accepted",type="account.deleted"} 1.0',
        'stackone_connect_webhooks_total{outcome="unsupported_media_type",type="unknown"} 1.0',
        'stackone_connect_webhooks_total{outcome="unauthorized",type="unknown"} 1.0',
        'stackone_connect_upstream_calls_total{endpoint="POST /connect_sessions",status="ok"} 1.0',
        'stackone_connect_upstream_calls_total{endpoint="GET /accounts/{id}",status="404"} 1.0',
        "stackone_connect_stream_subscribers 1.0",
        "stackone_connect_event_log_latest_cursor 1.0",
        "stackone_connect_event_log_append_seconds_count 1.0",
        'stackone_connect_verifications_total{outcome="not_needed"} 1.0',
    ]
    for line in expected:
        assert line in metrics


async def _counted(http: httpx.AsyncClient, sample: str) -> bool:
    return await metric(http, sample) > 0


@pytest.mark.slow
async def test_sigterm_under_load_loses_nothing_and_exits_cleanly(tmp_path: Path) -> None:
    """SIGTERM while webhooks flow: NOT_SERVING, streams told to reconnect, exit 0 in grace,
    and every acknowledged webhook is in the log after restart."""
    env = serve_env(tmp_path, WEBHOOK_SECRET, STACKONE_CONNECT_SHUTDOWN_GRACE="3")
    acknowledged: list[str] = []
    async with serve_process(env) as serve, grpc.aio.insecure_channel(serve.grpc_target) as ch:
        stub: pb_grpc.ConnectServiceAsyncStub = pb_grpc.ConnectServiceStub(ch)
        stream = stub.StreamAccountEvents(pb.StreamAccountEventsRequest())
        await attached(stream)
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest())
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        async with httpx.AsyncClient(base_url=serve.gateway_url) as http:

            async def sender(worker: int) -> None:
                for n in range(10_000):
                    body = orjson.dumps(
                        {"event": "account.deleted", "account_id": f"w{worker}-{n}"}
                    )
                    try:
                        response = await http.post(
                            "/webhooks/stackone", content=body, headers=signed_headers(body)
                        )
                    except httpx.TransportError:
                        return
                    if response.status_code == 200:
                        acknowledged.append(response.json()["event_id"])

            senders = [asyncio.create_task(sender(worker)) for worker in range(8)]
            await eventually(lambda: len(acknowledged) >= 50)  # under load
            started = time.monotonic()
            serve.process.send_signal(signal.SIGTERM)
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await _read_to_the_end(stream)
            code = await serve.stop(timeout=10)
            assert code == 0, [line for line in serve.log_lines if line.get("level") == "ERROR"]
            elapsed = time.monotonic() - started
            await asyncio.gather(*senders)
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "reconnect with after_cursor=" in (ended.value.details() or "")
    assert elapsed < 3 + 2
    assert acknowledged
    async with serve_process(env) as serve, grpc.aio.insecure_channel(serve.grpc_target) as ch:
        stub = pb_grpc.ConnectServiceStub(ch)
        replay = stub.StreamAccountEvents(pb.StreamAccountEventsRequest(from_earliest=Empty()))
        recorded: set[str] = set()
        async with asyncio.timeout(20):
            while not set(acknowledged) <= recorded:
                item = await replay.read()
                assert isinstance(item, pb.StreamAccountEventsResponse)
                if item.HasField("event"):
                    recorded.add(item.event.event_id)
        replay.cancel()


async def _read_to_the_end(stream: StreamCall) -> None:
    while isinstance(await stream.read(), pb.StreamAccountEventsResponse):
        pass
