"""The console script against a real running service: people's tables, scripts' JSON."""

from __future__ import annotations

import asyncio
import socket
import sys
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest

from service.runtime import Runtime, running
from tests.support import make_settings, signed_headers

pytestmark = pytest.mark.asyncio
CLI = [sys.executable, "-m", "service.cli"]


async def cli(target: str, *args: str, timeout: float = 20) -> tuple[int, str, str]:
    """Runs `stackone-connect ARGS --target TARGET`; returns exit code, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        *CLI, *args, "--target", target,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(timeout):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def link(service: Runtime, token: str) -> str:
    """Completes a session in the emulator; returns the account id."""
    assert service.emulator is not None
    async with httpx.AsyncClient(base_url=service.emulator.base_url) as http:
        response = await http.post("/emulator/link", json={"token": token})
    account_id: str = response.json()["id"]
    return account_id


async def test_sessions_and_accounts_commands(service: Runtime) -> None:
    """sessions create, accounts list/get/delete: tables for people, JSON for scripts."""
    target = service.grpc_target
    code, out, _ = await cli(
        target, "sessions", "create", "--owner-id", "t-1", "--owner-name", "Acme", "--json"
    )
    assert code == 0
    session = orjson.loads(out)
    assert session["token"] in session["auth_link_url"]
    account_id = await link(service, session["token"])

    code, out, _ = await cli(target, "accounts", "list")
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:3] == ["ID", "PROVIDER", "OWNER"]
    assert row.split()[:3] == [account_id, "bamboohr", "t-1"]

    code, out, _ = await cli(target, "accounts", "get", account_id)
    assert code == 0
    assert "raw_status         active" in out

    code, out, _ = await cli(target, "accounts", "delete", account_id, "--json")
    assert code == 0
    assert orjson.loads(out)["raw_status"] == "inactive"


async def test_errors_are_one_line_with_a_non_zero_exit(service: Runtime) -> None:
    """An unknown account and an invalid request each give one clear line and exit 1."""
    code, out, err = await cli(service.grpc_target, "accounts", "get", "nope")
    assert (code, out) == (1, "")
    assert err.strip() == "error: NOT_FOUND: not found in StackOne: Account nope not found"
    code, _, err = await cli(
        service.grpc_target, "sessions", "create", "--owner-id", " ", "--owner-name", "x"
    )
    assert code == 1
    assert err.startswith("error: INVALID_ARGUMENT: invalid request: origin_owner_id")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_events_watch_resumes_across_a_server_restart(tmp_path: Path) -> None:
    """`events watch` keeps its cursor through a restart and misses nothing."""
    settings = make_settings(tmp_path, grpc_address=f"127.0.0.1:{_free_port()}")
    target = settings.grpc_address
    async with running(settings) as service:
        process = await asyncio.create_subprocess_exec(
            *CLI, "events", "watch", "--max-events", "2", "--from-earliest", "--json",
            "--target", target, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        first = await _post_deleted(service, "before-restart")
        assert process.stdout is not None
        async with asyncio.timeout(20):
            line = await process.stdout.readline()
        assert orjson.loads(line)["event_id"] == first
    async with running(settings) as service:
        second = await _post_deleted(service, "after-restart")
        async with asyncio.timeout(20):
            out, err = await process.communicate()
    assert process.returncode == 0
    assert [orjson.loads(line)["event_id"] for line in out.splitlines()] == [second]
    assert "resuming after cursor 1" in err.decode()


async def _post_deleted(service: Runtime, account_id: str) -> str:
    body = orjson.dumps({"event": "account.deleted", "account_id": account_id})
    async with httpx.AsyncClient(base_url=service.gateway.base_url) as http:
        response = await http.post("/webhooks/stackone", content=body, headers=signed_headers(body))
    event_id: str = response.json()["event_id"]
    return event_id


async def test_an_auth_link_lasts_five_days_and_every_session_flag_reaches_stackone(
    service: Runtime,
) -> None:
    """`sessions create --auth-link` asks StackOne for a 5-day session; the other flags go too."""
    code, out, err = await cli(
        service.grpc_target, "sessions", "create", "--owner-id", "t-1", "--owner-name", "Acme",
        "--auth-link", "--type", "test", "--provider-version", "2", "--multiple",
        "--metadata", '{"plan": "growth"}', "--json",
    )  # fmt: skip
    assert code == 0, err
    session = orjson.loads(out)
    assert session["type"] == "test"
    created = datetime.fromisoformat(session["created_at"])
    assert datetime.fromisoformat(session["expires_at"]) - created == timedelta(days=5)
    assert service.emulator is not None
    async with httpx.AsyncClient(base_url=service.emulator.base_url) as http:
        (sent,) = [r["body"] for r in (await http.get("/emulator/requests")).json()]
    assert sent == {
        "origin_owner_id": "t-1",
        "origin_owner_name": "Acme",
        "expires_in": 5 * 24 * 3600,
        "metadata": {"plan": "growth"},
        "multiple": True,
        "type": "test",
        "provider_version": "2",
    }
