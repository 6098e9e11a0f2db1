"""StackOne's contract as its 2026-06 models publish it, written down as facts to check
JSON against (as tests/harness/stackone_434.py does for the TypeScript SDK 4.34).

Read from StackOneHQ/stackone-client-ruby at commit 500b0df7 (2026-06-01), generated from
the same API description as the TypeScript SDK: `lib/stack_one/models/shared/`
(`connectsessioncreate.rb`, `connectsessiontokenauthlink.rb`, `connectsession.rb`,
`latest_connection_attempt.rb`, `connectsession_status.rb`, `linkedaccount.rb`,
`connectorprofile.rb`, `connectorprofilespaginated.rb`, `connectorprofileversion.rb`,
`connectorprofilepinnedversion.rb`, `upsertconnectorprofilepinnedversion.rb`) and the
operations of `lib/stack_one/connect_sessions.rb` and `connector_profiles.rb`. What changed
since 4.34: `connector_profile_id` on the create body and both session shapes, with
`integration_id` its deprecated alias; `provider_version` deprecated ("can cause session
creation to fail"); `latest_connection_attempt` on both session shapes; `GET
/connect_sessions/{id}`; `categories` on linked accounts; the connector profiles API.
"""

from __future__ import annotations

from typing import Any

from tests.harness.stackone_434 import ACCOUNT_STATUSES, CATEGORIES, NULL, SESSION_TYPES, Field

__all__ = ["ACCOUNT_STATUSES", "CATEGORIES", "SESSION_TYPES"]

ATTEMPT_STATUSES = frozenset({"pending", "authenticated", "error", "cancelled"})
"""`ConnectSessionStatus`, an open enum: the status of a session's latest attempt."""
DEPRECATED_CREATE_FIELDS = frozenset({"integration_id", "provider_version"})
"""`@deprecated true` in `ConnectSessionCreate`: the alias, and the version that fails."""


def _text(required: bool = False) -> Field:
    return Field((str,), required)


def _nullable(*types: type) -> Field:
    return Field((*types, NULL))


PATHS = {
    "get_connect_session": ("GET", "/connect_sessions/{id}"),
    "list_connector_profiles": ("GET", "/connector_profiles"),
    "list_connector_profile_versions": ("GET", "/connector_profiles/{connectorProfileId}/versions"),
    "get_pinned_version": ("GET", "/connector_profiles/{connectorProfileId}/pinned_version"),
    "upsert_pinned_version": ("PUT", "/connector_profiles/{connectorProfileId}/pinned_version"),
    "delete_pinned_version": ("DELETE", "/connector_profiles/{connectorProfileId}/pinned_version"),
}
"""Each new operation's method and path; the pinned version's delete answers 204."""
LIST_CONNECTOR_PROFILES_QUERY = frozenset({"connector_key", "enabled", "page", "page_size"})
"""The query of `GET /connector_profiles` (`page_size` 25 by default)."""

LATEST_CONNECTION_ATTEMPT = {
    "id": _text(required=True),
    "status": _nullable(str),
    "account_secure_id": _nullable(str),
    "oauth_error_code": _nullable(str),
    "oauth_error_description": _nullable(str),
    "created_at": _text(required=True),
    "updated_at": _text(required=True),
}
"""A session's `latest_connection_attempt`: "when status is authenticated, the resulting
account is at account_secure_id"."""

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
    "connector_profile_id": _nullable(str),
    "integration_id": _nullable(str),
    "latest_connection_attempt": _nullable(dict),
    "created_at": _text(required=True),
}
CONNECT_SESSION_TOKEN_AUTH_LINK = {
    **_SESSION_COMMON,
    "token": _text(required=True),
    "auth_link_url": _text(required=True),
}
"""The answer of `POST /connect_sessions`."""
CONNECT_SESSION = _SESSION_COMMON
"""The answer of `GET /connect_sessions/{id}` and `POST /connect_sessions/authenticate`."""
CONNECT_SESSION_CREATE = {
    "origin_owner_id": _text(required=True),
    "origin_owner_name": _text(required=True),
    "origin_username": _nullable(str),
    "provider": _nullable(str),
    "provider_version": _nullable(str),
    "categories": _nullable(list),
    "expires_in": _nullable(int),
    "account_id": _nullable(str),
    "connector_profile_id": _nullable(str),
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
    "categories": _nullable(list),
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
CONNECTOR_PROFILE = {
    "id": _text(required=True),
    "name": _text(required=True),
    "connector_key": _text(required=True),
    "connector_label": _text(required=True),
    "categories": Field((list,), required=True),
    "active": Field((bool,), required=True),
    "default": Field((bool,), required=True),
    "release_stage": _text(required=True),
    "logo_url": _text(required=True),
    "created_at": _text(required=True),
    "updated_at": _text(required=True),
    "authentication_config_key": _nullable(str),
    "authentication_config_label": _nullable(str),
    "connector_owner": _nullable(str),
    "connector_pinned_version": _nullable(str),
    "connector_version": _nullable(str),
    "environment": _nullable(str),
}
"""An entry of `GET /connector_profiles`."""
CONNECTOR_PROFILES_PAGINATED = {
    "data": Field((list,), required=True),
    "page": Field((int,), required=True),
    "page_size": Field((int,), required=True),
    "total": Field((int,), required=True),
}
"""The answer of `GET /connector_profiles`."""
CONNECTOR_PROFILE_VERSION = {
    "version": _text(required=True),
    "owner": _text(required=True),
    "builtin": Field((bool,), required=True),
    "pinned": Field((bool,), required=True),
}
"""An entry of `GET /connector_profiles/{id}/versions` (a bare array)."""
CONNECTOR_PROFILE_PINNED_VERSION = {
    "connector_profile_id": _text(required=True),
    "pinned_version": _text(required=True),
    "owner": _nullable(str),
    "created_at": _text(required=True),
    "updated_at": _text(required=True),
}
"""The answer of the pinned version's get and put."""
UPSERT_CONNECTOR_PROFILE_PINNED_VERSION = {
    "pinned_version": _text(required=True),
    "owner": _nullable(str),
}
"""The body of the pinned version's put."""

_ENUMS = {
    id(LINKED_ACCOUNT): ("status", ACCOUNT_STATUSES),
    id(LATEST_CONNECTION_ATTEMPT): ("status", ATTEMPT_STATUSES),
}


def problems(fields: dict[str, Field], body: dict[str, Any]) -> list[str]:
    """What in `body` the 2026-06 model `fields` would not take: unknown keys, missing
    required ones, wrong JSON types (a bool is not a number), categories, session types
    and the statuses the model names (an attempt's inside a session is checked too)."""
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
    if "connector_key" not in fields:  # a profile's categories are free text
        found += [f"category {c!r}" for c in body.get("categories") or [] if c not in CATEGORIES]
    if (enum := _ENUMS.get(id(fields))) is not None and body.get(enum[0]) not in enum[1]:
        found.append(f"{enum[0]} {body.get(enum[0])!r} is not one the model names")
    if fields is _SESSION_COMMON or "token" in fields:
        if body.get("type") not in {None, *SESSION_TYPES}:
            found.append(f"type {body['type']!r}")
        if isinstance(attempt := body.get("latest_connection_attempt"), dict):
            found += [f"attempt: {p}" for p in problems(LATEST_CONNECTION_ATTEMPT, attempt)]
    return found
