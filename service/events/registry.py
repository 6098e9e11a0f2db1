"""The account registry: each account as its last recorded event left it.

Every backend writes the registry with the event itself (SQLite: the same transaction;
JetStream: conditioned on the account's last event), so the registry as of cursor C is
the fold of the log up to C. Before an event is stored, `enriched` gives it what the
registry knows: the account's previous status, owner and provider (so that a stream
filtered by either sees an account leave it), and any field the event left empty (a
deletion found by reconciliation carries no owner or provider of its own).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from google.protobuf.message import DecodeError

from service.events.cursors import UNTAGGED, Incarnation
from service.events.model import EventRecord, StoredEvent, deletes_account
from stackone_connect.v1 import stackone_connect_pb2 as pb

REGISTRY_PAGE_LIMIT = 1000
NEWEST = 2**63 - 1
"""`RegistryQuery.as_of` for each account's newest entry, whatever its cursor."""
# What an account is, as opposed to the state it is in: an event that leaves one of these
# empty (a deletion found by reconciliation) takes the registry's. Status and reasons,
# which say what the event reports, are never filled in.
_IDENTITY_FIELDS = (
    "provider",
    "provider_name",
    "origin_owner_id",
    "origin_owner_name",
    "origin_username",
    "label",
    "type",
)


@dataclass(frozen=True, slots=True)
class RegisteredAccount:
    """One account in the registry.

    Attributes:
        account_id: StackOne's id.
        cursor: the cursor of the event that set this state.
        deleted: the last event deleted it (a tombstone, kept for the dedup window).
        account: the serialized `pb.Account` of that event.
        provider, origin_owner_id, status: the account's, for filters (status raw).
        recorded_at: when that event was recorded (tombstones expire from it).
    """

    account_id: str
    cursor: int
    deleted: bool
    account: bytes
    provider: str = ""
    origin_owner_id: str = ""
    status: str = ""
    recorded_at: float = 0.0

    def message(self, incarnation: Incarnation = UNTAGGED) -> pb.Account:
        """The account as the API returns it, with its `registry_cursor` (of `incarnation`)."""
        message = pb.Account.FromString(self.account)
        message.registry_cursor = incarnation.public(self.cursor)
        return message


@dataclass(frozen=True, slots=True)
class RegistryQuery:
    """Which accounts a registry read returns: live ones (not deleted) whose state was set
    at or before `as_of` (None: the latest), after `after_account` in account id order;
    filters of different kinds combine with AND, values of one filter with OR, and an
    empty filter matches everything."""

    origin_owner_ids: frozenset[str] = frozenset()
    providers: frozenset[str] = frozenset()
    account_ids: frozenset[str] = frozenset()
    statuses: frozenset[str] = frozenset()
    as_of: int | None = None
    after_account: str = ""
    limit: int = REGISTRY_PAGE_LIMIT

    def admits(self, entry: RegisteredAccount, as_of: int) -> bool:
        """True when `entry` belongs in the answer read at cursor `as_of`."""
        return (
            not entry.deleted
            and entry.cursor <= as_of
            and entry.account_id > self.after_account
            and (not self.origin_owner_ids or entry.origin_owner_id in self.origin_owner_ids)
            and (not self.providers or entry.provider in self.providers)
            and (not self.account_ids or entry.account_id in self.account_ids)
            and (not self.statuses or entry.status in self.statuses)
        )


@dataclass(frozen=True, slots=True)
class RegistryPage:
    """Accounts of one registry read, in account id order.

    Attributes:
        accounts: at most `query.limit` accounts the query admits.
        cursor: the cursor the page reflects (`query.as_of`, or the latest when unset).
        complete: whether a full listing of StackOne was folded into the registry.
        more: whether more accounts may follow the last one.
    """

    accounts: list[RegisteredAccount]
    cursor: int
    complete: bool
    more: bool = False


def enriched(record: EventRecord, previous: RegisteredAccount | None) -> EventRecord:
    """`record` as it is stored after `previous` (the account's registry entry): with
    the previous status, owner and provider, and the previous account's fields where its
    own are empty."""
    if previous is None:
        return record
    event, before = _event_of(record.body), pb.Account.FromString(previous.account)
    if event is None:
        return record
    if not previous.deleted:
        event.previous_status = before.status
        event.previous_raw_status = before.raw_status
        event.previous_origin_owner_id = before.origin_owner_id
        event.previous_provider = before.provider
    account = event.account
    for name in _IDENTITY_FIELDS:
        if not getattr(account, name):
            setattr(account, name, getattr(before, name))
    if not account.HasField("created_at") and before.HasField("created_at"):
        account.created_at.CopyFrom(before.created_at)
    # Unset means StackOne did not say (a deletion, an older StackOne), not "not shared".
    if not account.HasField("shared") and before.HasField("shared"):
        account.shared = before.shared
    if not account.categories:  # a deletion's, or an older StackOne's: none said
        account.categories.extend(before.categories)
    return replace(
        record,
        body=event.SerializeToString(),
        provider=account.provider,
        origin_owner_id=account.origin_owner_id,
    )


def _event_of(body: bytes) -> pb.AccountEvent | None:
    """The event a record's body holds; None for a body that is not one (the log keeps
    bodies opaque otherwise: such a record leaves an empty account in the registry)."""
    try:
        return pb.AccountEvent.FromString(body)
    except DecodeError:
        return None


def registered(event: StoredEvent) -> RegisteredAccount:
    """The registry entry a recorded event leaves (its body after `enriched`)."""
    message = _event_of(event.body)
    account = pb.Account() if message is None else message.account
    return RegisteredAccount(
        event.account_id,
        event.cursor,
        deletes_account(event.type),
        account.SerializeToString(),
        account.provider,
        account.origin_owner_id,
        account.raw_status,
        event.recorded_at,
    )
