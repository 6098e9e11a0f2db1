"""Health declared once: gRPC health and `/readyz` read the same named checks, on a real
`serve` process whose NATS server is stopped and started again."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.rpc.server import REGISTRY_HEALTH, SERVICE_NAME
from service.runtime import EVENT_LOG_WRITABLE, REGISTRY_COMPLETE
from tests.harness.nats import NatsServer
from tests.harness.processes import ServeProcess, serve_env, serve_process
from tests.harness.support import WEBHOOK_SECRET, LogBackend, eventually

pytestmark = pytest.mark.asyncio

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def grpc_statuses(serve: ServeProcess) -> dict[str, int]:
    """What gRPC health reports for the server, the service and the registry."""
    async with grpc.aio.insecure_channel(serve.grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return {
            name: int((await stub.Check(health_pb2.HealthCheckRequest(service=name))).status)
            for name in ("", SERVICE_NAME, REGISTRY_HEALTH)
        }


async def readiness(admin: httpx.AsyncClient, status: int) -> dict[str, Any]:
    """`/readyz`'s body once it answers `status` (20 s at most)."""
    body: dict[str, Any] = {}

    async def answers() -> bool:
        nonlocal body
        response = await admin.get("/readyz")
        body = response.json()
        return response.status_code == status

    await eventually(answers, timeout=20)
    return body


async def test_both_surfaces_follow_one_named_check_through_a_nats_outage(
    tmp_path: Path,
) -> None:
    """With nats-server stopped, /readyz is 503 naming the failing check and gRPC health
    is already NOT_SERVING for the server and the service; with it back, both are ready
    again; the registry's entry follows the registry check, listed by /readyz too."""
    (tmp_path / "nats").mkdir()
    nats_server = NatsServer(tmp_path / "nats")
    nats_server.start()
    backend = LogBackend(nats_server.url, stream=f"H{uuid.uuid4().hex}")
    env = serve_env(
        tmp_path, WEBHOOK_SECRET, **backend.env(), STACKONE_CONNECT_READINESS_INTERVAL="0.1"
    )
    try:
        async with (
            serve_process(env) as serve,
            httpx.AsyncClient(base_url=serve.admin_url, timeout=10) as admin,
        ):
            ready = await readiness(admin, 200)
            serving = await grpc_statuses(serve)

            nats_server.stop()
            down = await readiness(admin, 503)
            not_serving = await grpc_statuses(serve)  # no waiting: it changed first

            nats_server.start()
            back = await readiness(admin, 200)
            serving_again = await grpc_statuses(serve)
    finally:
        nats_server.stop()

    # Reconciliation is off: the registry is never complete, and both surfaces say so.
    registry_check = {"passing": False, "readiness": False}
    assert ready["checks"][EVENT_LOG_WRITABLE] == {"passing": True, "readiness": True}
    assert ready["checks"][REGISTRY_COMPLETE].items() >= registry_check.items()
    assert serving == {"": SERVING, SERVICE_NAME: SERVING, REGISTRY_HEALTH: NOT_SERVING}

    failing = down["checks"][EVENT_LOG_WRITABLE]
    assert failing["passing"] is False
    assert "NATS" in failing["detail"]
    assert down["error"] == f"{EVENT_LOG_WRITABLE}: {failing['detail']}"
    assert not_serving == {"": NOT_SERVING, SERVICE_NAME: NOT_SERVING, REGISTRY_HEALTH: NOT_SERVING}

    assert back["checks"][EVENT_LOG_WRITABLE] == {"passing": True, "readiness": True}
    assert serving_again == serving
