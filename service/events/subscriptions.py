"""Subscriptions as stored (`service.subscriptions` delivers them): their settings, and the
progress a dispatcher keeps."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from service.events.model import EventFilter


class SubscriptionExists(Exception):
    """The client already has a subscription of that name."""


class SubscriptionNotFound(Exception):
    """No subscription of that name belongs to the caller."""


class SubscriptionsUnsupported(Exception):
    """The event log in use keeps no subscriptions."""


@dataclass(frozen=True, slots=True)
class Filters:
    """A subscription's filters as the caller set them (a scoped caller's owners added)."""

    providers: tuple[str, ...] = ()
    origin_owner_ids: tuple[str, ...] = ()
    account_ids: tuple[str, ...] = ()
    event_types: tuple[str, ...] = ()

    def to_json(self) -> str:
        """The stored form."""
        return orjson.dumps(
            {
                "providers": self.providers,
                "origin_owner_ids": self.origin_owner_ids,
                "account_ids": self.account_ids,
                "event_types": self.event_types,
            }
        ).decode()

    @classmethod
    def from_json(cls, raw: str) -> Filters:
        """Reads the stored form."""
        values = orjson.loads(raw)
        return cls(
            tuple(values["providers"]),
            tuple(values["origin_owner_ids"]),
            tuple(values["account_ids"]),
            tuple(values["event_types"]),
        )

    def event_filter(self) -> EventFilter:
        """The log filter (owner scopes are applied on top by the caller)."""
        return EventFilter.of(
            providers=self.providers,
            origin_owner_ids=self.origin_owner_ids,
            account_ids=self.account_ids,
            event_types=self.event_types,
        )


@dataclass(frozen=True, slots=True)
class SubscriptionRecord:
    """A stored subscription. `client` is the name of the client that owns it ("" for a
    server without clients); `owners` the owner patterns of its scope when it was made."""

    id: int
    client: str
    name: str
    filters: Filters
    owners: tuple[str, ...] | None
    ack_deadline: float
    max_deliveries: int
    created_at: float


@dataclass(frozen=True, slots=True)
class Parked:
    """An event that reached its maximum of deliveries; `redriven` ones are delivered again."""

    cursor: int
    account_id: str
    attempts: int
    parked_at: float
    redriven: bool = False


@dataclass(slots=True)
class Progress:
    """What survives a restart: the committed position, the cursors acknowledged past it,
    each outstanding event's attempts so far, and the parked events."""

    position: int
    done: set[int] = field(default_factory=set)
    attempts: dict[int, int] = field(default_factory=dict)
    parked: list[Parked] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One delivery, recorded before it is sent."""

    cursor: int
    account_id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Settled:
    """Acknowledged and parked events, and the position they let the subscription reach."""

    acked: tuple[int, ...] = ()
    parked: tuple[Parked, ...] = ()
    position: int | None = None
