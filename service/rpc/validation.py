"""Checks every request before any upstream call and turns it into domain values.

Each check names the offending field, so `INVALID_ARGUMENT` carries a
`google.rpc.BadRequest` field violation per problem: the first `MAX_REPORTED_VIOLATIONS`,
then one entry saying how many more. Every check keeps to the bounds of
`service.rpc.limits`: a repeated field's count is checked before its values, a string's
length before its contents, a request's size before it is parsed.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Sequence, Sized
from dataclasses import dataclass, field
from typing import Any, TypeVar

from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError, Message

from service.events import cursors
from service.events.feed import StartPosition
from service.events.model import ACCOUNT_EVENT_TYPE, EventFilter
from service.events.registry import RegistryQuery
from service.rpc.limits import (
    DEFAULT_PAGE_SIZE,
    MAX_CATEGORIES,
    MAX_CURSOR,
    MAX_EVENTS_PER_MESSAGE,
    MAX_EXPIRES_IN,
    MAX_FILTER_VALUES,
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MAX_PAGE_NUMBER,
    MAX_PAGE_SIZE,
    MAX_PAGE_TOKEN_CHARS,
    MAX_QUOTED_VALUE_CHARS,
    MAX_REGISTRY_TOKEN_CHARS,
    MAX_REPORTED_VIOLATIONS,
    MAX_TEXT_CHARS,
    MAX_VIOLATION_DESCRIPTION_BYTES,
    MAX_VIOLATION_FIELD_BYTES,
    clip,
)
from service.stackone.client import MAX_REQUEST_TARGET_BYTES, list_target_bytes
from service.stackone.models import AccountListQuery, ConnectorProfileQuery, ConnectSessionCreate
from stackone_connect.v1 import stackone_connect_pb2 as pb

# StackOne's own lists, as its SDK (@stackone/stackone-client-ts 4.34) defines them.
CATEGORIES = frozenset(
    {
        *("ats", "hris", "hris-legacy", "crm", "iam", "marketing", "lms", "stackone"),
        *("documents", "ticketing", "screening", "messaging", "accounting", "scheduling"),
    }
)
SESSION_TYPES = frozenset({"production", "test"})
MAX_SESSION_ID = 2**53  # StackOne's ids are JSON numbers: exact up to here
ACCOUNT_STATUSES = frozenset({"active", "inactive", "suspended", "archived", "expired", "error"})
_PROVIDER = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
# Not str.isdigit() or int() alone: both also take other scripts' digits ('١٢٣', '²').
_ASCII_DIGITS = re.compile(r"[0-9]+")
# Dot segments would survive percent-encoding and change the StackOne path they go into.
_DOT_SEGMENTS = frozenset({".", ".."})

_MessageT = TypeVar("_MessageT", bound=Message)


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field and what is wrong with it; an empty `field` is the request as a whole."""

    field: str
    description: str


class InvalidRequest(ValueError):
    """A request failed validation; `violations` lists the bad fields.

    At most `MAX_REPORTED_VIOLATIONS` of them, each cut to a bounded size, then one entry
    "and N more" counting the rest (`unreported` are ones never recorded).
    """

    def __init__(self, violations: Sequence[FieldViolation], unreported: int = 0) -> None:
        reported = [
            FieldViolation(
                clip(v.field, MAX_VIOLATION_FIELD_BYTES),
                clip(v.description, MAX_VIOLATION_DESCRIPTION_BYTES),
            )
            for v in violations[:MAX_REPORTED_VIOLATIONS]
        ]
        more = unreported + max(0, len(violations) - MAX_REPORTED_VIOLATIONS)
        if more:
            reported.append(FieldViolation("", f"and {more} more"))
        self.violations = reported
        super().__init__(
            "; ".join(f"{v.field}: {v.description}" if v.field else v.description for v in reported)
        )


def _quoted(value: str) -> str:
    """The caller's value as quoted back in a violation: escaped and cut short."""
    if len(value) <= MAX_QUOTED_VALUE_CHARS:
        return repr(value)
    return repr(value[:MAX_QUOTED_VALUE_CHARS]) + "…"


def _number(text: str, maximum: int) -> int | None:
    """`text` as a number from 0 to `maximum` written in ASCII digits, or None."""
    if len(text) > len(str(maximum)) or not _ASCII_DIGITS.fullmatch(text):
        return None
    value = int(text)
    return value if value <= maximum else None


def parse(raw: bytes, message_type: type[_MessageT], max_bytes: int) -> _MessageT:
    """The request message in `raw`, or `InvalidRequest` if it is too big or not protobuf."""
    name = message_type.DESCRIPTOR.full_name
    if len(raw) > max_bytes:
        violation = FieldViolation(
            "", f"the request is {len(raw)} bytes; a {name} is at most {max_bytes}"
        )
        raise InvalidRequest([violation])
    try:
        return message_type.FromString(raw)
    except DecodeError:
        violation = FieldViolation("", f"the request bytes are not a valid {name} message")
        raise InvalidRequest([violation]) from None


@dataclass(slots=True)
class _Checker:
    violations: list[FieldViolation] = field(default_factory=list)
    unreported: int = 0

    def fail(self, name: str, description: str) -> None:
        # Past the reported ones only a count is kept, whatever the request holds.
        if len(self.violations) < MAX_REPORTED_VIOLATIONS:
            self.violations.append(FieldViolation(name, description))
        else:
            self.unreported += 1

    def text(self, name: str, value: str, *, required: bool = False) -> str | None:
        if len(value) > MAX_TEXT_CHARS:
            self.fail(name, f"must be at most {MAX_TEXT_CHARS} characters (got {len(value)})")
            return None
        if not value.strip():
            if required:
                self.fail(name, "is required")
            return None
        return value

    def count(self, name: str, values: Sized, limit: int) -> bool:
        """Whether `values` has at most `limit` items; checked before looking at any."""
        if len(values) > limit:
            self.fail(name, f"must have at most {limit} values (got {len(values)})")
            return False
        return True

    def values(
        self, name: str, values: Sequence[str], pattern: re.Pattern[str] | None = None
    ) -> None:
        if not self.count(name, values, MAX_FILTER_VALUES):
            return
        for index, value in enumerate(values):
            if len(value) > MAX_TEXT_CHARS or not value.strip():
                self.fail(f"{name}[{index}]", f"must be 1 to {MAX_TEXT_CHARS} characters")
            elif pattern is not None and not pattern.fullmatch(value):
                self.fail(f"{name}[{index}]", f"{_quoted(value)} does not match {pattern.pattern}")

    def one_of(self, name: str, values: Sequence[str], allowed: frozenset[str], limit: int) -> None:
        if not self.count(name, values, limit):
            return
        for index, value in enumerate(values):
            if value not in allowed:
                self.fail(
                    f"{name}[{index}]",
                    f"must be one of {', '.join(sorted(allowed))} (got {_quoted(value)})",
                )

    def metadata(self, struct: struct_pb2.Struct) -> dict[str, Any] | None:
        """`struct` as JSON-ready values, if it is small, shallow and finite enough."""
        size = struct.ByteSize()
        if size > MAX_METADATA_BYTES:
            self.fail("metadata", f"must be at most {MAX_METADATA_BYTES} bytes (got {size})")
            return None
        found = len(self.violations) + self.unreported
        # Iterative, so that nesting up to protobuf's own limit (100) costs no recursion.
        pending: list[tuple[str, struct_pb2.Struct | struct_pb2.ListValue, int]] = [
            ("metadata", struct, 1)
        ]
        while pending:
            path, container, depth = pending.pop()
            if depth > MAX_METADATA_DEPTH:
                self.fail(path, f"nests deeper than {MAX_METADATA_DEPTH} levels")
                continue
            if isinstance(container, struct_pb2.Struct):
                items = [(f"{path}.{key}", key, value) for key, value in container.fields.items()]
            else:
                items = [(f"{path}[{i}]", "", value) for i, value in enumerate(container.values)]
            for child, key, value in items:
                if len(key) > MAX_TEXT_CHARS:
                    self.fail(path, f"has a key longer than {MAX_TEXT_CHARS} characters")
                kind = value.WhichOneof("kind")
                if kind == "number_value" and not math.isfinite(value.number_value):
                    self.fail(child, "must be a finite number (JSON has no NaN or Infinity)")
                elif kind == "struct_value":
                    pending.append((child, value.struct_value, depth + 1))
                elif kind == "list_value":
                    pending.append((child, value.list_value, depth + 1))
        if len(self.violations) + self.unreported > found:
            return None
        return MessageToDict(struct)

    def done(self) -> None:
        if self.violations:
            raise InvalidRequest(self.violations, self.unreported)


def session_create(request: pb.CreateSessionRequest) -> ConnectSessionCreate:
    """Validates `CreateSession` and builds StackOne's request body."""
    check = _Checker()
    owner_id = check.text("origin_owner_id", request.origin_owner_id, required=True)
    owner_name = check.text("origin_owner_name", request.origin_owner_name, required=True)
    check.text("origin_username", request.origin_username)
    check.text("account_id", request.account_id)
    check.text("label", request.label)
    # The pattern gives up after 64 characters, whatever the length.
    if request.provider and not _PROVIDER.fullmatch(request.provider):
        check.fail("provider", f"{_quoted(request.provider)} is not a provider key like 'bamboohr'")
    check.one_of("categories", request.categories, CATEGORIES, MAX_CATEGORIES)
    if request.type and request.type not in SESSION_TYPES:
        allowed = ", ".join(sorted(SESSION_TYPES))
        check.fail("type", f"must be one of {allowed} (got {_quoted(request.type)})")
    check.text("provider_version", request.provider_version)
    profile_id = _connector_profile_id(request, check)
    if request.HasField("expires_in") and not 0 < request.expires_in <= MAX_EXPIRES_IN:
        check.fail("expires_in", f"must be between 1 and {MAX_EXPIRES_IN} seconds")
    metadata = check.metadata(request.metadata) if request.HasField("metadata") else None
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
        metadata=metadata,
        multiple=request.multiple or None,
        type=request.type or None,
        provider_version=request.provider_version or None,
        connector_profile_id=profile_id,
    )


def _connector_profile_id(request: pb.CreateSessionRequest, check: _Checker) -> str | None:
    """`connector_profile_id`, or `integration_id`, its deprecated alias; both given, they
    must agree."""
    profile_id = check.text("connector_profile_id", request.connector_profile_id)
    alias = check.text("integration_id", request.integration_id)
    if profile_id and alias and profile_id != alias:
        check.fail(
            "integration_id",
            f"is the deprecated name of connector_profile_id, and names another profile "
            f"({_quoted(alias)}, not {_quoted(profile_id)}): set connector_profile_id alone",
        )
    return profile_id or alias


def session_id(value: str) -> int:
    """Validates a required StackOne session id: a number, as `Session.id` holds it."""
    check = _Checker()
    number = _number(value, MAX_SESSION_ID)
    if not value:
        check.fail("session_id", "is required")
    elif number is None:
        check.fail("session_id", f"{_quoted(value)} is not a StackOne session id (a number)")
    check.done()
    return number or 0


_PROFILES_PAGE_KIND = "connector_profiles"


@dataclass(frozen=True, slots=True)
class ProfilesPosition:
    """Where a listing of connector profiles goes on: StackOne's page number to ask
    next (None: its first), and how many profiles the previous pages held."""

    page: int | None = None
    seen: int = 0

    def token(self) -> str:
        """The position, as a page token seals it."""
        return f"{_PROFILES_PAGE_KIND}:{self.page}:{self.seen}"


def profiles_position(position: str) -> ProfilesPosition | None:
    """The position a connector profiles page token holds; None when it holds another."""
    kind, _, rest = position.partition(":")
    page, _, seen = rest.partition(":")
    numbers = _number(page, MAX_PAGE_NUMBER), _number(seen, MAX_PAGE_NUMBER)
    if kind != _PROFILES_PAGE_KIND or numbers[0] is None or numbers[1] is None:
        return None
    return ProfilesPosition(numbers[0], numbers[1])


def connector_profiles_query(
    request: pb.ListConnectorProfilesRequest, position: ProfilesPosition
) -> ConnectorProfileQuery:
    """Validates `ListConnectorProfiles` and builds StackOne's query from `position`."""
    check = _Checker()
    if not 0 <= request.page_size <= MAX_PAGE_SIZE:
        check.fail(
            "page_size", f"must be between 1 and {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})"
        )
    if request.connector_key and not _PROVIDER.fullmatch(request.connector_key):
        check.fail(
            "connector_key", f"{_quoted(request.connector_key)} is not a key like 'bamboohr'"
        )
    check.done()
    return ConnectorProfileQuery(
        page=position.page,
        page_size=request.page_size or DEFAULT_PAGE_SIZE,
        connector_key=request.connector_key or None,
        enabled=request.enabled if request.HasField("enabled") else None,
    )


def account_id(value: str) -> str:
    """Validates a required account id."""
    check = _Checker()
    if check.text("account_id", value, required=True) in _DOT_SEGMENTS:
        check.fail("account_id", f"{_quoted(value)} is not an account id")
    check.done()
    return value


def page_token(page: int) -> str:
    """The opaque token of page number `page`."""
    return base64.urlsafe_b64encode(f"page:{page}".encode()).decode().rstrip("=")


_REGISTRY_PAGE_KIND = "registry"


def registry_page_token(cursor: int, last_account_id: str) -> str:
    """The opaque token of a registry listing's next page: the listing's cursor (every
    page reflects the first page's) and the account id it continues after."""
    raw = f"{_REGISTRY_PAGE_KIND}:{cursor}:{last_account_id}".encode(errors="surrogatepass")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _registry_position(token: str) -> tuple[int, str] | None:
    """The cursor and account id of a registry page token; None when it is not one."""
    if not token or len(token) > MAX_REGISTRY_TOKEN_CHARS:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        kind, _, rest = raw.decode(errors="surrogatepass").partition(":")
    except (binascii.Error, ValueError):
        return None
    number, _, last_account_id = rest.partition(":")
    cursor = _number(number, MAX_CURSOR)
    if kind != _REGISTRY_PAGE_KIND or cursor is None:
        return None
    return cursor, last_account_id


def _listing_checked(request: pb.ListAccountsRequest) -> _Checker:
    """The checks of a listing's page size and filters, wherever it is read from."""
    check = _Checker()
    if not 0 <= request.page_size <= MAX_PAGE_SIZE:
        check.fail(
            "page_size", f"must be between 1 and {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})"
        )
    check.values("origin_owner_ids", request.origin_owner_ids)
    check.values("providers", request.providers, _PROVIDER)
    check.values("account_ids", request.account_ids)
    check.one_of("statuses", request.statuses, ACCOUNT_STATUSES, MAX_FILTER_VALUES)
    return check


def registry_list(request: pb.ListAccountsRequest) -> RegistryQuery | None:
    """Validates `ListAccounts` from the registry into its query; None when the page token
    is one of StackOne's (a listing that fell back to StackOne goes on there)."""
    check = _listing_checked(request)
    position = _registry_position(request.page_token) if request.page_token else (None, "")
    if position is None:
        _page_of(request.page_token, check)  # StackOne's token, or refused as neither
        check.done()
        return None
    check.done()
    as_of, after_account = position
    return RegistryQuery(
        origin_owner_ids=frozenset(request.origin_owner_ids),
        providers=frozenset(request.providers),
        account_ids=frozenset(request.account_ids),
        statuses=frozenset(request.statuses),
        as_of=as_of,
        after_account=after_account,
        limit=request.page_size or DEFAULT_PAGE_SIZE,
    )


def _page_of(token: str, check: _Checker) -> int:
    if not token:
        return 0
    if len(token) <= MAX_PAGE_TOKEN_CHARS:
        try:
            decoded = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        except (binascii.Error, ValueError):  # ValueError: not ASCII
            decoded = ""
        prefix, _, number = decoded.partition(":")
        page = _number(number, MAX_PAGE_NUMBER) if prefix == "page" else None
        if page is not None:
            return page
    check.fail("page_token", "is not a next_page_token this service returned")
    return 0


def list_query(request: pb.ListAccountsRequest) -> AccountListQuery:
    """Validates `ListAccounts` and builds StackOne's query."""
    check = _listing_checked(request)
    page = _page_of(request.page_token, check)
    check.done()
    query = AccountListQuery(
        page=page,
        page_size=request.page_size or DEFAULT_PAGE_SIZE,
        origin_owner_ids=list(request.origin_owner_ids),
        providers=list(request.providers),
        account_ids=list(request.account_ids),
        statuses=list(request.statuses),
    )
    _fits_a_url(query, check)
    check.done()
    return query


_LIST_FILTERS = ("origin_owner_ids", "providers", "account_ids", "statuses")


def _fits_a_url(query: AccountListQuery, check: _Checker) -> None:
    """Filters within their bounds can still make a URL no server takes (100 values of
    255 four-byte characters are 300 KB encoded): past MAX_REQUEST_TARGET_BYTES, the
    filter taking the most room is named."""
    size = list_target_bytes(query)
    if size <= MAX_REQUEST_TARGET_BYTES:
        return
    bare = list_target_bytes(AccountListQuery())
    taken = {
        name: list_target_bytes(AccountListQuery.model_validate({name: getattr(query, name)}))
        - bare
        for name in _LIST_FILTERS
    }
    name = max(_LIST_FILTERS, key=taken.__getitem__)
    check.fail(
        name,
        f"takes {taken[name]} bytes of StackOne's URL once encoded, which is {size} bytes "
        f"in all and may be at most {MAX_REQUEST_TARGET_BYTES}: ask in several calls",
    )


def stream_request(
    request: pb.StreamAccountEventsRequest,
) -> tuple[EventFilter, StartPosition, int]:
    """Validates `StreamAccountEvents` into a filter, a start position and a batch size."""
    check = _Checker()
    check.values("providers", request.providers, _PROVIDER)
    check.values("origin_owner_ids", request.origin_owner_ids)
    check.values("account_ids", request.account_ids)
    check.values("event_types", request.event_types, ACCOUNT_EVENT_TYPE)
    start = StartPosition.now()
    which = request.WhichOneof("start")
    if which == "from_earliest":
        start = StartPosition.earliest()
    elif which == "from_snapshot":
        start = StartPosition.snapshot()
    elif which == "after_cursor":
        cursor = cursors.parse(request.after_cursor)
        if cursor is None:
            check.fail("after_cursor", "is not a cursor from an event or a bookmark")
        else:
            start = StartPosition.after(cursor.sequence, cursor.tag)
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
