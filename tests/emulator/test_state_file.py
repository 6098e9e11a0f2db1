"""The emulator's state file (`service/emulator/memory.py`) over real HTTP: rewritten only
by a request that changed what lasts, and read back from the format earlier runs wrote."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import orjson
import pytest

from service.emulator import EmulatorConfig, build_emulator_app
from service.emulator.memory import remember
from service.web import listening

pytestmark = pytest.mark.asyncio
API_KEY = "state-file-key"
OWNER = {"origin_owner_id": "acme", "origin_owner_name": "Acme Inc"}
EARLIER = "2026-12-01T10:00:00.000Z"


@asynccontextmanager
async def emulator_remembering(path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an emulator that keeps its state in `path`."""
    app = build_emulator_app(EmulatorConfig(api_key=API_KEY))
    remember(app, path)
    async with (
        listening(app, "127.0.0.1", 0, shutdown_timeout=0.1) as emulator,
        httpx.AsyncClient(base_url=emulator.base_url, auth=(API_KEY, ""), timeout=5) as http,
    ):
        yield http


def written(path: Path) -> int:
    """The file's inode: every save renames a new file over it, so a rewrite changes it."""
    return path.stat().st_ino


async def test_only_a_request_that_changed_what_lasts_rewrites_the_state_file(
    tmp_path: Path,
) -> None:
    """Faults, behaviour, reads, refused and not-found requests leave the file as it was;
    a new account rewrites it, and a fresh emulator reads that account back."""
    path = tmp_path / "emulator.json"
    async with emulator_remembering(path) as http:
        assert (await http.post("/connect_sessions", json=OWNER)).status_code == 201
        before = written(path)
        unchanging = [
            await http.post("/emulator/faults", json={"path_prefix": "/nowhere"}),
            await http.put("/emulator/behaviour", json={"latency": 0}),
            await http.get("/accounts"),
            await http.post("/connect_sessions", json={"origin_owner_id": 7}),
            await http.delete("/accounts/404"),
            await http.post("/emulator/link", json={"token": "cst_unknown"}),
        ]
        assert [r.status_code for r in unchanging] == [201, 200, 200, 400, 404, 404]
        assert written(path) == before, "rewritten by a request that changed nothing"
        created = await http.post("/emulator/accounts", json=OWNER)
        assert created.status_code == 201
        assert written(path) != before, "a new account not written"
    async with emulator_remembering(path) as http:
        again = await http.get(f"/accounts/{created.json()['id']}")
    assert again.json() == created.json()


async def test_a_state_file_in_the_earlier_format_is_read_back(tmp_path: Path) -> None:
    """The file an emulator of untyped state wrote (sessions and accounts as StackOne
    answers them, a session with what the emulator kept besides) still loads."""
    account = {
        "id": "58810347712093400001", "provider": "hibob", "provider_name": "Hibob",
        "status": "error", "origin_owner_id": "acme", "origin_owner_name": "Acme Inc",
        "status_reasons": [{"code": "c", "description": "d", "timestamp": EARLIER}],
        "origin_username": None, "label": None, "type": "production",
        "created_at": EARLIER, "updated_at": EARLIER,
        "shared": False,
    }  # fmt: skip
    session: dict[str, object] = {
        "id": 70000, "organization_id": "41", "project_id": "proj_emulator", **OWNER,
        "origin_username": None, "provider": "hibob", "account_id": None, "label": None,
        "metadata": None, "provider_version": None, "integration_id": None, "categories": [],
        "type": "production", "multiple": False, "external_trigger_token": "t",
        "created_at": EARLIER, "expires_at": "2999-01-01T00:00:00+00:00",
        "token": "cst_earlier", "auth_link_url": "http://127.0.0.1:1/connect?token=cst_earlier",
    }  # fmt: skip
    path = tmp_path / "emulator.json"
    path.write_bytes(
        orjson.dumps(
            {
                "version": 1,
                "account_numbers": 1,
                "sessions": {"cst_earlier": session},
                "accounts": {account["id"]: account},
                "hub_attempts": {
                    "ca_1": {
                        "token": "cst_earlier",
                        "status": "pending",
                        "account": None,
                        "error": None,
                    }
                },
                "hub_setup_information": {account["id"]: {"service_user_id": "svc"}},
            }
        )
    )
    async with emulator_remembering(path) as http:
        fetched = await http.get(f"/accounts/{account['id']}")
        authenticated = await http.post(
            "/connect_sessions/authenticate", json={"token": "cst_earlier"}
        )
        attempt = await http.get(
            "/hub/connection_attempts/ca_1", headers={"x-hub-session-token": "cst_earlier"}
        )
        next_account = await http.post("/emulator/accounts", json=OWNER)
    assert fetched.json() == {**account, "categories": None}  # not known in that format
    assert authenticated.status_code == 201
    assert authenticated.json()["origin_owner_id"] == "acme"
    assert attempt.json() == {"status": "pending", "account": None, "error": None}
    assert next_account.json()["id"] == "58810347712093400002", "an id handed out twice"
