"""Typed request and response bodies of the StackOne endpoints this service uses."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator


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
    integration_id: str | None = None

    def body(self) -> dict[str, Any]:
        """The JSON body, without unset fields."""
        return self.model_dump(exclude_none=True)


class ConnectSession(_Model):
    """A connect session; `token` and `auth_link_url` only when just created."""

    id: str
    organization_id: str | None = None
    project_id: str | None = None
    origin_owner_id: str | None = None
    origin_owner_name: str | None = None
    origin_username: str | None = None
    provider: str | None = None
    categories: list[str] | None = None
    account_id: str | None = None
    label: str | None = None
    metadata: dict[str, Any] | None = None
    type: str | None = None
    created_at: datetime | None = None
    token: str | None = None
    auth_link_url: str | None = None

    @field_validator("id", "organization_id", mode="before")
    @classmethod
    def _number_as_text(cls, value: object) -> object:
        # Older StackOne docs send these as numbers, newer ones as strings.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class StatusReason(_Model):
    """Why an account has its status."""

    code: str | None = None
    description: str | None = None
    timestamp: datetime | None = None


class LinkedAccount(_Model):
    """A linked account. Credentials and setup information are deliberately not kept."""

    id: str
    provider: str | None = None
    provider_name: str | None = None
    status: str | None = None
    status_reasons: list[StatusReason] | None = None
    origin_owner_id: str | None = None
    origin_owner_name: str | None = None
    origin_username: str | None = None
    label: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

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
