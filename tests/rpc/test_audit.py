"""The audit trail: exactly the mutating and denied calls, durable, fail-closed when asked."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest

from service.rpc.audit import AuditFile
from service.runtime import running
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.processes import serve_env, serve_process
from tests.harness.refusals import PREFIX, refusal
from tests.harness.support import WEBHOOK_SECRET, make_settings

pytestmark = pytest.mark.asyncio
ADMIN = "admin-token-0123456789abcdef"
READER = "reader-token-0123456789abcdef"
WRONG = "wrong-token-0123456789abcdef"
SESSION = pb.CreateSessionRequest(origin_owner_id="acme-1", origin_owner_name="Acme")


def write_clients(path: Path) -> Path:
    """A clients file with an admin (every scope) and a reader (accounts:read only)."""
    every_scope = ["sessions:create", "accounts:read", "accounts:write", "events:read"]
    entries = [
        {"name": "admin", "token": ADMIN, "scopes": every_scope},
        {"name": "reader", "token": READER, "scopes": ["accounts:read"]},
    ]
    path.write_bytes(orjson.dumps({"clients": entries}))
    return path


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata with a bearer token and a request id."""
    return (("authorization", f"Bearer {token}"), ("x-request-id", f"req-{token[:5]}"))


def records(path: Path) -> list[dict[str, Any]]:
    """The audit file's records."""
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def code_of(call: Any) -> grpc.StatusCode:
    """The status code a call ends with (OK when it succeeds)."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def stream_code(stub: pb_grpc.ConnectServiceAsyncStub, token: str) -> grpc.StatusCode:
    """The code a stream ends with when it is denied at once."""
    stream = stub.StreamAccountEvents(pb.StreamAccountEventsRequest(), metadata=bearer(token))
    try:
        await stream.read()
    except grpc.aio.AioRpcError as error:
        return error.code()
    stream.cancel()
    return grpc.StatusCode.OK


async def test_the_audit_file_holds_exactly_the_mutating_and_denied_calls(tmp_path: Path) -> None:
    """Sessions and deletions (any outcome) and denied calls are recorded, in order, with
    client, peer, owners, accounts, code, StackOne's answer and request id; reads are not;
    no token is."""
    audit = tmp_path / "audit.jsonl"
    settings = make_settings(
        tmp_path, clients_file=write_clients(tmp_path / "c.json"), audit_sink=str(audit)
    )
    async with (
        running(settings) as service,
        grpc.aio.insecure_channel(service.grpc_target) as channel,
    ):
        stub = pb_grpc.ConnectServiceStub(channel)
        session = await stub.CreateSession(SESSION, metadata=bearer(ADMIN))
        get = pb.GetAccountRequest(account_id="acc-missing")
        delete = pb.DeleteAccountRequest(account_id="acc-missing")
        codes = [
            await code_of(stub.ListAccounts(pb.ListAccountsRequest(), metadata=bearer(READER))),
            await code_of(stub.GetAccount(get, metadata=bearer(READER))),  # NOT_FOUND: a read
            await code_of(stub.DeleteAccount(delete, metadata=bearer(ADMIN))),
            await code_of(stub.DeleteAccount(delete, metadata=bearer(READER))),
            await code_of(stub.CreateSession(SESSION, metadata=bearer(WRONG))),
            await code_of(stub.CreateSession(SESSION)),
            await stream_code(stub, READER),
        ]
    assert codes == [
        grpc.StatusCode.OK,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    ]
    written = records(audit)
    assert [(r["method"], r["client"], r["code"]) for r in written] == [
        ("CreateSession", "admin", "OK"),
        ("DeleteAccount", "admin", "NOT_FOUND"),
        ("DeleteAccount", "reader", "PERMISSION_DENIED"),
        ("CreateSession", None, "UNAUTHENTICATED"),
        ("CreateSession", None, "UNAUTHENTICATED"),
        ("StreamAccountEvents", "reader", "PERMISSION_DENIED"),
    ]
    first = written[0]
    assert first["owner_ids"] == ["acme-1"]
    assert first["request_id"] == "req-admin"
    assert first["peer"].startswith(("ipv4:127.0.0.1:", "ipv6:"))
    assert first["stage"] == "ended"
    assert written[1]["account_ids"] == ["acc-missing"]
    # What StackOne was asked and answered: a session made, a deletion of a missing
    # account, and nothing for a denied call.
    assert [r["upstream"] for r in written[:3]] == [
        {"asked": True, "answers": ["201"]},
        {"asked": True, "answers": ["404"]},
        {"asked": False, "answers": []},
    ]
    raw = audit.read_bytes()
    for secret in (ADMIN, READER, WRONG, session.token, WEBHOOK_SECRET):
        assert secret.encode() not in raw


async def test_records_survive_sigkill_once_the_call_has_answered(tmp_path: Path) -> None:
    """Every call answered before `serve` is killed (SIGKILL) has its record on disk."""
    audit = tmp_path / "audit.jsonl"
    env = serve_env(tmp_path, WEBHOOK_SECRET, STACKONE_CONNECT_AUDIT_SINK=str(audit))
    async with serve_process(env) as process:
        async with grpc.aio.insecure_channel(process.grpc_target) as channel:
            stub = pb_grpc.ConnectServiceStub(channel)
            answered = await asyncio.gather(*(stub.CreateSession(SESSION) for _ in range(20)))
        assert await process.stop(signal.SIGKILL) == -signal.SIGKILL
    assert len(answered) == 20
    assert [(r["method"], r["code"]) for r in records(audit)] == [("CreateSession", "OK")] * 20


async def test_fail_closed_refuses_a_deletion_it_cannot_record_without_calling_stackone(
    tmp_path: Path,
) -> None:
    """With an audit sink that cannot be written (/dev/full) and fail-closed on,
    DeleteAccount is UNAVAILABLE and StackOne is never called."""
    settings = make_settings(tmp_path, audit_sink="/dev/full", audit_fail_closed=True)
    async with (
        running(settings) as service,
        grpc.aio.insecure_channel(service.grpc_target) as channel,
    ):
        stub = pb_grpc.ConnectServiceStub(channel)
        assert service.emulator is not None
        async with httpx.AsyncClient(base_url=service.emulator.base_url) as emulator:
            before = (await emulator.get("/emulator/stats")).json()["calls"]
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.DeleteAccount(pb.DeleteAccountRequest(account_id="acc-1"))
            after = (await emulator.get("/emulator/stats")).json()["calls"]
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "audit record" in (refused.value.details() or "")
    assert after == before


async def test_fail_open_goes_on_when_the_record_cannot_be_written(tmp_path: Path) -> None:
    """Without fail-closed, an unwritable sink loses the record (counted) but not the call."""
    settings = make_settings(tmp_path, audit_sink="/dev/full")
    async with (
        running(settings) as service,
        grpc.aio.insecure_channel(service.grpc_target) as channel,
    ):
        stub = pb_grpc.ConnectServiceStub(channel)
        session = await stub.CreateSession(SESSION)
        async with httpx.AsyncClient(base_url=service.admin.base_url) as admin:
            exposition = (await admin.get("/metrics")).text
    assert session.token
    assert 'stackone_connect_audit_records_total{outcome="failed"} 1.0' in exposition


async def test_fail_closed_writes_a_start_record_before_the_call(tmp_path: Path) -> None:
    """Fail-closed, a mutating call's start is recorded before it runs, then its outcome."""
    audit = tmp_path / "audit.jsonl"
    settings = make_settings(tmp_path, audit_sink=str(audit), audit_fail_closed=True)
    async with (
        running(settings) as service,
        grpc.aio.insecure_channel(service.grpc_target) as channel,
    ):
        await pb_grpc.ConnectServiceStub(channel).CreateSession(SESSION)
    assert [(r["stage"], r["code"], r["upstream"]) for r in records(audit)] == [
        ("started", None, None),
        ("ended", "OK", {"asked": True, "answers": ["201"]}),
    ]


async def test_the_log_sink_writes_records_as_log_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """AUDIT_SINK=log: each record is a log line carrying it under `audit`."""
    caplog.set_level(logging.INFO, logger="service.rpc.audit")
    settings = make_settings(tmp_path, audit_sink="log")
    async with (
        running(settings) as service,
        grpc.aio.insecure_channel(service.grpc_target) as channel,
    ):
        await pb_grpc.ConnectServiceStub(channel).CreateSession(SESSION)
    lines = [record.__dict__["audit"] for record in caplog.records if hasattr(record, "audit")]
    assert [(line["method"], line["code"]) for line in lines] == [("CreateSession", "OK")]


async def test_concurrent_records_share_one_write_and_fsync(tmp_path: Path) -> None:
    """Records written together are group-committed: fewer fsyncs than records, every
    record a whole line."""
    sink = AuditFile(tmp_path / "audit.jsonl")
    try:
        await asyncio.gather(*(sink.write({"n": n}) for n in range(200)))
    finally:
        await sink.close()
    assert sorted(r["n"] for r in records(tmp_path / "audit.jsonl")) == list(range(200))
    assert sink.commits < 20


async def test_a_rotated_audit_file_is_created_again(tmp_path: Path) -> None:
    """A file moved away (log rotation) is created again at its path for the next records."""
    path = tmp_path / "audit.jsonl"
    sink = AuditFile(path)
    try:
        await sink.write({"n": 1})
        path.rename(tmp_path / "audit.jsonl.1")
        await sink.write({"n": 2})
    finally:
        await sink.close()
    assert records(tmp_path / "audit.jsonl.1") == [{"n": 1}]
    assert records(path) == [{"n": 2}]


async def test_an_audit_sink_in_no_folder_stops_start_up(tmp_path: Path) -> None:
    """An audit file whose folder does not exist is a one-line start-up error naming it."""
    line = refusal(tmp_path, AUDIT_SINK=str(tmp_path / "missing" / "audit.jsonl"))
    assert line.startswith(PREFIX + "AUDIT_SINK: ")


async def test_fail_closed_without_a_file_stops_start_up(tmp_path: Path) -> None:
    """Fail-closed needs a file sink: with the log it is a one-line start-up error."""
    line = refusal(tmp_path, AUDIT_SINK="log", AUDIT_FAIL_CLOSED="true")
    assert "AUDIT_FAIL_CLOSED needs STACKONE_CONNECT_AUDIT_SINK to name a file" in line


async def test_a_deletion_records_the_owner_of_the_deleted_account(tmp_path: Path) -> None:
    """DeleteAccount names only the account; its record also names the account's owner."""
    audit = tmp_path / "audit.jsonl"
    settings = make_settings(tmp_path, audit_sink=str(audit))
    async with (
        running(settings) as service,
        grpc.aio.insecure_channel(service.grpc_target) as channel,
    ):
        assert service.emulator is not None
        stub = pb_grpc.ConnectServiceStub(channel)
        session = await stub.CreateSession(SESSION)
        async with httpx.AsyncClient(base_url=service.emulator.base_url) as emulator:
            linked = await emulator.post("/emulator/link", json={"token": session.token})
        account_id = linked.json()["id"]
        await stub.DeleteAccount(pb.DeleteAccountRequest(account_id=account_id))
    deletion = records(audit)[-1]
    assert (deletion["method"], deletion["code"]) == ("DeleteAccount", "OK")
    assert deletion["account_ids"] == [account_id]
    assert deletion["owner_ids"] == ["acme-1"]
