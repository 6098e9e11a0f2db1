"""Linked accounts in the emulator: created, changed and linked the way StackOne does.

`link_account` is the one place a completed connect session becomes an account; every
way of completing one (`POST /emulator/link`, the Auth Link page, the Hub) calls it, so
they all follow StackOne's rules:

- a session bound to an account (`account_id`) re-authenticates that account;
- otherwise, without `multiple`, the owner's existing account of the same provider is
  re-opened rather than duplicated;
- otherwise a new account is created.

Re-authenticating or re-opening an account sets its status (back to `active` unless told
otherwise, its status reasons cleared) and sends `account.updated`; a new account sends
`account.created`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from service.events.model import AccountEventType

if TYPE_CHECKING:  # the state imports nothing from here; this avoids a cycle at run time
    from service.emulator.app import EmulatorState

STATUSES = frozenset({"active", "inactive", "suspended", "archived", "expired", "error"})
DEFAULT_PROVIDER = "bamboohr"


class LinkError(ValueError):
    """A session cannot be completed as asked; the message says why."""


class AccountNotFound(LinkError):
    """The account a re-connect session is bound to no longer exists."""


class Linked(NamedTuple):
    """The account a link produced, and whether it is new (else re-opened)."""

    account: dict[str, Any]
    created: bool


def now() -> datetime:
    """The emulator's clock."""
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """StackOne's date format: ISO-8601 in UTC with milliseconds and `Z`."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def status_reasons(reasons: object) -> list[dict[str, Any]] | None:
    """Reasons in StackOne's shape: `code`, `description` and a `timestamp` (now if unset).

    Raises LinkError when `reasons` is neither null nor a list of objects.
    """
    if reasons is None:
        return None
    if not isinstance(reasons, list) or not all(isinstance(r, dict) for r in reasons):
        raise LinkError("status_reasons must be a list of {code, description, timestamp}")
    stamp = iso(now())
    return [
        {
            "code": reason.get("code"),
            "description": reason.get("description"),
            "timestamp": reason.get("timestamp") or stamp,
        }
        for reason in reasons
    ]


def _checked_status(status: object) -> str:
    if status not in STATUSES:
        raise LinkError(f"status must be one of {', '.join(sorted(STATUSES))}")
    return str(status)


def new_account(state: EmulatorState, spec: dict[str, Any]) -> dict[str, Any]:
    """Creates an account from `spec` and sends `account.created`."""
    stamp = iso(now())
    provider = str(spec.get("provider") or DEFAULT_PROVIDER)
    account_id = state.new_account_id()
    account: dict[str, Any] = {
        "id": account_id,
        "provider": provider,
        "provider_name": provider.title(),
        "status": _checked_status(spec.get("status") or "active"),
        "status_reasons": status_reasons(spec.get("status_reasons")),
        "origin_owner_id": spec.get("origin_owner_id") or "owner",
        "origin_owner_name": spec.get("origin_owner_name") or "Owner",
        "origin_username": spec.get("origin_username"),
        "label": spec.get("label"),
        "type": spec.get("type") or "production",
        "created_at": stamp,
        "updated_at": stamp,
    }
    if state.config.sdk_shapes != "4.28":  # StackOne's SDK has had `shared` since 4.34.1
        account["shared"] = _checked_shared(spec.get("shared", False))
    state.accounts[account_id] = account
    state.queue_webhook(AccountEventType.CREATED, account)
    return account


def _checked_shared(shared: object) -> bool:
    if not isinstance(shared, bool):
        raise LinkError("shared must be true or false")
    return shared


def update_account(state: EmulatorState, account: dict[str, Any], changes: dict[str, Any]) -> None:
    """Applies `changes` (status, status_reasons, label, provider, shared) and sends
    `account.updated`."""
    if "shared" in changes and "shared" in account:
        account["shared"] = _checked_shared(changes["shared"])
    if "status" in changes:
        account["status"] = _checked_status(changes["status"])
    if "status_reasons" in changes:
        account["status_reasons"] = status_reasons(changes["status_reasons"])
    for key in ("label", "provider"):
        if key in changes:
            account[key] = changes[key]
    account["updated_at"] = iso(now())
    state.queue_webhook(AccountEventType.UPDATED, account)


def _existing(
    state: EmulatorState, session: dict[str, Any], provider: str
) -> dict[str, Any] | None:
    if session.get("account_id"):
        account = state.accounts.get(str(session["account_id"]))
        if account is None:
            raise AccountNotFound(f"Account {session['account_id']} not found")
        return account
    if session.get("multiple"):
        return None
    return next(
        (
            account
            for account in state.accounts.values()
            if account["origin_owner_id"] == session["origin_owner_id"]
            and account["provider"] == provider
        ),
        None,
    )


def link_account(
    state: EmulatorState,
    session: dict[str, Any],
    provider: str | None = None,
    *,
    status: str = "active",
    reasons: list[dict[str, Any]] | None = None,
) -> Linked:
    """Completes `session` as a person finishing the Hub or an Auth Link would.

    Args:
        state: the emulator's state.
        session: the connect session being completed (as `POST /connect_sessions` made it).
        provider: the provider the person chose; the session's, else bamboohr, if None.
        status: the account's status after linking (`error`: the link worked but the
            provider refused access, say).
        reasons: the account's status reasons after linking.

    Raises AccountNotFound when the session's account no longer exists, LinkError when
    `status` or `reasons` are not StackOne's.
    """
    _checked_status(status)
    reasons = status_reasons(reasons)
    chosen = str(provider or session.get("provider") or DEFAULT_PROVIDER)
    existing = _existing(state, session, chosen)
    if existing is None:
        spec = {**session, "provider": chosen, "status": status, "status_reasons": reasons}
        return Linked(new_account(state, spec), created=True)
    changes: dict[str, Any] = {"status": status, "status_reasons": reasons}
    if session.get("label"):
        changes["label"] = session["label"]
    for key in ("origin_owner_name", "origin_username"):
        if session.get(key):
            existing[key] = session[key]
    update_account(state, existing, changes)
    return Linked(existing, created=False)
