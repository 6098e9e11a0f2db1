"""`stackone-connect check` against a running service whose emulator plays StackOne."""

from __future__ import annotations

import asyncio
import os
import sys
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from service.cli.check import secret_problems
from service.runtime import Runtime
from tests.support import WEBHOOK_SECRET

CLI = [sys.executable, "-m", "service.cli", "check"]


def operator_env(service: Runtime, **overrides: str) -> dict[str, str]:
    """The settings an operator would give `check`: the emulator stands in for StackOne."""
    assert service.emulator is not None
    return {
        **os.environ,
        "STACKONE_CONNECT_API_KEY": service.settings.emulator_api_key,
        "STACKONE_CONNECT_BASE_URL": service.emulator.base_url,
        "STACKONE_CONNECT_WEBHOOK_SECRETS": WEBHOOK_SECRET,
        **overrides,
    }


async def start_check(service: Runtime, *args: str, **env: str) -> asyncio.subprocess.Process:
    """Starts `check ARGS` against the service's gRPC address."""
    return await asyncio.create_subprocess_exec(
        *CLI, *args, "--target", service.grpc_target,
        env=operator_env(service, **env),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def link_printed_auth_link(
    process: asyncio.subprocess.Process, emulator: httpx.AsyncClient
) -> list[str]:
    """Reads `check`'s output up to its Auth Link, then links it as a person would."""
    assert process.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(20):
        while not (line := (await process.stdout.readline()).decode()).startswith("  http"):
            assert line, f"check ended before printing an Auth Link: {lines}"
            lines.append(line)
    token = parse_qs(urlsplit(line.strip()).query)["token"][0]
    assert (await emulator.post("/emulator/link", json={"token": token})).status_code == 201
    return lines


async def finished(process: asyncio.subprocess.Process) -> tuple[int, str]:
    """The exit code and the rest of the output."""
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode() + err.decode()


@pytest.mark.asyncio
async def test_check_proves_the_key_and_that_stackones_webhooks_pass_the_gateway(
    service: Runtime, emulator_http: httpx.AsyncClient
) -> None:
    """The key lists and creates sessions; a linked test account's webhook is recorded."""
    process = await start_check(service, "--webhook", "--timeout", "20")
    before = await link_printed_auth_link(process, emulator_http)
    code, after = await finished(process)
    assert code == 0, [*before, after]
    assert before[0].startswith("ok: StackOne at http://127.0.0.1:")
    assert "accepts the API key" in before[0]
    assert "passed the signature check and was recorded (verified)" in after
    account_id = after.split("for account ")[1].split()[0]
    assert f"ok: deleted the test account {account_id}" in after
    assert (await emulator_http.get("/emulator/requests")).json()[-1]["method"] == "DELETE"


@pytest.mark.asyncio
async def test_check_says_when_stackone_refuses_the_key(service: Runtime) -> None:
    """A wrong key and a secret too short to be StackOne's are each named, exit code 1."""
    process = await start_check(
        service,
        STACKONE_CONNECT_API_KEY="wrong-key",
        STACKONE_CONNECT_WEBHOOK_SECRETS=f"{WEBHOOK_SECRET},whsec",
    )
    code, out = await finished(process)
    assert code == 1
    assert out.splitlines() == [
        "problem: STACKONE_CONNECT_WEBHOOK_SECRETS, secret 2 of 2, has 5 characters: "
        "not a signing secret",
        f"problem: StackOne at {service.emulator and service.emulator.base_url}: StackOne "
        "rejected the API key (401 Unauthorized): check STACKONE_CONNECT_API_KEY",
    ]


@pytest.mark.asyncio
async def test_check_says_when_no_webhook_passes_the_gateway(
    service: Runtime, emulator_http: httpx.AsyncClient
) -> None:
    """StackOne signing with a secret the gateway does not hold: check names the fix."""
    await emulator_http.put("/emulator/webhooks", json={"secret": "a-secret-nobody-configured"})
    process = await start_check(service, "--webhook", "--timeout", "2")
    await link_printed_auth_link(process, emulator_http)
    code, out = await finished(process)
    assert code == 1
    assert "problem: no webhook arrived in 2 s" in out
    assert "STACKONE_CONNECT_WEBHOOK_SECRETS" in out


def test_signing_secrets_that_cannot_work_are_named() -> None:
    """Unset, unprintable or short secrets are problems; a real-looking one is not."""
    assert secret_problems([]) == [
        "STACKONE_CONNECT_WEBHOOK_SECRETS is not set: every webhook would be refused"
    ]
    found = secret_problems(["tab\tinside-a-long-secret", "short", "long-enough-to-be-a-secret"])
    assert [problem.split(" of 3, ")[1] for problem in found] == [
        "holds characters that cannot be typed (a copy's?)",
        "has 5 characters: not a signing secret",
    ]
    assert secret_problems(["whsec_3d6c1a529b7e4f0a8c215e4b"]) == []
