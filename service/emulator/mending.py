"""Breaking and mending a linked account, so the "get the customer to reconnect" path can
be tried offline.

    POST /emulator/accounts/{id}/break   {"status"?, "status_reasons"?}
    POST /emulator/accounts/{id}/mend    {}

`break` moves the account to `error` (the default), `expired` or `suspended`, with the
reasons given or else one like StackOne's; `mend` puts it back to `active` with no
reasons, as an administrator fixing it at StackOne would (a customer re-entering
credentials in the Hub mends it too, through `accounts.link_account`). Each sends the
signed `account.updated` StackOne would send and answers the account.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from service.emulator.accounts import LinkError, update_account
from service.emulator.app import EMULATOR_STATE, _json_object, stackone_error

# The reason each broken status gets when the request names none (the emulator's words;
# StackOne's codes are free text).
DEFAULT_REASONS: dict[str, dict[str, str]] = {
    "error": {
        "code": "token_refresh_failed",
        "description": "The provider refused the stored credentials; reconnect the account.",
    },
    "expired": {
        "code": "credentials_expired",
        "description": "The account's credentials expired; reconnect the account.",
    },
    "suspended": {
        "code": "account_suspended",
        "description": "The account was suspended; it does not sync until it is re-enabled.",
    },
}
BROKEN_STATUSES = frozenset(DEFAULT_REASONS)


def _account(request: web.Request) -> dict[str, Any] | None:
    return request.app[EMULATOR_STATE].accounts.get(request.match_info["account_id"])


async def break_account(request: web.Request) -> web.Response:
    """POST /emulator/accounts/{id}/break."""
    account = _account(request)
    if account is None:
        return stackone_error(404, f"Account {request.match_info['account_id']} not found")
    body = await _json_object(request) if request.can_read_body else {}
    status = body.get("status", "error")
    if status not in BROKEN_STATUSES:
        return stackone_error(400, f"status must be one of {', '.join(sorted(BROKEN_STATUSES))}")
    reasons = body.get("status_reasons") or [DEFAULT_REASONS[status]]
    try:
        update_account(
            request.app[EMULATOR_STATE], account, {"status": status, "status_reasons": reasons}
        )
    except LinkError as error:
        return stackone_error(400, str(error))
    return web.json_response(account)


async def mend_account(request: web.Request) -> web.Response:
    """POST /emulator/accounts/{id}/mend."""
    account = _account(request)
    if account is None:
        return stackone_error(404, f"Account {request.match_info['account_id']} not found")
    update_account(
        request.app[EMULATOR_STATE], account, {"status": "active", "status_reasons": None}
    )
    return web.json_response(account)


def add_mending(app: web.Application) -> None:
    """Adds the break and mend actions to the emulator `app`."""
    app.router.add_post("/emulator/accounts/{account_id}/break", break_account)
    app.router.add_post("/emulator/accounts/{account_id}/mend", mend_account)
