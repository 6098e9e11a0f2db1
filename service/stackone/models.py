"""Typed request and response bodies of the StackOne endpoints this service uses."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

# StackOne's answers are untrusted: bounded here, before they reach a URL, a subject or a
# stored event. Limits are far above anything StackOne documents.
MAX_ID = 255
MAX_TEXT = 4096
MAX_REASONS = 100
MAX_PAGE_ITEMS = 1000  # a page larger than any page_size StackOne takes
MAX_METADATA_DEPTH = 16  # a Struct of this depth stays under protobuf's recursion limit (100)
MAX_METADATA_BYTES = 64 * 1024
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def usable_id(value: str) -> str:
    """`value` when it can be an id in a URL, a subject or a log line; else ValueError."""
    if not value.strip(".") or not value.isprintable():
        raise ValueError("an id must be printable and not only dots")
    return value


def plausible_moment(moment: datetime) -> datetime:
    """`moment` in UTC when it is between EARLIEST and LATEST; else ValueError."""
    # Far-off dates would overflow when a lifetime is added or converted to a Timestamp.
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if not EARLIEST <= aware <= LATEST:
        raise ValueError(f"a date between {EARLIEST.year} and {LATEST.year} is expected")
    return aware


def _modest_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    # It becomes a google.protobuf.Struct that every gRPC client must be able to parse.
    if len(orjson.dumps(metadata)) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata must be at most {MAX_METADATA_BYTES} bytes")
    pending: list[tuple[object, int]] = [(metadata, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict):
            children: list[object] = list(value.values())
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > MAX_METADATA_DEPTH:
            raise ValueError(f"metadata must nest at most {MAX_METADATA_DEPTH} levels")
        pending += [(child, depth + 1) for child in children]
    return metadata


Id = Annotated[str, Field(min_length=1, max_length=MAX_ID), AfterValidator(usable_id)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
Moment = Annotated[datetime, AfterValidator(plausible_moment)]
Metadata = Annotated[dict[str, Any], AfterValidator(_modest_metadata)]


class _Model(BaseModel):
    # StackOne adds fields over time: ignore what we do not know rather than fail.
    model_config = ConfigDict(extra="ignore", frozen=True)


class ConnectSessionCreate(_Model):
    """Body of `POST /connect_sessions`."""

    origin_owner_id: str
    origin_owner_name: str
    origin_username: str | None = None
    provider: str | None = None
    categories: list[str] | None = None
    expires_in: int | None = None
    account_id: str | None = None
    multiple: bool | None = None
    label: str | None = None
    metadata: dict[str, Any] | None = None
    type: str | None = None
    provider_version: str | None = None  # deprecated by StackOne, still sent when given
    connector_profile_id: str | None = None  # `integration_id`, its deprecated alias, is not sent

    def body(self) -> dict[str, Any]:
        """The JSON body, without unset fields."""
        return self.model_dump(exclude_none=True)


class ConnectionAttempt(_Model):
    """A session's `latest_connection_attempt`: StackOne's status is an open enum."""

    id: Id
    status: Text | None = None
    account_secure_id: Text | None = None
    oauth_error_code: Text | None = None
    oauth_error_description: Text | None = None
    created_at: Moment | None = None
    updated_at: Moment | None = None


class ConnectSession(_Model):
    """A connect session; `token` and `auth_link_url` only when just created."""

    id: Id
    organization_id: Text | None = None
    project_id: Text | None = None
    origin_owner_id: Text | None = None
    origin_owner_name: Text | None = None
    origin_username: Text | None = None
    provider: Text | None = None
    categories: Annotated[list[Text], Field(max_length=MAX_REASONS)] | None = None
    account_id: Text | None = None
    label: Text | None = None
    metadata: Metadata | None = None
    type: Text | None = None
    external_trigger_token: Text | None = None
    integration_id: Text | None = None
    connector_profile_id: Text | None = None
    latest_connection_attempt: ConnectionAttempt | None = None
    created_at: Moment | None = None
    token: Text | None = None
    auth_link_url: Text | None = None

    @field_validator("id", "organization_id", mode="before")
    @classmethod
    def _number_as_text(cls, value: object) -> object:
        # StackOne sends `id` as a number, and `organization_id` as a string since its
        # SDK 4.34 (a number before): both are kept as text.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class StatusReason(_Model):
    """Why an account has its status."""

    code: Text | None = None
    description: Text | None = None
    timestamp: Moment | None = None


class LinkedAccount(_Model):
    """A linked account. Credentials and setup information are deliberately not kept
    (see the README's contract table)."""

    id: Id
    provider: Text | None = None
    provider_name: Text | None = None
    status: Text | None = None
    status_reasons: Annotated[list[StatusReason], Field(max_length=MAX_REASONS)] | None = None
    origin_owner_id: Text | None = None
    origin_owner_name: Text | None = None
    origin_username: Text | None = None
    label: Text | None = None
    type: Text | None = None
    shared: bool | None = None
    categories: Annotated[list[Text], Field(max_length=MAX_REASONS)] | None = None
    created_at: Moment | None = None
    updated_at: Moment | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class AccountListQuery(_Model):
    """Query of `GET /accounts`; list filters repeat their key."""

    page: int = 0
    page_size: int = 25
    origin_owner_ids: list[str] = []
    providers: list[str] = []
    account_ids: list[str] = []
    statuses: list[str] = []

    def params(self) -> list[tuple[str, str | int]]:
        """Query parameters in StackOne's form (`status=active&status=error`)."""
        params: list[tuple[str, str | int]] = [("page", self.page), ("page_size", self.page_size)]
        params += [("origin_owner_ids", value) for value in self.origin_owner_ids]
        params += [("providers", value) for value in self.providers]
        params += [("account_ids", value) for value in self.account_ids]
        params += [("status", value) for value in self.statuses]
        return params


class ConnectorProfile(_Model):
    """A connector profile of the project (`GET /connector_profiles`)."""

    id: Id
    name: Text | None = None
    connector_key: Text | None = None
    connector_label: Text | None = None
    categories: Annotated[list[Text], Field(max_length=MAX_REASONS)] | None = None
    active: bool | None = None
    default: bool | None = None
    connector_version: Text | None = None
    connector_pinned_version: Text | None = None
    connector_owner: Text | None = None
    authentication_config_key: Text | None = None
    authentication_config_label: Text | None = None
    environment: Text | None = None
    release_stage: Text | None = None
    logo_url: Text | None = None
    created_at: Moment | None = None
    updated_at: Moment | None = None


class ConnectorProfilesPage(_Model):
    """One page of `GET /connector_profiles`: StackOne pages by number and counts the total."""

    data: Annotated[list[ConnectorProfile], Field(max_length=MAX_PAGE_ITEMS)]
    page: int | None = None
    page_size: int | None = None
    total: int | None = None


class ConnectorProfileQuery(_Model):
    """Query of `GET /connector_profiles`. StackOne's models do not say where page numbers
    start: the first page is asked without one, later ones by the number it answered + 1."""

    page: int | None = None
    page_size: int = 25
    connector_key: str | None = None
    enabled: bool | None = None

    def params(self) -> list[tuple[str, str | int]]:
        """Query parameters in StackOne's form (`enabled=true`)."""
        params: list[tuple[str, str | int]] = [("page_size", self.page_size)]
        if self.page is not None:
            params.append(("page", self.page))
        if self.connector_key is not None:
            params.append(("connector_key", self.connector_key))
        if self.enabled is not None:
            params.append(("enabled", "true" if self.enabled else "false"))
        return params
