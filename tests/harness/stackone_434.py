"""StackOne's contract as its SDK 4.34 publishes it, written down as facts to check JSON
against (npm serves only 4.28.0 here, whose own schemas tests/sdk runs).

Read from StackOneHQ/stackone-client-typescript at v4.34.1 (`src/sdk/models/shared/`
`connectsessioncreate.ts`, `connectsessiontokenauthlink.ts`, `connectsession.ts`,
`linkedaccount.ts`): for each body, its wire fields, whether each is required, and the
JSON types it may take. The changes since 4.28: `scheduling` is a category again (4.32.2),
`integration_id` on connect-session create and both session answers (4.33.0, nullable),
`organization_id` a string where it was a number (4.34.0), statuses `suspended`,
`archived` and `expired` (4.32.1), `shared` on accounts (4.34.1, nullable).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NULL = type(None)
CATEGORIES = frozenset(
    {
        *("ats", "hris", "hris-legacy", "crm", "iam", "marketing", "lms", "stackone"),
        *("documents", "ticketing", "screening", "messaging", "accounting", "scheduling"),
    }
)
ACCOUNT_STATUSES = frozenset({"active", "inactive", "suspended", "archived", "expired", "error"})
SESSION_TYPES = frozenset({"production", "test"})


@dataclass(frozen=True)
class Field:
    """One wire field: the JSON types it may take, and whether it must be there."""

    types: tuple[type, ...]
    required: bool = False


def _text(required: bool = False) -> Field:
    return Field((str,), required)


def _nullable(*types: type) -> Field:
    return Field((*types, NULL))


_SESSION_COMMON = {
    "id": Field((int,), required=True),
    "organization_id": _text(required=True),
    "project_id": _text(required=True),
    "origin_owner_id": _text(required=True),
    "origin_owner_name": _text(required=True),
    "origin_username": _nullable(str),
    "provider": _nullable(str),
    "categories": _nullable(list),
    "account_id": _nullable(str),
    "label": _nullable(str),
    "metadata": _nullable(dict),
    "type": _nullable(str),
    "external_trigger_token": _nullable(str),
    "integration_id": _nullable(str),
    "created_at": _text(required=True),
}
CONNECT_SESSION_TOKEN_AUTH_LINK = {
    **_SESSION_COMMON,
    "token": _text(required=True),
    "auth_link_url": _text(required=True),
}
"""The answer of `POST /connect_sessions`."""
CONNECT_SESSION = _SESSION_COMMON
"""The answer of `POST /connect_sessions/authenticate`."""
CONNECT_SESSION_CREATE = {
    "origin_owner_id": _text(required=True),
    "origin_owner_name": _text(required=True),
    "origin_username": _nullable(str),
    "provider": _nullable(str),
    "provider_version": _nullable(str),
    "categories": _nullable(list),
    "expires_in": _nullable(int),
    "account_id": _nullable(str),
    "integration_id": _nullable(str),
    "label": _nullable(str),
    "metadata": _nullable(dict),
    "multiple": _nullable(bool),
    "type": _nullable(str),
}
"""The body of `POST /connect_sessions`."""
LINKED_ACCOUNT = {
    "id": _text(required=True),
    "provider": _text(required=True),
    "provider_name": _nullable(str),
    "status": _text(required=True),
    "status_reasons": _nullable(list),
    "origin_owner_id": _text(required=True),
    "origin_owner_name": _text(required=True),
    "origin_username": _nullable(str),
    "label": _nullable(str),
    "type": _nullable(str),
    "shared": _nullable(bool),
    "credentials": _nullable(dict),
    "setup_information": _nullable(dict),
    "created_at": _text(required=True),
    "updated_at": _text(required=True),
}
"""An account, as `GET /accounts/{id}`, `GET /accounts` and `DELETE` answer it."""


def problems(fields: dict[str, Field], body: dict[str, Any]) -> list[str]:
    """What in `body` the SDK 4.34 model `fields` would not take: unknown keys, missing
    required ones, wrong JSON types (a bool is not a number), and enum values."""
    found = [f"{key} is not a field" for key in body if key not in fields]
    for key, field in fields.items():
        if key not in body:
            found += [f"{key} is missing"] if field.required else []
            continue
        value = body[key]
        if isinstance(value, bool) and bool not in field.types:
            found.append(f"{key} is a boolean")
        elif not isinstance(value, field.types):
            found.append(f"{key} is {type(value).__name__}, not {field.types}")
    found += [f"category {c!r}" for c in body.get("categories") or [] if c not in CATEGORIES]
    if "status" in fields and body.get("status") not in ACCOUNT_STATUSES:
        found.append(f"status {body.get('status')!r} is not one the SDK names")
    if body.get("type") not in {None, *SESSION_TYPES}:
        found.append(f"type {body['type']!r}")
    return found
