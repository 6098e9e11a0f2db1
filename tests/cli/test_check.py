"""`stackone-connect check` against a running service whose emulator plays StackOne."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from service.cli.check import CHECK_OWNER_ID, secret_problems
from service.runtime import Runtime, running
from tests.harness.processes import ended, lines_until, run_to_end
from tests.harness.support import (
    WEBHOOK_SECRET,
    deliver,
    eventually,
    make_settings,
    metric,
    wait_recorded,
    webhook,
)

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
    process: asyncio.subprocess.Process,
    emulator: httpx.AsyncClient,
    before_linking: Callable[[], Awaitable[None]] | None = None,
) -> tuple[list[str], str]:
    """Reads `check`'s output up to its Auth Link, then (after `before_linking`) links it
    as a person would; returns the output before the link and the linked account's id."""
    lines, line = await lines_until(process, "  http")
    token = parse_qs(urlsplit(line.strip()).query)["token"][0]
    if before_linking is not None:
        await before_linking()
    linked = await emulator.post("/emulator/link", json={"token": token})
    assert linked.status_code in (200, 201), linked.text  # a new or a re-connected account
    return lines, str(linked.json()["id"])


async def finished(process: asyncio.subprocess.Process) -> tuple[int, str]:
    """The exit code and the rest of the output."""
    code, out, err = await ended(process, timeout=30)
    return code, out + err


@pytest.mark.asyncio
async def test_check_proves_the_key_and_that_stackones_webhooks_pass_the_gateway(
    service: Runtime, emulator_http: httpx.AsyncClient
) -> None:
    """The key lists and creates sessions; a linked test account's webhook is recorded."""
    process = await start_check(service, "--webhook", "--timeout", "20")
    before, _ = await link_printed_auth_link(process, emulator_http)
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
    """A wrong key is named, exit code 1."""
    process = await start_check(service, STACKONE_CONNECT_API_KEY="wrong-key")
    code, out = await finished(process)
    assert code == 1
    assert out.splitlines() == [
        f"problem: StackOne at {service.emulator and service.emulator.base_url}: StackOne "
        "rejected the API key (401 Unauthorized): check STACKONE_CONNECT_API_KEY",
    ]


@pytest.mark.asyncio
async def test_check_refuses_a_secret_too_short_to_be_stackones(service: Runtime) -> None:
    """A webhook secret too short to be a signing secret is refused in one line naming
    the variable and which secret, exit code 2, as `serve` refuses it."""
    process = await start_check(service, STACKONE_CONNECT_WEBHOOK_SECRETS=f"{WEBHOOK_SECRET},whsec")
    code, out = await finished(process)
    assert (code, out.splitlines()) == (
        2,
        [
            "stackone-connect: invalid configuration: STACKONE_CONNECT_WEBHOOK_SECRETS: secret "
            "2 of 2 has 5 characters: a signing secret has at least 16"
        ],
    )


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


def reconciling(tmp_path: Path, grace: float) -> AbstractAsyncContextManager[Runtime]:
    """The service sweeping StackOne's accounts every 0.1 s, leaving a just-changed
    account `grace` seconds for its webhook."""
    return running(make_settings(tmp_path, reconcile_interval=0.1, reconcile_grace=grace))


async def another_account_of_the_owner(service: Runtime, emulator: httpx.AsyncClient) -> None:
    """An account of the check's owner that the check did not link, with a signed webhook
    of it recorded (`account.deleted`, which needs no look-up and nothing can cover)."""
    created = await emulator.post("/emulator/accounts", json={"origin_owner_id": CHECK_OWNER_ID})
    other = created.json()["id"]
    body = webhook(account_id=other, origin_owner_id=CHECK_OWNER_ID, id=f"evt-{other}")
    async with httpx.AsyncClient(base_url=service.gateway.base_url) as gateway:
        assert (await deliver(gateway, body)).status_code == 200
    await wait_recorded(service.event_log, [f"evt-{other}"])


@pytest.mark.asyncio
@pytest.mark.parametrize("other_account", [False, True])
async def test_check_fails_when_only_reconciliation_or_other_accounts_show_events(
    tmp_path: Path, other_account: bool
) -> None:
    """StackOne signing with a secret the gateway does not hold (every delivery 401):
    reconciliation records the linked account, and a signed webhook of another account of
    the owner may be recorded before; neither counts: check names the fix and exits 1."""
    async with reconciling(tmp_path, grace=0) as service:
        assert service.emulator is not None
        async with httpx.AsyncClient(base_url=service.emulator.base_url) as emulator:
            await emulator.put("/emulator/webhooks", json={"secret": "whsec-nobody-holds-this"})
            process = await start_check(service, "--webhook", "--timeout", "25")

            async def before_linking() -> None:
                if other_account:
                    await another_account_of_the_owner(service, emulator)

            _, account_id = await link_printed_auth_link(process, emulator, before_linking)
            code, out = await finished(process)
            deliveries = (await emulator.get("/emulator/deliveries")).json()
    assert code == 1, out
    assert (
        f"problem: StackOne linked account {account_id}, but reconciliation recorded it "
        "before any webhook of it passed the gateway"
    ) in out
    assert "STACKONE_CONNECT_WEBHOOK_SECRETS holds its signing secret" in out
    assert "this gateway's public URL ending in /webhooks/stackone" in out
    assert 'stackone_connect_webhooks_total{outcome="unauthorized"}' in out
    assert out.rstrip().endswith(f"; deleted the test account {account_id}")
    assert "passed the signature check" not in out
    refused = {d["status"] for d in deliveries}  # (one at a time: maybe not the linked one's yet)
    assert 401 in refused
    assert refused <= {401, None}  # (None: an attempt still on its way)


@pytest.mark.asyncio
async def test_check_passes_on_the_linked_accounts_own_webhook_while_reconciling(
    tmp_path: Path,
) -> None:
    """With the right secret, the linked account's own webhook passes the check, not the
    owner's other account's, while reconciliation sweeps (leaving the webhook its grace)."""
    async with reconciling(tmp_path, grace=30) as service:
        assert service.emulator is not None
        async with httpx.AsyncClient(base_url=service.emulator.base_url) as emulator:
            process = await start_check(service, "--webhook", "--timeout", "20")
            _, account_id = await link_printed_auth_link(
                process, emulator, lambda: another_account_of_the_owner(service, emulator)
            )
            code, out = await finished(process)
    assert code == 0, out
    assert (
        f"ok: StackOne's account.created webhook for account {account_id} passed the "
        "signature check and was recorded (verified)"
    ) in out
    assert f"ok: deleted the test account {account_id}" in out


def test_signing_secrets_that_are_not_set_are_named(tmp_path: Path) -> None:
    """No secret, in the variable or a file, is a problem; either one is not."""
    assert secret_problems(make_settings(tmp_path, webhook_secrets=[])) == [
        "STACKONE_CONNECT_WEBHOOK_SECRETS is not set: every webhook would be refused"
    ]
    assert secret_problems(make_settings(tmp_path)) == []
    in_a_file = make_settings(tmp_path, webhook_secrets=[], webhook_secrets_file=tmp_path / "s")
    assert secret_problems(in_a_file) == []


@pytest.mark.asyncio
@pytest.mark.parametrize("sweeping", [True, False])
async def test_check_says_whether_the_services_registry_is_complete(
    tmp_path: Path, sweeping: bool
) -> None:
    """`check --registry` asks the running service: complete once a reconciliation sweep
    ran (ok, with its cursor); never swept, it names what registry reads do meanwhile and
    exits 1."""
    settings = make_settings(tmp_path, reconcile_interval=0.2 if sweeping else 0)
    async with (
        running(settings) as service,
        httpx.AsyncClient(base_url=service.admin.base_url) as admin,
    ):
        if sweeping:

            async def complete() -> bool:
                return await metric(admin, "stackone_connect_registry_complete") == 1

            await eventually(complete, timeout=20)
        code, out = await finished(await start_check(service, "--registry"))
    if sweeping:
        assert code == 0, out
        assert out.splitlines()[-1].startswith(
            "ok: the service's account registry is complete (as of cursor "
        )
    else:
        assert code == 1, out
        assert out.splitlines()[-1].startswith(
            "problem: the service's account registry is not complete yet: registry reads "
            "are answered from StackOne and --from-snapshot streams are refused"
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _bad_value(case: str, folder: Path) -> tuple[dict[str, str], str]:
    """The variables of one bad value `serve` would meet, and the problem `check` prints."""
    prefix = "STACKONE_CONNECT_"
    file = folder / "file"
    if case == "clients-file":
        return {f"{prefix}CLIENTS_FILE": str(file)}, f"{prefix}CLIENTS_FILE: cannot read {file}"
    if case == "tls-files":
        file.write_text("not a certificate\n")
        tls = {f"{prefix}TLS_CERT_FILE": str(file), f"{prefix}TLS_KEY_FILE": str(file)}
        return tls, f"{prefix}TLS_CERT_FILE: {file} is not a PEM certificate file"
    if case == "secrets-file":
        file.write_text("# ours\nwhsec\n")
        return (
            {f"{prefix}WEBHOOK_SECRETS_FILE": str(file)},
            f"{prefix}WEBHOOK_SECRETS_FILE: {file}, line 2: the secret has 5 characters",
        )
    if case == "one-address":
        address = f"127.0.0.1:{_free_port()}"
        return (
            {f"{prefix}GRPC_ADDRESS": address, f"{prefix}ADMIN_ADDRESS": address},
            f"{prefix}GRPC_ADDRESS and {prefix}ADMIN_ADDRESS name the same address ({address})",
        )
    if case == "sqlite-event-log":
        file.write_text("not a database\n")
        return (
            {f"{prefix}EVENT_LOG_URL": f"sqlite:///{file}"},
            f"{prefix}EVENT_LOG_URL: {file} is not a SQLite database",
        )
    if case == "nats-event-log":
        url = f"nats://127.0.0.1:{_free_port()}"
        return (
            {f"{prefix}EVENT_LOG_URL": url},
            f"{prefix}EVENT_LOG_URL: cannot connect to NATS at {url}: ",
        )
    if case == "emulator-state-file":
        file.write_text('{"version": 1, "accounts": "none"}')
        return (
            {f"{prefix}EMULATOR_STATE_FILE": str(file)},
            f"{prefix}EMULATOR_STATE_FILE: {file} is unreadable (",
        )
    if case == "audit-sink":
        return (
            {f"{prefix}AUDIT_SINK": UNWRITABLE},
            f"{prefix}AUDIT_SINK: cannot write {UNWRITABLE}: Permission denied",
        )
    assert case == "tracing"
    return {"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER: 'zipkin' is not one of"


# A file even root cannot open for writing (sysfs refuses it).
UNWRITABLE = "/sys/kernel/notes"


def _writable_by_us(path: str) -> bool:
    if not os.path.exists(path):
        return True  # as good as writable: it cannot be the bad value here
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
    except OSError:
        return False
    return True


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "case",
    [
        "clients-file",
        "tls-files",
        "secrets-file",
        "one-address",
        "sqlite-event-log",
        "nats-event-log",
        "emulator-state-file",
        "audit-sink",
        "tracing",
    ],
)
async def test_check_reports_a_bad_value_of_everything_serve_reads(
    tmp_path: Path, case: str
) -> None:
    """`check` reads every setting and file `serve` would use: a bad value of each is a
    `problem:` line naming its setting (exit 1), and good ones raise none."""
    if case == "audit-sink" and _writable_by_us(UNWRITABLE):
        pytest.skip(f"{UNWRITABLE} is writable here")
    good = {
        **os.environ,
        "STACKONE_CONNECT_WEBHOOK_SECRETS": WEBHOOK_SECRET,
        "STACKONE_CONNECT_EVENT_LOG_URL": f"sqlite:///{tmp_path / 'events.db'}",
    }
    no_key = "problem: STACKONE_CONNECT_API_KEY is not set: nothing to check against StackOne"
    code, out, _ = await run_to_end(CLI, env=good, timeout=30)
    assert (code, out.splitlines()) == (1, [no_key])
    changed, problem = _bad_value(case, tmp_path)
    code, out, err = await run_to_end(CLI, env={**good, **changed}, timeout=30)
    assert (code, err) == (1, "")
    first, last = out.splitlines()
    assert first.startswith(f"problem: {problem}")
    assert last == no_key
