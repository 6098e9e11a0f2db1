"""The console script against a real running service: people's tables, scripts' JSON."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path

import grpc
import httpx
import orjson
import pytest

from service.runtime import Runtime, running
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.console import CLI, cli
from tests.harness.processes import lines_until, run_to_end, serve_env
from tests.harness.registries import Registry, registry_service
from tests.harness.support import WEBHOOK_SECRET, LogBackend, make_settings, signed_headers

pytestmark = pytest.mark.asyncio
REPOSITORY = Path(__file__).resolve().parents[2]


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
        first_cursor = orjson.loads(line)["cursor"]
    async with running(settings) as service:
        second = await _post_deleted(service, "after-restart")
        async with asyncio.timeout(20):
            out, err = await process.communicate()
    assert process.returncode == 0
    assert [orjson.loads(line)["event_id"] for line in out.splitlines()] == [second]
    assert f"resuming after cursor {first_cursor}" in err.decode()


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


@asynccontextmanager
async def accounts_service(tmp_path: Path, reconcile_interval: float) -> AsyncIterator[Registry]:
    """The service sweeping StackOne every `reconcile_interval` s (0: never, so its
    registry is never complete), leaving changed accounts no grace."""
    backend = LogBackend(f"sqlite:///{tmp_path / 'events.db'}")
    async with registry_service(tmp_path, backend, reconcile_interval=reconcile_interval) as it:
        yield it


async def test_accounts_from_the_registry_print_the_cursor_to_watch_from(tmp_path: Path) -> None:
    """`accounts list --registry` ends with the cursor the listing reflects and the watch
    command that continues from it (--json: a last object with it); `accounts get
    --registry` shows the account's registry cursor."""
    async with accounts_service(tmp_path, reconcile_interval=0.2) as accounts:
        linked = sorted([await accounts.account(), await accounts.account()])
        cursor = await accounts.holds(linked)
        target = accounts.service.grpc_target
        code, out, err = await cli(target, "accounts", "list", "--registry")
        assert code == 0, err
        *table, last = out.splitlines()
        code, json_out, err = await cli(target, "accounts", "list", "--registry", "--json")
        assert code == 0, err
        *json_accounts, json_last = json_out.splitlines()
        code, got, err = await cli(target, "accounts", "get", linked[0], "--registry")
        assert code == 0, err
    assert [row.split()[0] for row in table[1:]] == linked
    assert last == (
        f"registry cursor {cursor}: follow the changes after this listing with "
        f"`stackone-connect events watch --from {cursor}`"
    )
    assert sorted(orjson.loads(line)["id"] for line in json_accounts) == linked
    assert orjson.loads(json_last) == {"cursor": cursor, "answered_from": "READ_FROM_REGISTRY"}
    assert "registry_cursor" in got
    assert "answered from StackOne" not in got


async def test_accounts_from_an_incomplete_registry_say_they_came_from_stackone(
    tmp_path: Path,
) -> None:
    """With no reconciliation sweep the registry is not complete: `--registry` listings
    and look-ups answer from StackOne and say so, with no cursor."""
    async with accounts_service(tmp_path, reconcile_interval=0) as accounts:
        account_id = await accounts.account()
        target = accounts.service.grpc_target
        code, out, err = await cli(target, "accounts", "list", "--registry")
        assert code == 0, err
        code, json_out, err = await cli(target, "accounts", "list", "--registry", "--json")
        assert code == 0, err
        code, got, err = await cli(target, "accounts", "get", account_id, "--registry")
        assert code == 0, err
    _, row, last = out.splitlines()
    assert row.split()[0] == account_id
    fell_back = "answered from StackOne: the service's registry is not complete yet"
    assert last == f"{fell_back} (no cursor to watch from)"
    assert orjson.loads(json_out.splitlines()[-1]) == {"answered_from": "READ_FROM_STACKONE"}
    assert got.splitlines()[-1] == fell_back


async def test_events_watch_from_a_snapshot_prints_the_accounts_then_the_end_then_events(
    tmp_path: Path,
) -> None:
    """`events watch --from-snapshot`: each account at its registry cursor, the line that
    ends the initial state at the snapshot's cursor, then a live event after it."""
    async with accounts_service(tmp_path, reconcile_interval=0.2) as accounts:
        linked = sorted([await accounts.account(), await accounts.account()])
        await accounts.holds(linked)
        process = await asyncio.create_subprocess_exec(
            *CLI, "events", "watch", "--from-snapshot", "--max-events", "1",
            "--target", accounts.service.grpc_target,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        lines, line = await lines_until(process, "--")  # up to the initial state's end
        await accounts.set_status(linked[0], "error")
        async with asyncio.timeout(20):
            rest, err = await process.communicate()
    assert process.returncode == 0, err
    header, *snapshot = lines
    assert header.split()[:2] == ["CURSOR", "TYPE"]
    assert [row.split()[1:3] for row in snapshot] == [["snapshot", id_] for id_ in linked]
    end = line.removeprefix("-- initial state as of cursor ").split(";")[0]
    assert line == f"-- initial state as of cursor {end}; events after it follow --\n"
    assert all(0 < int(row.split()[0]) <= int(end) for row in snapshot)
    (event,) = rest.decode().splitlines()
    assert event.split()[1:3] == ["account.updated", linked[0]]
    assert int(event.split()[0]) > int(end)


async def test_events_watch_shows_the_status_before_each_event(service: Runtime) -> None:
    """An account linked then broken: its first event shows its status, the next one the
    change, `active -> error`."""
    assert service.emulator is not None
    async with (
        grpc.aio.insecure_channel(service.grpc_target) as channel,
        httpx.AsyncClient(base_url=service.emulator.base_url, timeout=10) as emulator,
    ):
        accounts = Registry(service, emulator, stub=pb_grpc.ConnectServiceStub(channel))
        process = await asyncio.create_subprocess_exec(
            *CLI, "events", "watch", "--from-earliest", "--max-events", "2",
            "--target", service.grpc_target,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        account_id = await accounts.account()
        assert process.stdout is not None
        async with asyncio.timeout(20):
            header = await process.stdout.readline()
            # Recorded before the break (webhooks waiting together are folded into one).
            created = (await process.stdout.readline()).decode()
        await accounts.set_status(account_id, "error")
        async with asyncio.timeout(20):
            out, err = await process.communicate()
    assert process.returncode == 0, err
    assert header.split()[-2:] == [b"STATUS", b"SOURCE"]
    (broken,) = out.decode().splitlines()
    # CURSOR TYPE ACCOUNT PROVIDER OWNER-ID STATUS... SOURCE
    assert created.split()[1:3] == ["account.created", account_id]
    assert created.split()[5:] == ["active", "webhook"]
    assert broken.split()[1:3] == ["account.updated", account_id]
    assert broken.split()[5:] == ["active", "->", "error", "webhook"]


async def test_global_flags_work_before_or_after_the_subcommand(tmp_path: Path) -> None:
    """`--target`, `--json` and `--token` given before the subcommand, after it, or split
    between the two, reach the command alike; one given after wins over one before."""
    async with running(make_settings(tmp_path)) as service:
        target = service.grpc_target
        placements = [
            ["--target", target, "--json", "--token", "t", "sessions", "create"],
            ["sessions", "create", "--target", target, "--json", "--token", "t"],
            ["--json", "sessions", "create", "--target", target],
            ["--target", "127.0.0.1:1", "sessions", "create", "--target", target, "--json"],
        ]
        for placement in placements:
            code, out, err = await run_to_end(
                [*CLI, *placement, "--owner-id", "t-1", "--owner-name", "Acme"], timeout=20
            )
            assert (code, err) == (0, ""), placement
            assert orjson.loads(out)["token"], placement


async def test_a_backup_to_a_folder_or_nowhere_is_one_line(tmp_path: Path) -> None:
    """`backup` to a folder, or into a folder that does not exist, is refused in one line,
    exit 2, leaving nothing behind."""
    (tmp_path / "copies").mkdir()
    env = {"STACKONE_CONNECT_EVENT_LOG_URL": f"sqlite:///{tmp_path / 'events.db'}"}
    async with running(make_settings(tmp_path)):
        code, _, err = await run_to_end(
            [*CLI, "backup", str(tmp_path / "copies")], env=env, timeout=20
        )
        folder = tmp_path / "copies"
        assert (code, err.splitlines()) == (
            2,
            [f"stackone-connect: backup: {folder} is a folder: name the file to write"],
        )
        code, _, err = await run_to_end(
            [*CLI, "backup", str(tmp_path / "absent" / "copy.db")], env=env, timeout=20
        )
    assert code == 2
    assert err.splitlines() == [
        f"stackone-connect: cannot back up the event log at {tmp_path / 'events.db'}: unable to "
        "open database file"
    ]
    assert [name for name in os.listdir(tmp_path) if "copies" in name] == ["copies"]


@pytest.mark.parametrize("taken", ["EXAMPLE_ADDRESS", "STACKONE_CONNECT_GRPC_ADDRESS"])
async def test_the_demo_with_a_port_taken_is_one_line(tmp_path: Path, taken: str) -> None:
    """`make demo` (examples.web.demo) with the example's or the service's port held by
    another process says so in one line naming the setting, exit 2."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        held = f"127.0.0.1:{holder.getsockname()[1]}"
        env = {
            **serve_env(tmp_path, WEBHOOK_SECRET),
            "EXAMPLE_ADDRESS": "127.0.0.1:0",
            "PYTHONPATH": str(REPOSITORY),
            taken: held,
        }
        code, out, err = await run_to_end(
            [sys.executable, "-m", "examples.web.demo"], cwd=tmp_path, env=env, timeout=60
        )
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1, err
    (line,) = err.splitlines()
    assert line.startswith("make demo: ")
    assert f"cannot listen on {held} ({taken}): " in line
    assert line.endswith(("Address already in use", "address already in use"))
