"""Conversions from StackOne's models to the v1 protobuf messages (the event log's own
records are converted in `service.events.records`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from service.stackone.models import (
    ConnectionAttempt,
    ConnectorProfile,
    ConnectSession,
    LinkedAccount,
)
from stackone_connect.v1 import stackone_connect_pb2 as pb

_STATUSES = {
    "active": pb.ACCOUNT_STATUS_ACTIVE,
    "inactive": pb.ACCOUNT_STATUS_INACTIVE,
    "error": pb.ACCOUNT_STATUS_ERROR,
    "suspended": pb.ACCOUNT_STATUS_SUSPENDED,
    "archived": pb.ACCOUNT_STATUS_ARCHIVED,
    "expired": pb.ACCOUNT_STATUS_EXPIRED,
}
_ATTEMPT_STATUSES = {
    "pending": pb.CONNECTION_ATTEMPT_STATUS_PENDING,
    "authenticated": pb.CONNECTION_ATTEMPT_STATUS_AUTHENTICATED,
    "error": pb.CONNECTION_ATTEMPT_STATUS_ERROR,
    "cancelled": pb.CONNECTION_ATTEMPT_STATUS_CANCELLED,
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DEFAULT_SESSION_SECONDS = 1800  # StackOne's default `expires_in`.
AUTH_LINK_SECONDS = 5 * 24 * 3600
"""How long an Auth Link sent to a person should last: 5 days, as StackOne's guide says."""


def timestamp(moment: datetime | None) -> Timestamp | None:
    """A protobuf Timestamp for `moment` (naive datetimes are taken as UTC)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # Exact, as `Timestamp.FromDatetime`, at a third of its cost (two per CreateSession).
    since = moment - _EPOCH
    return Timestamp(seconds=since.days * 86400 + since.seconds, nanos=since.microseconds * 1000)


def account_status(raw: str | None) -> pb.AccountStatus.ValueType:
    """Normalises StackOne's status string; unknown values become OTHER, not errors."""
    if not raw:
        return pb.ACCOUNT_STATUS_UNSPECIFIED
    return _STATUSES.get(raw.lower(), pb.ACCOUNT_STATUS_OTHER)


def account_message(account: LinkedAccount) -> pb.Account:
    """The proto `Account` for a StackOne linked account (credentials never copied)."""
    return pb.Account(
        id=account.id,
        provider=account.provider or "",
        provider_name=account.provider_name or "",
        origin_owner_id=account.origin_owner_id or "",
        origin_owner_name=account.origin_owner_name or "",
        origin_username=account.origin_username or "",
        status=account_status(account.status),
        raw_status=account.status or "",
        status_reasons=[
            pb.StatusReason(
                code=reason.code or "",
                description=reason.description or "",
                timestamp=timestamp(reason.timestamp),
            )
            for reason in account.status_reasons or ()
        ],
        label=account.label or "",
        created_at=timestamp(account.created_at),
        updated_at=timestamp(account.updated_at),
        type=account.type or "",
        shared=account.shared,
        categories=account.categories or [],
    )


def session_message(session: ConnectSession, expires_in: int | None) -> pb.Session:
    """The proto `Session`; `expires_at` counts `expires_in` from StackOne's `created_at`."""
    created_at = session.created_at or datetime.now(UTC)
    lifetime = timedelta(seconds=expires_in or DEFAULT_SESSION_SECONDS)
    return _session(session, created_at, timestamp(created_at + lifetime))


def fetched_session_message(session: ConnectSession) -> pb.Session:
    """The proto `Session` as StackOne answers it later, with no `expires_at` (StackOne
    does not say it; only the creator's `expires_in` did)."""
    return _session(session, session.created_at, None)


def _session(
    session: ConnectSession, created_at: datetime | None, expires_at: Timestamp | None
) -> pb.Session:
    # One profile id under both names: StackOne answers either, or both alike.
    profile_id = session.connector_profile_id or session.integration_id or ""
    return pb.Session(
        id=session.id,
        token=session.token or "",
        auth_link_url=session.auth_link_url or "",
        expires_at=expires_at,
        provider=session.provider or "",
        categories=session.categories or [],
        origin_owner_id=session.origin_owner_id or "",
        origin_owner_name=session.origin_owner_name or "",
        created_at=timestamp(created_at),
        account_id=session.account_id or "",
        label=session.label or "",
        metadata=_struct(session.metadata),
        origin_username=session.origin_username or "",
        type=session.type or "",
        organization_id=session.organization_id or "",
        project_id=session.project_id or "",
        external_trigger_token=session.external_trigger_token or "",
        integration_id=profile_id,
        connector_profile_id=profile_id,
        latest_connection_attempt=_attempt(session.latest_connection_attempt),
    )


def _attempt(attempt: ConnectionAttempt | None) -> pb.ConnectionAttempt | None:
    if attempt is None:
        return None
    raw = attempt.status or ""
    return pb.ConnectionAttempt(
        id=attempt.id,
        status=_ATTEMPT_STATUSES.get(raw, pb.CONNECTION_ATTEMPT_STATUS_OTHER)
        if raw
        else pb.CONNECTION_ATTEMPT_STATUS_UNSPECIFIED,
        raw_status=raw,
        account_id=attempt.account_secure_id or "",
        error_code=attempt.oauth_error_code or "",
        error_description=attempt.oauth_error_description or "",
        created_at=timestamp(attempt.created_at),
        updated_at=timestamp(attempt.updated_at),
    )


def connector_profile_message(profile: ConnectorProfile) -> pb.ConnectorProfile:
    """The proto `ConnectorProfile` of StackOne's."""
    return pb.ConnectorProfile(
        id=profile.id,
        name=profile.name or "",
        connector_key=profile.connector_key or "",
        connector_label=profile.connector_label or "",
        categories=profile.categories or [],
        active=bool(profile.active),
        default=bool(profile.default),
        connector_version=profile.connector_version or "",
        connector_pinned_version=profile.connector_pinned_version or "",
        connector_owner=profile.connector_owner or "",
        authentication_config_key=profile.authentication_config_key or "",
        authentication_config_label=profile.authentication_config_label or "",
        environment=profile.environment or "",
        release_stage=profile.release_stage or "",
        logo_url=profile.logo_url or "",
        created_at=timestamp(profile.created_at),
        updated_at=timestamp(profile.updated_at),
    )


def _struct(values: dict[str, Any] | None) -> Struct | None:
    if values is None:
        return None
    struct = Struct()
    struct.update(values)
    return struct
