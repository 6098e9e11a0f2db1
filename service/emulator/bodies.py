"""Every JSON request body the emulator takes, validated by pydantic: a body that is not
what an endpoint takes is a 400 naming each field at fault, never a half-applied change
or a 500.

The emulator's own actions (faults, behaviour, webhooks) refuse a misspelt key; the bodies
StackOne's clients send (sessions, the Hub's forms) ignore keys they do not know, as
StackOne does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, ValidationError

Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
# StackOne's, as its SDK (@stackone/stackone-client-ts 4.34) lists them.
CATEGORIES = frozenset(
    {
        *("ats", "hris", "hris-legacy", "crm", "iam", "marketing", "lms", "stackone"),
        *("documents", "ticketing", "screening", "messaging", "accounting", "scheduling"),
    }
)
SESSION_TYPES = frozenset({"production", "test"})
STATUSES = frozenset({"active", "inactive", "suspended", "archived", "expired", "error"})
BROKEN_STATUSES = frozenset({"error", "expired", "suspended"})


def _one_of(allowed: Iterable[str]) -> AfterValidator:
    """A check that the value is one of `allowed`, naming them all when it is not."""
    choices = frozenset(allowed)

    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(sorted(choices))}")
        return value

    return AfterValidator(check)


Status = Annotated[str, _one_of(STATUSES)]
BrokenStatus = Annotated[str, _one_of(BROKEN_STATUSES)]
Category = Annotated[str, _one_of(CATEGORIES)]
SessionType = Annotated[str, _one_of(SESSION_TYPES)]
Text = Annotated[str, Field(min_length=1)]


class _Body(BaseModel):
    # strict: `true` is not a number, "5" is not an int; extra: a misspelt key is refused.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _ClientBody(BaseModel):
    # What StackOne's clients send: typed as strictly, but keys StackOne ignores are ignored.
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class FaultBody(_Body):
    """`POST /emulator/faults` (see `state.Fault` for what each field does)."""

    path_prefix: str = "/"
    path: str | None = None
    method: str | None = None
    status: Annotated[int, Field(ge=100, le=599)] | None = None
    delay: Seconds = 0.0
    retry_after: float | str | None = None
    reset: bool = False
    malformed: bool = False
    body: str | None = None
    repeat: Annotated[int, Field(ge=1, le=100_000_000)] = 1  # a body past any bound we keep
    times: Annotated[int, Field(ge=1)] | None = None


class BehaviourBody(_Body):
    """`PUT /emulator/behaviour`: only the fields given change."""

    latency: Seconds = 0.0
    rate_limit: Annotated[int, Field(ge=1)] | None = None
    rate_window: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 60.0


class WebhooksBody(_Body):
    """`PUT /emulator/webhooks`: only the fields given change."""

    url: str | None = None
    secret: str | None = None
    enabled: bool = True


class SessionBody(_ClientBody):
    """`POST /connect_sessions`."""

    origin_owner_id: Text
    origin_owner_name: Text
    origin_username: str | None = None
    provider: str | None = None
    provider_version: str | None = None
    account_id: str | None = None
    label: str | None = None
    connector_profile_id: str | None = None
    integration_id: str | None = None  # the deprecated alias of connector_profile_id
    categories: list[Category] | None = None
    expires_in: Annotated[int, Field(ge=0)] | None = None  # 0 or null: the default
    type: SessionType | None = None
    multiple: bool | None = None
    metadata: dict[str, JsonValue] | None = None


class TokenBody(_ClientBody):
    """`POST /connect_sessions/authenticate`: a token that is not a live session's is a 401."""

    token: JsonValue = None


class ReasonBody(_ClientBody):
    """A status reason as given; the timestamp is now when it is missing."""

    code: str | None = None
    description: str | None = None
    timestamp: str | None = None


class LinkBody(_ClientBody):
    """`POST /emulator/link`: "the user completed the Hub" for a session."""

    token: JsonValue = None
    provider: str | None = None
    status: Status | None = None
    status_reasons: list[ReasonBody] | None = None


class AccountSpec(_ClientBody):
    """`POST /emulator/accounts`: an account made without a session."""

    provider: str | None = None
    status: Status | None = None
    status_reasons: list[ReasonBody] | None = None
    origin_owner_id: str | None = None
    origin_owner_name: str | None = None
    origin_username: str | None = None
    label: str | None = None
    type: str | None = None
    shared: bool = False
    categories: list[Category] | None = None  # the provider's, from the catalogue, if None


class AccountChanges(_ClientBody):
    """`PATCH /emulator/accounts/{id}`: only the fields given change (`model_fields_set`;
    the defaults below are never applied)."""

    status: Status = "active"
    status_reasons: list[ReasonBody] | None = None
    label: str | None = None
    provider: str = ""
    shared: bool = False


class BreakBody(_ClientBody):
    """`POST /emulator/accounts/{id}/break`."""

    status: BrokenStatus = "error"
    status_reasons: list[ReasonBody] | None = None


class CredentialsBody(_ClientBody):
    """`POST` and `PATCH /hub/accounts`: the Hub's submitted form."""

    integration_id: str | None = None
    credentials: dict[str, JsonValue]


class PinnedVersionBody(_ClientBody):
    """`PUT /connector_profiles/{id}/pinned_version`."""

    pinned_version: Text
    owner: str | None = None


class BadBody(ValueError):
    """A body an endpoint does not take; the message names each field and what is wrong."""


_B = TypeVar("_B", bound=BaseModel)


def parsed(kind: type[_B], body: dict[str, Any]) -> _B:
    """`body` as a `kind`, or `BadBody` saying why not."""
    try:
        return kind.model_validate(body)
    except ValidationError as error:
        problems = [
            f"{'.'.join(map(str, problem['loc'])) or 'body'}: {problem['msg']}"
            for problem in error.errors(include_url=False)
        ]
        raise BadBody("; ".join(problems)) from None
