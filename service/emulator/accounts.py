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
`account.created`. Either way the session's connection attempt is `authenticated` with the
account, as `GET /connect_sessions/{id}` then reports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from service.emulator.bodies import AccountChanges, AccountSpec, ReasonBody
from service.emulator.connectors import categories_of
from service.emulator.state import Account, EmulatorState, Session, StatusReason, iso, now
from service.events.model import AccountEventType

DEFAULT_PROVIDER = "bamboohr"
# The reason each broken status gets when a break names none (the emulator's words;
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


class AccountNotFound(LookupError):
    """The account a re-connect session is bound to no longer exists."""


class Linked(NamedTuple):
    """The account a link produced, and whether it is new (else re-opened)."""

    account: Account
    created: bool


def stamped(reasons: Sequence[ReasonBody] | None) -> list[StatusReason] | None:
    """Reasons as given, timestamped now where they have no timestamp."""
    if reasons is None:
        return None
    stamp = iso(now())
    return [StatusReason(r.code, r.description, r.timestamp or stamp) for r in reasons]


def default_reasons(status: str) -> list[StatusReason]:
    """The reason a break to `status` gets when it names none."""
    reason = DEFAULT_REASONS[status]
    return [StatusReason(reason["code"], reason["description"], iso(now()))]


def new_account(state: EmulatorState, spec: AccountSpec) -> Account:
    """Creates an account from `spec` and sends `account.created`."""
    stamp = iso(now())
    provider = spec.provider or DEFAULT_PROVIDER
    return _created(
        state,
        Account(
            id=state.new_account_id(),
            provider=provider,
            provider_name=provider.title(),
            status=spec.status or "active",
            status_reasons=stamped(spec.status_reasons),
            origin_owner_id=spec.origin_owner_id or "owner",
            origin_owner_name=spec.origin_owner_name or "Owner",
            origin_username=spec.origin_username,
            label=spec.label,
            type=spec.type or "production",
            created_at=stamp,
            updated_at=stamp,
            shared=spec.shared,
            categories=spec.categories or categories_of(provider),
        ),
    )


def _created(state: EmulatorState, account: Account) -> Account:
    state.accounts[account.id] = account
    state.changed()
    state.queue_webhook(AccountEventType.CREATED, account)
    return account


def updated(state: EmulatorState, account: Account) -> None:
    """Stamps a change of `account` and sends `account.updated`."""
    account.updated_at = iso(now())
    state.changed()
    state.queue_webhook(AccountEventType.UPDATED, account)


def update_account(state: EmulatorState, account: Account, changes: AccountChanges) -> None:
    """Applies the fields `changes` gives and sends `account.updated`."""
    given = changes.model_fields_set
    for name in given - {"status_reasons"}:  # the account's fields of the same names
        setattr(account, name, getattr(changes, name))
    if "status_reasons" in given:  # dated as StackOne dates them
        account.status_reasons = stamped(changes.status_reasons)
    updated(state, account)


def set_status(
    state: EmulatorState, account: Account, status: str, reasons: list[StatusReason] | None
) -> None:
    """Moves `account` to `status` with `reasons` and sends `account.updated`."""
    account.status, account.status_reasons = status, reasons
    updated(state, account)


def delete_account(state: EmulatorState, account: Account) -> None:
    """Removes `account`, answered from now on as inactive, and sends `account.deleted`."""
    del state.accounts[account.id]
    account.status, account.updated_at = "inactive", iso(now())
    state.changed()
    state.queue_webhook(AccountEventType.DELETED, account)


def _existing(state: EmulatorState, session: Session, provider: str) -> Account | None:
    if session.account_id:
        account = state.accounts.get(session.account_id)
        if account is None:
            raise AccountNotFound(f"Account {session.account_id} not found")
        return account
    if session.multiple:
        return None
    return next(
        (
            account
            for account in state.accounts.values()
            if account.origin_owner_id == session.origin_owner_id and account.provider == provider
        ),
        None,
    )


def link_account(
    state: EmulatorState,
    session: Session,
    provider: str | None = None,
    *,
    status: str = "active",
    reasons: list[StatusReason] | None = None,
) -> Linked:
    """Completes `session` as a person finishing the Hub or an Auth Link would.

    Args:
        state: the emulator's state.
        session: the connect session being completed.
        provider: the provider the person chose; the session's, else bamboohr, if None.
        status: the account's status after linking (`error`: the link worked but the
            provider refused access, say); one of `bodies.STATUSES`.
        reasons: the account's status reasons after linking.

    Raises AccountNotFound when the session's account no longer exists.
    """
    chosen = provider or session.provider or DEFAULT_PROVIDER
    linked = _linked(state, session, chosen, status, reasons)
    state.open_attempt(session).settle("authenticated", account=linked.account.id)
    return linked


def _linked(
    state: EmulatorState,
    session: Session,
    chosen: str,
    status: str,
    reasons: list[StatusReason] | None,
) -> Linked:
    existing = _existing(state, session, chosen)
    if existing is None:
        stamp = iso(now())
        account = Account(
            id=state.new_account_id(),
            provider=chosen,
            provider_name=chosen.title(),
            status=status,
            status_reasons=reasons,
            origin_owner_id=session.origin_owner_id,
            origin_owner_name=session.origin_owner_name,
            origin_username=session.origin_username,
            label=session.label,
            type=session.type,
            created_at=stamp,
            updated_at=stamp,
            categories=categories_of(chosen) or session.categories or None,
        )
        return Linked(_created(state, account), created=True)
    if session.label:
        existing.label = session.label
    existing.origin_owner_name = session.origin_owner_name or existing.origin_owner_name
    existing.origin_username = session.origin_username or existing.origin_username
    set_status(state, existing, status, reasons)
    return Linked(existing, created=False)
