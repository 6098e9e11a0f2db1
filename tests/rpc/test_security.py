"""Who gets in: TLS, mutual TLS, bearer tokens with scopes, rotation, insecure binds."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.runtime import Runtime, running
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.certificates import Certificates, make_certificates
from tests.harness.support import eventually, make_settings
from tests.harness.tls_services import ADMIN, READER, tls_service, write_clients

pytestmark = pytest.mark.asyncio
SESSION = pb.CreateSessionRequest(origin_owner_id="t-1", origin_owner_name="Acme")


def bearer(token: str) -> tuple[tuple[str, str]]:
    """Call metadata with a bearer token."""
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    """A CA with server and client certificates, made for this test."""
    return make_certificates(tmp_path)


def tls_channel(
    service: Runtime, certificates: Certificates, *, with_client_cert: bool = False
) -> grpc.aio.Channel:
    """A channel that trusts the test CA, optionally presenting the client certificate."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=certificates.ca.read_bytes(),
        private_key=certificates.client_key.read_bytes() if with_client_cert else None,
        certificate_chain=certificates.client_cert.read_bytes() if with_client_cert else None,
    )
    return grpc.aio.secure_channel(service.grpc_target, credentials)


async def code_of(call: object) -> grpc.StatusCode:
    """The status code a call ends with (OK when it succeeds)."""
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_tokens_and_scopes_over_tls(tmp_path: Path, certificates: Certificates) -> None:
    """Over TLS: no or unknown token → UNAUTHENTICATED, missing scope → PERMISSION_DENIED."""
    async with (
        tls_service(tmp_path, certificates) as service,
        tls_channel(service, certificates) as channel,
    ):
        stub: pb_grpc.ConnectServiceAsyncStub = pb_grpc.ConnectServiceStub(channel)
        assert (
            await code_of(stub.CreateSession(SESSION, metadata=bearer(ADMIN))) == grpc.StatusCode.OK
        )
        assert await code_of(stub.CreateSession(SESSION)) == grpc.StatusCode.UNAUTHENTICATED
        assert (
            await code_of(stub.CreateSession(SESSION, metadata=bearer("wrong-token-0123456789")))
            == grpc.StatusCode.UNAUTHENTICATED
        )
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.CreateSession(SESSION, metadata=bearer(READER))
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "sessions:create" in (denied.value.details() or "")
        stream = stub.StreamAccountEvents(pb.StreamAccountEventsRequest(), metadata=bearer(READER))
        with pytest.raises(grpc.aio.AioRpcError) as stream_denied:
            await stream.read()
        assert stream_denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, "probes need no token"


async def test_denied_calls_are_counted_with_their_code(
    tmp_path: Path, certificates: Certificates
) -> None:
    """Calls that authentication ends appear in stackone_connect_rpcs_total with their code."""
    async with (
        tls_service(tmp_path, certificates) as service,
        tls_channel(service, certificates) as channel,
    ):
        stub: pb_grpc.ConnectServiceAsyncStub = pb_grpc.ConnectServiceStub(channel)
        assert await code_of(stub.CreateSession(SESSION)) == grpc.StatusCode.UNAUTHENTICATED
        assert (
            await code_of(stub.CreateSession(SESSION, metadata=bearer(READER)))
            == grpc.StatusCode.PERMISSION_DENIED
        )
        stream = stub.StreamAccountEvents(pb.StreamAccountEventsRequest(), metadata=bearer(READER))
        assert await code_of(stream.read()) == grpc.StatusCode.PERMISSION_DENIED
        async with httpx.AsyncClient(base_url=service.admin.base_url) as http:
            metrics = (await http.get("/metrics")).text
    for line in (
        'stackone_connect_rpcs_total{code="UNAUTHENTICATED",method="CreateSession"} 1.0',
        'stackone_connect_rpcs_total{code="PERMISSION_DENIED",method="CreateSession"} 1.0',
        'stackone_connect_rpcs_total{code="PERMISSION_DENIED",method="StreamAccountEvents"} 1.0',
    ):
        assert line in metrics


async def test_a_plaintext_client_cannot_talk_to_a_tls_server(
    tmp_path: Path, certificates: Certificates
) -> None:
    """Without TLS the client never reaches the service."""
    async with (
        tls_service(tmp_path, certificates) as service,
        grpc.aio.insecure_channel(service.grpc_target) as channel,
    ):
        stub: pb_grpc.ConnectServiceAsyncStub = pb_grpc.ConnectServiceStub(channel)
        code = await code_of(stub.CreateSession(SESSION, metadata=bearer(ADMIN), timeout=5))
    assert code == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_requires_a_client_certificate(
    tmp_path: Path, certificates: Certificates
) -> None:
    """With a client CA configured, only clients presenting a certificate it signed get in."""
    async with tls_service(tmp_path, certificates, mutual=True) as service:
        async with tls_channel(service, certificates) as anonymous:
            stub: pb_grpc.ConnectServiceAsyncStub = pb_grpc.ConnectServiceStub(anonymous)
            code = await code_of(stub.CreateSession(SESSION, metadata=bearer(ADMIN), timeout=5))
            assert code == grpc.StatusCode.UNAVAILABLE
        async with tls_channel(service, certificates, with_client_cert=True) as identified:
            stub = pb_grpc.ConnectServiceStub(identified)
            assert (
                await code_of(stub.CreateSession(SESSION, metadata=bearer(ADMIN)))
                == grpc.StatusCode.OK
            )


async def test_tokens_rotate_without_a_restart(tmp_path: Path) -> None:
    """Editing the clients file swaps tokens on the running server, even when the new file
    keeps the old one's size and modification time."""
    clients = write_clients(
        tmp_path / "clients.json", ("app", "old-token-0123456789", ["sessions:create"])
    )
    async with (
        running(make_settings(tmp_path, clients_file=clients)) as service,
        grpc.aio.insecure_channel(service.grpc_target) as channel,
    ):
        stub: pb_grpc.ConnectServiceAsyncStub = pb_grpc.ConnectServiceStub(channel)
        assert (
            await code_of(stub.CreateSession(SESSION, metadata=bearer("old-token-0123456789")))
            == grpc.StatusCode.OK
        )
        before = clients.stat()
        write_clients(clients, ("app", "new-token-0123456789", ["sessions:create"]))
        os.utime(clients, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert clients.stat().st_size == before.st_size

        async def new_token_works() -> bool:
            call = stub.CreateSession(SESSION, metadata=bearer("new-token-0123456789"))
            return await code_of(call) == grpc.StatusCode.OK

        await eventually(new_token_works)  # the file is checked at most once a second
        assert (
            await code_of(stub.CreateSession(SESSION, metadata=bearer("old-token-0123456789")))
            == grpc.StatusCode.UNAUTHENTICATED
        )


async def test_tokens_never_reach_the_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither accepted nor rejected tokens appear in any log record."""
    caplog.set_level(logging.DEBUG)
    clients = write_clients(tmp_path / "clients.json", ("app", ADMIN, ["sessions:create"]))
    async with (
        running(make_settings(tmp_path, clients_file=clients)) as service,
        grpc.aio.insecure_channel(service.grpc_target) as channel,
    ):
        stub: pb_grpc.ConnectServiceAsyncStub = pb_grpc.ConnectServiceStub(channel)
        await code_of(stub.CreateSession(SESSION, metadata=bearer(ADMIN)))
        await code_of(stub.CreateSession(SESSION, metadata=bearer("leaked-token-0123456789")))
    assert caplog.records
    for text in (ADMIN, "leaked-token-0123456789"):
        assert text not in caplog.text


async def test_serve_explains_the_refusal_and_exits_2() -> None:
    """The console script says why it will not start, and exits non-zero."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.cli", "serve", "--grpc-address", "0.0.0.0:0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(20):
        _, err = await process.communicate()
    assert process.returncode == 2
    assert err.decode().strip() == (
        "stackone-connect: invalid configuration: refusing to serve gRPC on 0.0.0.0:0 without "
        "client authentication: anyone who can reach it could create sessions and read "
        "accounts. Set STACKONE_CONNECT_CLIENTS_FILE (bearer tokens) and/or "
        "STACKONE_CONNECT_TLS_CLIENT_CA_FILE (mutual TLS), or STACKONE_CONNECT_ALLOW_INSECURE="
        "true if a proxy in front authenticates callers"
    ), "one line naming the settings"
