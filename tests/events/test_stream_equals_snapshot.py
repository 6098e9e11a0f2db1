"""A filtered stream's state, as a subscriber builds it, equals a fresh snapshot with the
same filters at every bookmark (issue 32, item 7), on a real service, SQLite and
JetStream: random changes at the emulated StackOne (statuses, owner and provider moves,
deletions, new accounts) while streams filtered by owner and provider, and a scoped
caller's, run `from_snapshot`; an account that stops matching is sent as a departure
(`leaves_filter`), and a scoped caller learns nothing of the owner its account moved to."""

from __future__ import annotations

import asyncio
import bisect
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import grpc
import httpx
import orjson
import pytest
from google.protobuf.empty_pb2 import Empty

from service.runtime import running
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from stackone_connect_client import AccountView, SnapshotEnd
from tests.harness.registries import Registry
from tests.harness.streams import StreamCall, position
from tests.harness.support import LogBackend, eventually, make_settings

pytestmark = pytest.mark.asyncio
BACKENDS = ["sqlite", "jetstream"]
ADMIN = "admin-token-0123456789abcdef"
ACME = "acme-billing-token-0123456789"
SCOPES = ["sessions:create", "accounts:read", "accounts:write", "events:read"]
PROVIDERS = ("hibob", "personio", "bamboohr")
OWNERS = ("acme-1", "acme-2", "globex")
OTHER_CUSTOMER = "globex"  # not among the scoped client's owners (acme-*)
AS_ADMIN = (("authorization", f"Bearer {ADMIN}"),)
AS_ACME = (("authorization", f"Bearer {ACME}"),)
PAUSES, CHANGES_BETWEEN_PAUSES = 4, 20
State = tuple[str, str, str]  # raw status, owner, provider
# Each stream: its filters and whether it is the scoped client's.
STREAMS: list[tuple[dict[str, list[str]], bool]] = [
    ({"providers": ["hibob"]}, False),
    ({"origin_owner_ids": ["acme-1"]}, False),
    ({"providers": ["hibob", "personio"], "origin_owner_ids": ["acme-2", "globex"]}, False),
    ({}, True),
    ({"providers": ["personio"]}, True),
]


class _AsAdmin(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Sends the admin's token with every unary call of a channel (the registry helpers')."""

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(client_call_details._replace(metadata=AS_ADMIN), request)


@asynccontextmanager
async def _service(tmp_path: Path, backend: LogBackend) -> AsyncIterator[Registry]:
    """The service with an admin and an `acme-*` client, bookmarks every 0.05 s of silence
    (a check each), sweeping StackOne every 0.2 s."""
    clients = tmp_path / "clients.json"
    entries = [
        {"name": "admin", "token": ADMIN, "scopes": SCOPES},
        {"name": "acme-billing", "token": ACME, "scopes": SCOPES, "owners": ["acme-*"]},
    ]
    clients.write_bytes(orjson.dumps({"clients": entries}))
    values = make_settings(
        tmp_path,
        clients_file=clients,
        reconcile_interval=0.2,
        reconcile_grace=0,
        bookmark_interval=0.05,
        **backend.settings(),
    )
    async with running(values) as service:
        assert service.emulator is not None
        async with (
            grpc.aio.insecure_channel(
                service.grpc_target, interceptors=[cast(Any, _AsAdmin())]
            ) as channel,
            httpx.AsyncClient(base_url=service.emulator.base_url, timeout=10) as emulator,
        ):
            yield Registry(service, emulator, stub=pb_grpc.ConnectServiceStub(channel))


def _state(account: pb.Account) -> State:
    return (account.raw_status, account.origin_owner_id, account.provider)


def _admits(filters: dict[str, list[str]], scoped: bool) -> Callable[[State], bool]:
    """What a fresh snapshot with `filters` (and the scoped client's owners) selects."""
    providers, owners = filters.get("providers"), filters.get("origin_owner_ids")
    return lambda state: (
        (not providers or state[2] in providers)
        and (not owners or state[1] in owners)
        and (not scoped or state[1].startswith("acme-"))
    )


@dataclass
class _Subscriber:
    """A `from_snapshot` stream read continuously: every message, and the cursor reached."""

    filters: dict[str, list[str]]
    scoped: bool
    call: StreamCall
    responses: list[pb.StreamAccountEventsResponse] = field(default_factory=list)
    reached: int = -1
    started: int = -1  # where its snapshot ended

    async def read(self) -> None:
        async for response in self.call:
            self.responses.append(response)
            if response.HasField("bookmark"):
                self.reached = position(response.bookmark.cursor)
                if response.bookmark.initial_state_end:
                    self.started = self.reached
            elif response.HasField("event"):
                self.reached = position(response.event.cursor)
            elif response.HasField("events"):
                self.reached = position(response.events.events[-1].cursor)

    async def snapshot_ended(self) -> None:
        """Returns once the stream's snapshot has ended."""
        await eventually(lambda: self.started >= 0, timeout=15)

    async def reaches(self, cursor: int) -> None:
        """Returns once the stream has read up to `cursor` (a bookmark or event at it)."""
        await eventually(lambda: self.reached >= cursor, timeout=15)

    def views(self) -> list[tuple[int, dict[str, State]]]:
        """The subscriber's view (the client's `AccountView`) at each bookmark and after
        each event, with the cursor it stands at (until the next one's)."""
        view, views = AccountView(), []
        for response in self.responses:
            kind = response.WhichOneof("item")
            if kind == "account":
                view.apply(response.account)
            elif kind == "accounts":
                for account in response.accounts.accounts:
                    view.apply(account)
            elif kind == "bookmark":
                if response.bookmark.initial_state_end:
                    view.apply(SnapshotEnd(response.bookmark.cursor))
                views.append((position(response.bookmark.cursor), _states(view)))
            else:
                events = [response.event] if kind == "event" else response.events.events
                for event in events:
                    view.apply(event)
                    views.append((position(event.cursor), _states(view)))
        return views

    def view_at(self, cursor: int) -> dict[str, State]:
        """The view as it stood at `cursor` (which the stream has read past)."""
        assert self.reached >= cursor
        views = self.views()
        index = bisect.bisect_right([at for at, _ in views], cursor) - 1
        assert index >= 0, f"cursor {cursor} precedes the stream's snapshot"
        return views[index][1]


def _states(view: AccountView) -> dict[str, State]:
    return {account_id: _state(account) for account_id, account in view.accounts.items()}


def _start(registry: Registry, filters: dict[str, list[str]], scoped: bool) -> StreamCall:
    request = pb.StreamAccountEventsRequest(
        from_snapshot=Empty(),
        max_events_per_message=random.choice([1, 4]),
        providers=filters.get("providers", []),
        origin_owner_ids=filters.get("origin_owner_ids", []),
    )
    return registry.stub.StreamAccountEvents(request, metadata=AS_ACME if scoped else AS_ADMIN)


async def _stopped(readers: list[asyncio.Task[None]]) -> None:
    for reader in readers:
        reader.cancel()
        with suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await reader


async def _following(
    registry: Registry, streams: list[tuple[dict[str, list[str]], bool]]
) -> tuple[list[_Subscriber], list[asyncio.Task[None]]]:
    """Streams whose snapshots end at one cursor, so that their views compare from it (a
    snapshot leaves out accounts changed after its cursor until their events come): they
    start again while an event is recorded between them."""
    for _ in range(10):
        subscribers = [_Subscriber(f, scoped, _start(registry, f, scoped)) for f, scoped in streams]
        readers = [asyncio.create_task(subscriber.read()) for subscriber in subscribers]
        for subscriber in subscribers:
            await subscriber.snapshot_ended()
        if len({subscriber.started for subscriber in subscribers}) == 1:
            return subscribers, readers
        await _stopped(readers)
    raise AssertionError("events kept being recorded while the streams started")


async def _same_as_a_fresh_snapshot(registry: Registry, subscriber: _Subscriber, seed: int) -> None:
    """A fresh `from_snapshot` stream with the subscriber's filters and caller, followed past
    every account its snapshot left out: the two views are the same there."""
    fresh = _Subscriber(
        subscriber.filters,
        subscriber.scoped,
        _start(registry, subscriber.filters, subscriber.scoped),
    )
    reader = asyncio.create_task(fresh.read())
    try:
        await fresh.snapshot_ended()
        latest = (await registry.service.event_log.bounds(exact=True)).latest
        await fresh.reaches(latest)
        await subscriber.reaches(latest)
        assert subscriber.view_at(latest) == fresh.view_at(latest), (seed, subscriber.filters)
    finally:
        await _stopped([reader])


class _Changes:
    """Random changes at the emulated StackOne, each sending its webhook."""

    def __init__(self, registry: Registry, seed: int) -> None:
        self.registry = registry
        self.rng = random.Random(seed)
        self.moves = 0

    @property
    def live(self) -> list[str]:
        return sorted(self.registry.state.accounts)

    async def new(self) -> str:
        return await self.registry.account(self.rng.choice(OWNERS), self.rng.choice(PROVIDERS))

    async def move_owner(self, account_id: str, owner: str) -> None:
        """The account becomes `owner`'s (StackOne's update), its account.updated sent."""
        account = self.registry.state.accounts[account_id]
        account.origin_owner_id = account.origin_owner_name = owner
        self.moves += 1
        await self._patch(account_id, label=f"moved-{self.moves}")

    async def move_provider(self, account_id: str, provider: str) -> None:
        await self._patch(account_id, provider=provider)

    async def _patch(self, account_id: str, **changes: str) -> None:
        answer = await self.registry.emulator.patch(
            f"/emulator/accounts/{account_id}", json=changes
        )
        assert answer.status_code == 200, answer.text

    async def one(self) -> None:
        """One change drawn at random."""
        rng, live = self.rng, self.live
        choice = rng.random()
        if choice < 0.1 and len(live) > 3:
            await self.registry.delete(rng.choice(live))
        elif choice < 0.2:
            await self.new()
        elif choice < 0.45:
            await self.move_owner(rng.choice(live), rng.choice(OWNERS))
        elif choice < 0.7:
            await self.move_provider(rng.choice(live), rng.choice(PROVIDERS))
        else:
            await self.registry.set_status(rng.choice(live), rng.choice(["active", "error"]))


async def _settled(registry: Registry) -> None:
    """Returns once the registry holds StackOne's state (the changes' webhooks recorded)."""

    async def same() -> bool:
        listed, _ = await registry.listed()
        held = {account.id: _state(account) for account in listed}
        emulated = {
            account.id: (account.status, account.origin_owner_id, account.provider)
            for account in registry.state.accounts.values()
        }
        return held == emulated

    await eventually(same, timeout=30)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("seed", [3, 11])
async def test_a_filtered_streams_view_equals_a_fresh_snapshot_at_every_bookmark(
    tmp_path: Path, backend: LogBackend, seed: int
) -> None:
    """Streams filtered by provider and owner (admin and scoped), from a snapshot, under
    random changes: at every bookmark and message their view equals the unfiltered log's
    state filtered alike, and at each pause a fresh snapshot; accounts that stop matching
    arrive as departures, and the scoped client's stream never names another customer."""
    random.seed(seed)
    async with _service(tmp_path, backend) as registry:
        changes = _Changes(registry, seed)
        first = [await registry.account(owner, "hibob") for owner in ("acme-1", "acme-2")]
        for _ in range(6):
            await changes.new()
        await registry.complete()
        await _settled(registry)
        (everything, *subscribers), readers = await _following(registry, [({}, False), *STREAMS])
        # The cases the issue names, then random ones: a hibob account moves to personio,
        # an acme account to another customer.
        await changes.move_provider(first[0], "personio")
        await changes.move_owner(first[1], OTHER_CUSTOMER)
        pauses = 0
        try:
            for _ in range(PAUSES):
                for _ in range(CHANGES_BETWEEN_PAUSES):
                    await changes.one()
                await _settled(registry)
                for subscriber in subscribers:
                    await _same_as_a_fresh_snapshot(registry, subscriber, seed)
                pauses += 1
            furthest = max(subscriber.reached for subscriber in subscribers)
            await everything.reaches(furthest)
        finally:
            await _stopped(readers)
    departures = 0
    for subscriber in subscribers:
        admits = _admits(subscriber.filters, subscriber.scoped)
        views = subscriber.views()
        assert len(views) > 10, "bookmarks and events to check at"
        for cursor, view in views:
            expected = {
                k: state for k, state in everything.view_at(cursor).items() if admits(state)
            }
            assert view == expected, (seed, subscriber.filters, subscriber.scoped, cursor)
        for response in subscriber.responses:
            events = [response.event] if response.HasField("event") else response.events.events
            departing = [event for event in events if event.leaves_filter]
            departures += len(departing)
            if subscriber.scoped:
                assert OTHER_CUSTOMER.encode() not in response.SerializeToString()
                assert all(e.account == pb.Account(id=e.account.id) for e in departing
                           if not e.account.origin_owner_id.startswith("acme-"))  # fmt: skip
    assert pauses == PAUSES
    assert departures > 0
