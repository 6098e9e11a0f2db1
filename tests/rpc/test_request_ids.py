"""CreateSession and DeleteAccount a caller can retry (AIP-155 `request_id`), on a real
service and its emulator over HTTP, SQLite and JetStream: a retry reaches StackOne once,
also when it lands on another replica; the same id with another request, or an id that
is not a UUID, is INVALID_ARGUMENT; the audit trail records the id."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest

from service.emulator import EMULATOR_STATE, EmulatorConfig, build_emulator_app
from service.emulator.state import EmulatorState
from service.runtime import Runtime, running
from service.web import listening
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from stackone_connect_client import Client
from tests.harness.nats import NatsServer
from tests.harness.replicas import replicas
from tests.harness.support import LogBackend, eventually, make_settings

pytestmark = pytest.mark.asyncio
BACKENDS = ["sqlite", "jetstream"]
OWNER: dict[str, Any] = {"origin_owner_id": "acme-1", "origin_owner_name": "Acme"}
SLOW = 1.5  # seconds StackOne takes to answer, past the first attempt's deadline
FIRST_DEADLINE = 0.4


@asynccontextmanager
async def serving(tmp_path: Path, backend: LogBackend) -> AsyncIterator[Runtime]:
    """The service with an audit file, on the test's backend."""
    settings = make_settings(
        tmp_path, **backend.settings(), audit_sink=str(tmp_path / "audit.jsonl")
    )
    async with running(settings) as runtime:
        yield runtime


def emulator_state(service: Runtime) -> EmulatorState:
    """The bundled emulator's state: the sessions StackOne minted."""
    assert service.emulator is not None
    return service.emulator.runner.app[EMULATOR_STATE]


async def make_slow(emulator_url: str, latency: float) -> None:
    """Sets how long the emulator's StackOne endpoints take to answer."""
    async with httpx.AsyncClient(base_url=emulator_url) as http:
        (await http.put("/emulator/behaviour", json={"latency": latency})).raise_for_status()


async def test_a_create_session_retried_after_its_deadline_reaches_stackone_once(
    tmp_path: Path, backend: LogBackend
) -> None:
    """The first call gives up while StackOne is slow; its retries (one while it is still
    in flight, one after) answer the same session, and StackOne minted one."""
    async with serving(tmp_path, backend) as service:
        assert service.emulator is not None
        await make_slow(service.emulator.base_url, SLOW)
        request = pb.CreateSessionRequest(**OWNER, request_id=str(uuid.uuid4()))
        async with grpc.aio.insecure_channel(service.grpc_target) as channel:
            stub = pb_grpc.ConnectServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as gave_up:
                await stub.CreateSession(request, timeout=FIRST_DEADLINE)
            assert gave_up.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            retried = await stub.CreateSession(request, timeout=10)
            await make_slow(service.emulator.base_url, 0)
            again = await stub.CreateSession(request, timeout=10)
        assert retried.id
        assert (retried.id, retried.token) == (again.id, again.token)
        assert len(emulator_state(service).sessions) == 1
        audit = [
            orjson.loads(line) for line in (tmp_path / "audit.jsonl").read_bytes().splitlines()
        ]
        assert {line["request_uuid"] for line in audit} == {request.request_id}


async def test_a_request_id_is_a_uuid_used_for_one_request(
    tmp_path: Path, backend: LogBackend
) -> None:
    """Another request under a used id, or an id that is not a UUID, is INVALID_ARGUMENT
    naming request_id, and StackOne is not asked; a retried DeleteAccount answers the
    deleted account again instead of NOT_FOUND."""
    async with (
        serving(tmp_path, backend) as service,
        grpc.aio.insecure_channel(service.grpc_target) as channel,
    ):
        stub = pb_grpc.ConnectServiceStub(channel)
        request_id = str(uuid.uuid4())
        first = await stub.CreateSession(pb.CreateSessionRequest(**OWNER, request_id=request_id))
        other = pb.CreateSessionRequest(**OWNER, label="other", request_id=request_id)
        for bad in [other, pb.CreateSessionRequest(**OWNER, request_id="retry-1")]:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.CreateSession(bad)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "request_id" in (refused.value.details() or "")
        assert [s.id for s in emulator_state(service).sessions.values()] == [int(first.id)]

        assert service.emulator is not None
        async with httpx.AsyncClient(base_url=service.emulator.base_url) as http:
            created = await http.post("/emulator/accounts", json={"provider": "hibob", **OWNER})
        account_id = created.json()["id"]
        delete = pb.DeleteAccountRequest(account_id=account_id, request_id=str(uuid.uuid4()))
        deleted = await stub.DeleteAccount(delete)
        assert (await stub.DeleteAccount(delete)).id == deleted.id == account_id


@pytest.mark.slow
async def test_a_retry_on_another_replica_reaches_stackone_once(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """Two replicas on one stream and one StackOne: the Python client's call to replica A
    gives up while StackOne is slow; its retry with the same request_id on replica B
    waits for A's call and answers the same session. StackOne minted one."""
    config = EmulatorConfig(api_key="replica-key", deliver_webhooks=False, latency=SLOW)
    async with listening(build_emulator_app(config), "127.0.0.1", 0) as stackone:
        upstream = {
            "STACKONE_CONNECT_API_KEY": "replica-key",
            "STACKONE_CONNECT_BASE_URL": stackone.base_url,
        }
        async with replicas(2, tmp_path, nats_server.url, **upstream) as (a, b):
            request_id = str(uuid.uuid4())
            async with Client.connect(a.grpc_target) as on_a, Client.connect(b.grpc_target) as on_b:
                with pytest.raises(grpc.aio.AioRpcError) as gave_up:
                    # one attempt: the client's own retries would go to A again
                    await on_a.stub.CreateSession(
                        pb.CreateSessionRequest(**OWNER, request_id=request_id),
                        timeout=FIRST_DEADLINE,
                    )
                assert gave_up.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                on_b_answer = await on_b.create_session(**OWNER, request_id=request_id)
                sessions = stackone.runner.app[EMULATOR_STATE].sessions
                await eventually(lambda: len(sessions) >= 1, timeout=10)
                again = await on_a.create_session(**OWNER, request_id=request_id)
        assert on_b_answer.id == again.id
        assert len(sessions) == 1


async def test_the_python_client_retries_a_deadline_under_one_request_id(
    tmp_path: Path, backend: LogBackend
) -> None:
    """Client.create_session with a deadline shorter than StackOne's answer: its retries
    carry the same request_id and end with the one session StackOne minted."""
    async with serving(tmp_path, backend) as service:
        assert service.emulator is not None
        await make_slow(service.emulator.base_url, SLOW)
        async with Client.connect(service.grpc_target) as client:
            session = await client.create_session(**OWNER, timeout=1.0)
        assert [s.id for s in emulator_state(service).sessions.values()] == [int(session.id)]
        audit = [
            orjson.loads(line) for line in (tmp_path / "audit.jsonl").read_bytes().splitlines()
        ]
        assert len(audit) >= 2  # the call that gave up, and its retry
        assert len({line["request_uuid"] for line in audit}) == 1


@pytest.mark.slow
async def test_request_ids_work_again_once_nats_lost_their_bucket(tmp_path: Path) -> None:
    """A nats-server on memory storage restarted, the requests bucket gone with it: a
    CreateSession with a request_id is answered again (the bucket made anew), once."""
    (tmp_path / "nats").mkdir()
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        backend = LogBackend(server.url, stream=f"Q{uuid.uuid4().hex}")
        settings = make_settings(
            tmp_path, **backend.settings(), jetstream_storage="memory", readiness_interval=0.2
        )
        async with (
            running(settings) as service,
            grpc.aio.insecure_channel(service.grpc_target) as channel,
        ):
            stub = pb_grpc.ConnectServiceStub(channel)
            before = pb.CreateSessionRequest(**OWNER, request_id=str(uuid.uuid4()))
            await stub.CreateSession(before, timeout=10)
            server.restart()
            after = pb.CreateSessionRequest(**OWNER, request_id=str(uuid.uuid4()))
            answers: list[pb.Session] = []

            async def answered() -> bool:
                try:
                    answers.append(await stub.CreateSession(after, timeout=5))
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.UNAVAILABLE:  # only NATS away may fail
                        raise
                    return False
                return True

            await eventually(answered, timeout=30)
            again = await stub.CreateSession(after, timeout=10)
            assert again.id == answers[0].id
            assert len(emulator_state(service).sessions) == 2
    finally:
        server.stop()
