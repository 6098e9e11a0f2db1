"""An account that broke, mended end to end: the emulator breaks and mends accounts with
StackOne's signed `account.updated`, and `accounts reconnect` makes the session that
re-opens one in the Hub (or an Auth Link), refusing an account that is gone."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import orjson
import pytest

from service.api.convert import AUTH_LINK_SECONDS
from service.emulator.accounts import DEFAULT_REASONS
from stackone_connect.v1 import stackone_connect_pb2 as pb
from tests.harness.console import cli
from tests.harness.registries import Registry, registry_service
from tests.harness.streams import attached, next_event
from tests.harness.support import LogBackend

pytestmark = pytest.mark.asyncio


async def test_the_emulator_breaks_and_mends_an_account_with_signed_webhooks(
    tmp_path: Path, backend: LogBackend
) -> None:
    """error (with reasons), expired, suspended, then active again: each an account.updated
    StackOne would send, delivered signed and accepted, each event carrying the status
    before it."""
    async with registry_service(tmp_path, backend) as stackone:
        stream = stackone.stub.StreamAccountEvents(pb.StreamAccountEventsRequest())
        await attached(stream)
        account_id = await stackone.account(owner="t-b")
        assert (await next_event(stream, timeout=10)).type == "account.created"
        seen: list[tuple[str, str, list[str]]] = []
        for action, body in [
            ("break", {}),
            ("break", {"status": "expired"}),
            ("break", {"status": "suspended", "status_reasons": [{"code": "billing"}]}),
            ("mend", {}),
        ]:
            answer = await stackone.emulator.post(
                f"/emulator/accounts/{account_id}/{action}", json=body
            )
            assert answer.status_code == 200, answer.text
            event = await next_event(stream, timeout=10)
            assert (event.type, event.verification) == (
                "account.updated",
                pb.VERIFICATION_VERIFIED,
            )
            reasons = [reason.code for reason in event.account.status_reasons]
            seen.append((event.previous_raw_status, event.account.raw_status, reasons))
        stream.cancel()
        await stackone.state.wait_for_deliveries()
        deliveries = [d for d in stackone.state.deliveries if d.account_id == account_id]
    assert seen == [
        ("active", "error", [DEFAULT_REASONS["error"]["code"]]),
        ("error", "expired", [DEFAULT_REASONS["expired"]["code"]]),
        ("expired", "suspended", ["billing"]),
        ("suspended", "active", []),
    ]
    # Accepted by the gateway, so signed as StackOne signs.
    assert [(d.event, d.status) for d in deliveries][-4:] == [("account.updated", 200)] * 4


async def test_a_broken_account_is_refused_an_unknown_status(
    tmp_path: Path, backend: LogBackend
) -> None:
    """Only error, expired and suspended are breaks; an unknown account is 404."""
    async with registry_service(tmp_path, backend) as stackone:
        account_id = await stackone.account()
        active = await stackone.emulator.post(
            f"/emulator/accounts/{account_id}/break", json={"status": "active"}
        )
        missing = await stackone.emulator.post("/emulator/accounts/nope/mend", json={})
    assert active.status_code == 400
    assert "error, expired, suspended" in active.json()["message"]
    assert missing.status_code == 404


async def reconnect(stackone: Registry, account_id: str, *flags: str) -> tuple[int, str, str]:
    """`stackone-connect accounts reconnect ACCOUNT_ID FLAGS` against the service."""
    return await cli(stackone.service.grpc_target, "accounts", "reconnect", account_id, *flags)


async def test_accounts_reconnect_makes_the_session_that_mends_an_expired_account(
    tmp_path: Path, backend: LogBackend
) -> None:
    """For an expired account: a session bound to it, for its owner and provider, lasting
    5 days with --auth-link; completing it brings the account back to active."""
    async with registry_service(tmp_path, backend) as stackone:
        stream = stackone.stub.StreamAccountEvents(pb.StreamAccountEventsRequest())
        await attached(stream)
        account_id = await stackone.account(owner="t-r", provider="personio")
        # Apart: webhooks of an account pending together fold into one event.
        assert (await next_event(stream, timeout=10)).type == "account.created"
        await stackone.emulator.post(
            f"/emulator/accounts/{account_id}/break", json={"status": "expired"}
        )
        assert (await next_event(stream, timeout=10)).account.raw_status == "expired"
        code, out, err = await reconnect(stackone, account_id, "--auth-link", "--json")
        assert (code, err) == (0, "")
        session = orjson.loads(out)
        recorded = (await stackone.emulator.get("/emulator/requests")).json()
        (sent,) = [r for r in recorded if r["path"] == "/connect_sessions"]
        linked = await stackone.emulator.post("/emulator/link", json={"token": session["token"]})
        event = await next_event(stream, timeout=10)
        stream.cancel()
        code, table, _ = await reconnect(stackone, account_id)
    assert sent["body"] == {
        "origin_owner_id": "t-r",
        "origin_owner_name": "t-r",
        "provider": "personio",
        "account_id": account_id,
        "expires_in": AUTH_LINK_SECONDS,
    }
    assert session["account_id"] == account_id
    pb_session = pb.Session()
    pb_session.expires_at.FromJsonString(session["expires_at"])
    pb_session.created_at.FromJsonString(session["created_at"])
    lifetime = pb_session.expires_at.ToDatetime() - pb_session.created_at.ToDatetime()
    assert lifetime == timedelta(days=5)
    assert (linked.status_code, linked.json()["id"]) == (200, account_id)
    assert (event.previous_status, event.account.status) == (
        pb.ACCOUNT_STATUS_EXPIRED,
        pb.ACCOUNT_STATUS_ACTIVE,
    )
    assert code == 0
    assert f"account {account_id} is active: open the Hub with this token for t-r" in table


async def test_accounts_reconnect_of_a_deleted_or_unknown_account_is_a_clear_error(
    tmp_path: Path, backend: LogBackend
) -> None:
    """Nothing to reconnect: one line saying so and what to do instead, exit 1, and no
    session asked of StackOne."""
    async with registry_service(tmp_path, backend) as stackone:
        account_id = await stackone.account()
        await stackone.delete(account_id)
        deleted = await reconnect(stackone, account_id)
        unknown = await reconnect(stackone, "acct-unknown")
        sent = (await stackone.emulator.get("/emulator/requests")).json()
    for (code, out, err), named in [(deleted, account_id), (unknown, "acct-unknown")]:
        assert (code, out) == (1, "")
        assert err == (
            f"error: account {named} does not exist or was deleted: there is nothing to "
            "reconnect; link it anew with `sessions create`\n"
        )
    assert [r for r in sent if r["path"] == "/connect_sessions"] == []
