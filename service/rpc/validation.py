"""Checks every request before any upstream call and turns it into domain values.

Each check names the offending field, so `INVALID_ARGUMENT` carries one
`google.rpc.BadRequest` field violation per problem, all reported at once.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

from google.protobuf.json_format import MessageToDict

from service.api.v1 import stackone_connect_pb2 as pb
from service.events.feed import StartPosition
from service.events.model import EventFilter
from service.stackone.models import AccountListQuery, ConnectSessionCreate

CATEGORIES = frozenset(
    {
        "ats",
        "hris",
        "crm",
        "iam",
        "marketing",
        "lms",
        "stackone",
        "documents",
        "ticketing",
        "screening",
        "messaging",
        "accounting",
        "scheduling",
    }
)
ACCOUNT_STATUSES = frozenset({"active", "inactive", "suspended", "archived", "expired", "error"})
_PROVIDER = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_EVENT_TYPE = re.compile(r"account\.[a-z_]{1,64}")
MAX_TEXT = 255
MAX_FILTER_VALUES = 100
MAX_PAGE_SIZE = 100
MAX_EVENTS_PER_MESSAGE = 1000
DEFAULT_PAGE_SIZE = 25
MAX_EXPIRES_IN = 30 * 24 * 3600


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field and what is wrong with it."""

    field: str
    description: str


class InvalidRequest(ValueError):
    """A request failed validation; `violations` lists every bad field."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        self.violations = violations
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))


@dataclass(slots=True)
class _Checker:
    violations: list[FieldViolation] = field(default_factory=list)

    def fail(self, name: str, description: str) -> None:
        self.violations.append(FieldViolation(name, description))

    def text(self, name: str, value: str, *, required: bool = False) -> str | None:
        if not value.strip():
            if required:
                self.fail(name, "is required")
            return None
        if len(value) > MAX_TEXT:
            self.fail(name, f"must be at most {MAX_TEXT} characters (got {len(value)})")
        return value

    def values(self, name: str, values: list[str], pattern: re.Pattern[str] | None = None) -> None:
        if len(values) > MAX_FILTER_VALUES:
            self.fail(name, f"must have at most {MAX_FILTER_VALUES} values")
        for index, value in enumerate(values):
            if not value.strip() or len(value) > MAX_TEXT:
                self.fail(f"{name}[{index}]", f"must be 1 to {MAX_TEXT} characters")
            elif pattern is not None and not pattern.fullmatch(value):
                self.fail(f"{name}[{index}]", f"'{value}' does not match {pattern.pattern}")

    def done(self) -> None:
        if self.violations:
            raise InvalidRequest(self.violations)


def session_create(request: pb.CreateSessionRequest) -> ConnectSessionCreate:
    """Validates `CreateSession` and builds StackOne's request body."""
    check = _Checker()
    owner_id = check.text("origin_owner_id", request.origin_owner_id, required=True)
    owner_name = check.text("origin_owner_name", request.origin_owner_name, required=True)
    check.text("origin_username", request.origin_username)
    check.text("account_id", request.account_id)
    check.text("label", request.label)
    if request.provider and not _PROVIDER.fullmatch(request.provider):
        check.fail("provider", f"'{request.provider}' is not a provider key like 'bamboohr'")
    for index, category in enumerate(request.categories):
        if category not in CATEGORIES:
            check.fail(
                f"categories[{index}]",
                f"'{category}' is not one of {', '.join(sorted(CATEGORIES))}",
            )
    if request.HasField("expires_in") and not 0 < request.expires_in <= MAX_EXPIRES_IN:
        check.fail("expires_in", f"must be between 1 and {MAX_EXPIRES_IN} seconds")
    check.done()
    return ConnectSessionCreate(
        origin_owner_id=owner_id or "",
        origin_owner_name=owner_name or "",
        origin_username=request.origin_username or None,
        provider=request.provider or None,
        categories=list(request.categories) or None,
        expires_in=request.expires_in if request.HasField("expires_in") else None,
        account_id=request.account_id or None,
        label=request.label or None,
        metadata=MessageToDict(request.metadata) if request.HasField("metadata") else None,
        multiple=request.multiple or None,
    )


def account_id(value: str) -> str:
    """Validates a required account id."""
    check = _Checker()
    check.text("account_id", value, required=True)
    check.done()
    return value


def page_token(page: int) -> str:
    """The opaque token of page number `page`."""
    return base64.urlsafe_b64encode(f"page:{page}".encode()).decode().rstrip("=")


def _page_of(token: str, check: _Checker) -> int:
    if not token:
        return 0
    try:
        decoded = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        prefix, _, number = decoded.partition(":")
        if prefix == "page" and number.isdigit():
            return int(number)
    except (binascii.Error, UnicodeDecodeError):
        pass
    check.fail("page_token", "is not a next_page_token this service returned")
    return 0


def list_query(request: pb.ListAccountsRequest) -> AccountListQuery:
    """Validates `ListAccounts` and builds StackOne's query."""
    check = _Checker()
    if not 0 <= request.page_size <= MAX_PAGE_SIZE:
        check.fail(
            "page_size", f"must be between 1 and {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})"
        )
    check.values("origin_owner_ids", list(request.origin_owner_ids))
    check.values("providers", list(request.providers), _PROVIDER)
    check.values("account_ids", list(request.account_ids))
    for index, status in enumerate(request.statuses):
        if status not in ACCOUNT_STATUSES:
            check.fail(
                f"statuses[{index}]",
                f"'{status}' is not one of {', '.join(sorted(ACCOUNT_STATUSES))}",
            )
    page = _page_of(request.page_token, check)
    check.done()
    return AccountListQuery(
        page=page,
        page_size=request.page_size or DEFAULT_PAGE_SIZE,
        origin_owner_ids=list(request.origin_owner_ids),
        providers=list(request.providers),
        account_ids=list(request.account_ids),
        statuses=list(request.statuses),
    )


def stream_request(
    request: pb.StreamAccountEventsRequest,
) -> tuple[EventFilter, StartPosition, int]:
    """Validates `StreamAccountEvents` into a filter, a start position and a batch size."""
    check = _Checker()
    check.values("providers", list(request.providers), _PROVIDER)
    check.values("origin_owner_ids", list(request.origin_owner_ids))
    check.values("account_ids", list(request.account_ids))
    check.values("event_types", list(request.event_types), _EVENT_TYPE)
    start = StartPosition.now()
    which = request.WhichOneof("start")
    if which == "from_earliest":
        start = StartPosition.earliest()
    elif which == "after_cursor":
        if request.after_cursor.isdigit() and len(request.after_cursor) <= 19:
            start = StartPosition.after(int(request.after_cursor))
        else:
            check.fail("after_cursor", "is not a cursor from an event or a bookmark")
    if request.max_events_per_message > MAX_EVENTS_PER_MESSAGE:
        check.fail("max_events_per_message", f"must be at most {MAX_EVENTS_PER_MESSAGE}")
    check.done()
    event_filter = EventFilter.of(
        providers=request.providers,
        origin_owner_ids=request.origin_owner_ids,
        account_ids=request.account_ids,
        event_types=request.event_types,
    )
    return event_filter, start, request.max_events_per_message
