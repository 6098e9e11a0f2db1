"""One StackOne budget, and one share per client, for every replica of a deployment.

StackOne counts calls per API key, so the replicas spend one `RateBudget` between them.
They share it through a NATS JetStream key-value bucket, as a semaphore of the limit's
slots kept with compare-and-set (`update` at the revision read):

- key `pool` maps each replica to the slots it holds, `[held, background]`: the sum of
  `held` never passes the limit, the sum of `background` never passes the limit less the
  callers' reserve. A replica uses its slots as the single-process budget does (a slot is
  held from a call's start until a window after it completes, callers first), so every
  arrival StackOne sees in one of its sliding windows holds a slot somewhere: the key's
  limit holds across replicas, and the callers' reserve too.
- key `quota.<client>` maps each replica to the calls of that client it may start in a
  window; their sum never passes the client's `calls_per_minute`.
- bucket `<bucket>_ALIVE`, whose max age is `window + 2 renewals`, holds one key per
  replica, written every `renew` seconds. A replica missing there is dead (or cut off):
  the next lease by another replica drops its entries. It made no call since it stopped
  writing, and the entry outlives it by a window, so its last calls still count.

Leases come in blocks (`block` slots; a tenth of a client's calls), taken when calls wait
and given back at the next renewal down to what is in use plus one block if still busy:
the fast path touches no network. Key-value compare-and-set was chosen over a stream or
a request/reply service because a lease is a read-modify-write of one small value that
every replica must see at once, which is exactly what `update(last=revision)` does, and
the alive bucket's max age lets the server itself, on its own clock, expire a dead
replica (no replica's clock is trusted).

When NATS is slow or away (a lease or renewal fails within `request_timeout`), a replica
can lease nothing more. It keeps `min(held, limit ÷ N)` at once, where N is the larger of
`expected_replicas` and the replicas it last saw alive, and after `hold` (a window, the
longest call, and a renewal with its timeout: every other replica has shrunk the same way
by then and its older calls have left StackOne's window) it may use `limit ÷ N`. The
replicas thus never hold more than the limit between them, during the outage or its
start. Back on NATS, a replica registers what it holds and grows beyond `limit ÷ N` only
after two renewals, so every replica still on its fraction has registered first.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import nats
import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client as NatsClient
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from service.nats_servers import nats_servers
from service.stackone.budget import ClientShare, Priority, RateBudget

_log = logging.getLogger(__name__)

_NATS_ERRORS: tuple[type[Exception], ...] = (
    nats.errors.Error,
    nats.js.errors.Error,
    TimeoutError,
    OSError,
)
_POOL_KEY = "pool"
_CAS_ATTEMPTS = 10
_BACKGROUND = (Priority.VERIFY, Priority.RECONCILE)


@dataclass(frozen=True, slots=True)
class BudgetSharing:
    """How replicas share the budget through NATS.

    Attributes:
        url: the NATS server (the JetStream event log's).
        bucket: the key-value bucket of the leases; `<bucket>_ALIVE` holds liveness.
        expected_replicas: the replicas a deployment runs; without NATS each falls back
            to the limit divided by this (or by the replicas last seen alive, if more).
        block: slots leased at a time.
        renew: seconds between renewals (liveness, giving back, retrying a lease).
        longest_call: seconds a StackOne call may take.
        storage: "file" or "memory", for the buckets.
        replicas: copies JetStream keeps of the buckets.
        request_timeout: seconds a NATS request may take before NATS counts as away.
    """

    url: str
    bucket: str
    expected_replicas: int = 1
    block: int = 20
    renew: float = 5.0
    longest_call: float = 10.0
    storage: str = "file"
    replicas: int = 1
    request_timeout: float = 2.0


@dataclass(slots=True)
class _Lease:
    """This replica's entry under one key: what it last registered there."""

    key: str
    held: int = 0
    background: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _quota_key(client: str) -> str:
    """A key for any client name (key-value keys allow few characters)."""
    return "quota." + base64.urlsafe_b64encode(client.encode()).decode().rstrip("=")


class SharedBudget:
    """Leases the slots of `budget`, and its clients' calls, from the replicas' bucket
    (the `Lender` of `service.stackone.budget`)."""

    def __init__(
        self, budget: RateBudget, sharing: BudgetSharing, *, replica: str | None = None
    ) -> None:
        self.budget = budget
        self.sharing = sharing
        self.replica = replica or secrets.token_hex(8)
        # Another replica finds NATS away within a renewal and its timeout of this one.
        self.hold = budget.window + sharing.longest_call + sharing.renew + sharing.request_timeout
        self.seen_replicas = 1
        self._pool = _Lease(_POOL_KEY)
        self._quotas: dict[str, tuple[ClientShare, _Lease]] = {}
        self._nats: NatsClient | None = None
        self._leases: KeyValue | None = None
        self._alive: KeyValue | None = None
        self._lost_at: float | None = time.monotonic()  # nothing registered yet
        self._settled_at = 0.0
        self._next_renewal = 0.0
        self._starved = False
        self._granted = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return (
            f"SharedBudget(replica={self.replica!r}, held={self._pool.held}, "
            f"background={self._pool.background}, lost={self.lost})"
        )

    @property
    def lost(self) -> bool:
        """True while NATS is away: this replica spends its local fraction."""
        return self._lost_at is not None

    # --- Lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Registers with the other replicas (or falls back if NATS is away) and keeps
        the lease renewed until `close`."""
        self.budget.lender = self
        await self._pass()
        self._task = asyncio.create_task(self._run(), name="shared-budget")

    async def close(self) -> None:
        """Gives back what is not in use (slots of recent calls stay counted until this
        replica's liveness expires) and closes the connection."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task  # ends after its pass, each bounded by `request_timeout`
        if self._nats is not None:
            if not self.lost:
                with contextlib.suppress(*_NATS_ERRORS):
                    async with asyncio.timeout(self.sharing.request_timeout):
                        await self._give_back(busy=False)
            with contextlib.suppress(*_NATS_ERRORS):
                await self._nats.close()

    # --- The Lender role ----------------------------------------------------------------

    def short(self) -> None:
        """Calls wait for a slot: the renewal task leases more now (or, when the pool
        had none to give, at its next retry)."""
        if not self._starved:
            self._wake.set()

    async def lease_share(self, share: ClientShare) -> None:
        """Leases another block of `share`'s client's calls, unless NATS is away."""
        lease = self._quota(share)
        if self.lost or self._leases is None:
            self._apply()  # a client first seen now gets its fraction
            return
        async with lease.lock:
            started = share.started(self.budget.now(), self.budget.window)
            if share.held is not None and started < share.allowed:
                return  # another call leased while this one waited for the lock
            block = max(1, min(self.sharing.block, share.calls_per_minute // 10))
            try:
                async with asyncio.timeout(self.sharing.request_timeout):
                    await self._lease(lease, share.calls_per_minute, 0, started + block, 0, started)
            except _NATS_ERRORS as error:
                self._lose(error)
        self._apply()

    # --- Renewal ----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            wait = self.sharing.renew / 5 if self._starved else self.sharing.renew
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), max(0.0, min(wait, self._next_renewal - _now()))
                )
            self._wake.clear()
            if self._closing:
                return
            await self._pass()

    async def _pass(self) -> None:
        """A renewal when one is due, else a lease for the calls waiting."""
        try:
            async with asyncio.timeout(self.sharing.request_timeout):
                if self._leases is None:
                    await self._connect()
                if _now() >= self._next_renewal or self.lost:
                    await self._renew()
                else:
                    await self._grow()
        except _NATS_ERRORS as error:
            self._lose(error)
        self._apply()

    async def _connect(self) -> None:
        sharing = self.sharing
        if self._nats is None:
            self._nats = await nats.connect(
                nats_servers(sharing.url),
                connect_timeout=sharing.request_timeout,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=min(sharing.renew, 2.0),
                name="stackone-connect budget",
            )
        js = self._nats.jetstream(timeout=sharing.request_timeout)
        storage = StorageType.MEMORY if sharing.storage == "memory" else StorageType.FILE
        self._alive = await js.create_key_value(
            KeyValueConfig(
                bucket=f"{sharing.bucket}_ALIVE",
                ttl=self.budget.window + 2 * sharing.renew,
                storage=storage,
                replicas=sharing.replicas,
            )
        )
        self._leases = await js.create_key_value(
            KeyValueConfig(bucket=sharing.bucket, storage=storage, replicas=sharing.replicas)
        )

    async def _renew(self) -> None:
        """Says this replica is alive, then gives back what it does not use (or leases
        what its waiting calls need)."""
        _, alive = self._bound()
        await alive.put(self.replica, b"")
        recovering = self.lost
        if recovering:
            # Register first what is in use, at most the fraction, and grow only once
            # every replica still on its fraction has had two renewals to register.
            self._settled_at = _now() + 2 * self.sharing.renew
        granted = sum(self.budget.granted.values())
        busy = granted != self._granted or any(self.budget.waiting.values())
        self._granted = granted
        await self._give_back(busy=busy)
        self._recover()
        self._starved = False
        await self._grow()
        self._next_renewal = _now() + self.sharing.renew

    async def _give_back(self, *, busy: bool) -> None:
        """Keeps the slots in use (plus a block while busy) and the clients' calls of
        the current window; gives the rest back."""
        budget = self.budget
        in_use = budget.in_use
        keep = in_use + (self.sharing.block if busy else 0)
        if self.lost or _now() < self._settled_at:  # back on NATS: at most the fraction
            keep = max(in_use, min(keep, self._fraction(budget.limit)))
        pool = self._pool
        if keep != pool.held or self.lost:
            # Shrink here before there: no call may start on a slot already given back.
            held, background = budget.capacity
            budget.set_capacity(min(held, keep), min(background, keep))
            await self._lease(
                pool,
                budget.limit,
                budget.background_limit,
                keep,
                min(pool.background, keep),
                in_use,
            )
        now = budget.now()
        for share, lease in list(self._quotas.values()):
            started = share.started(now, budget.window)
            if lease.held != started or self.lost:
                share.held = min(share.allowed, started)
                await self._lease(lease, share.calls_per_minute, 0, started, 0, started)

    async def _grow(self) -> None:
        """Leases blocks for the calls waiting now, as far as the pool has them."""
        budget, pool = self.budget, self._pool
        waiting = budget.waiting
        in_use = budget.in_use
        need = in_use + sum(waiting.values())
        need_background = in_use + sum(waiting[p] for p in _BACKGROUND)
        if need <= pool.held and (need_background <= pool.background or not need_background):
            return
        block = self.sharing.block
        want = pool.held + block * math.ceil(max(0, need - pool.held) / block)
        want_background = pool.background
        if need_background > pool.background and any(waiting[p] for p in _BACKGROUND):
            want_background += block * math.ceil((need_background - pool.background) / block)
            want = max(want, want_background)
        if _now() < self._settled_at:
            ceiling = max(pool.held, self._fraction(budget.limit))
            want, want_background = min(want, ceiling), min(want_background, ceiling)
        before = pool.held, pool.background
        await self._lease(
            pool, budget.limit, budget.background_limit, want, want_background, in_use
        )
        self._starved = (pool.held, pool.background) == before

    async def _lease(
        self,
        lease: _Lease,
        limit: int,
        background_limit: int,
        want: int,
        want_background: int,
        floor: int,
    ) -> None:
        """Sets this replica's entry under `lease.key` to as much of `want` (of which
        `want_background` for background work) as the live replicas leave free, never
        below `floor` (what is in use stays counted), with compare-and-set."""
        leases, _ = self._bound()
        alive: dict[str, bool] = {}
        for _ in range(_CAS_ATTEMPTS):
            try:
                entry = await leases.get(lease.key)
                table: dict[str, list[int]] = orjson.loads(entry.value or b"{}")
                revision: int | None = entry.revision
            except nats.js.errors.KeyNotFoundError:
                table, revision = {}, None
            mine = table.pop(self.replica, [0, 0])
            await self._check_alive(alive, table)
            others = {replica: held for replica, held in table.items() if alive[replica]}
            self.seen_replicas = len(others) + 1
            free = limit - sum(held for held, _ in others.values())
            free_background = background_limit - sum(bg for _, bg in others.values())
            held = max(floor, min(want, max(mine[0], free)))
            background = min(held, max(0, min(want_background, max(mine[1], free_background))))
            others[self.replica] = [held, background]  # listed while alive, even at 0
            value = orjson.dumps(others)
            try:
                if revision is None:
                    await leases.create(lease.key, value)
                else:
                    await leases.update(lease.key, value, last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another replica changed it since: read again
            lease.held, lease.background = held, background
            return
        _log.warning("the StackOne budget's %s lease kept changing under us", lease.key)

    async def _check_alive(self, alive: dict[str, bool], table: dict[str, list[int]]) -> None:
        """Notes in `alive` whether each replica of `table` not noted yet is alive: its
        key in the alive bucket, which the server expires, is there."""
        _, bucket = self._bound()

        async def check(replica: str) -> None:
            try:
                await bucket.get(replica)
                alive[replica] = True
            except nats.js.errors.KeyNotFoundError:
                alive[replica] = False

        await asyncio.gather(*(check(replica) for replica in table if replica not in alive))

    def _bound(self) -> tuple[KeyValue, KeyValue]:
        """The leases and alive buckets; a NATS error before they are bound."""
        if self._leases is None or self._alive is None:
            raise nats.errors.ConnectionClosedError
        return self._leases, self._alive

    # --- Local caps -------------------------------------------------------------------

    def _quota(self, share: ClientShare) -> _Lease:
        known = self._quotas.get(share.name)
        if known is None or known[0] is not share:
            lease = known[1] if known is not None else _Lease(_quota_key(share.name))
            self._quotas[share.name] = (share, lease)
            return lease
        return known[1]

    def _fraction(self, limit: int) -> int:
        """This replica's safe part of `limit` without NATS."""
        return limit // max(self.sharing.expected_replicas, self.seen_replicas)

    def _capped(self, held: int, limit: int) -> int:
        """What this replica may use of `held` (of `limit`): all of it on NATS; without,
        at once no more than its fraction, and its fraction once `hold` has passed."""
        if self._lost_at is None:
            return held
        fraction = self._fraction(limit)
        return fraction if _now() - self._lost_at >= self.hold else min(held, fraction)

    def _apply(self) -> None:
        budget, pool = self.budget, self._pool
        budget.set_capacity(
            self._capped(pool.held, budget.limit),
            self._capped(pool.background, budget.background_limit),
        )
        for share, lease in self._quotas.values():
            share.held = self._capped(lease.held, share.calls_per_minute)

    def _lose(self, error: Exception) -> None:
        if self._lost_at is None:
            self._lost_at = _now()
            _log.warning(
                "NATS at %s is away (%r): the StackOne budget falls back to 1/%d of the limit",
                self.sharing.url,
                error,
                max(self.sharing.expected_replicas, self.seen_replicas),
            )

    def _recover(self) -> None:
        if self._lost_at is not None:
            self._lost_at = None
            _log.info("the StackOne budget is shared through NATS at %s", self.sharing.url)


def _now() -> float:
    return time.monotonic()


@asynccontextmanager
async def shared(budget: RateBudget, sharing: BudgetSharing) -> AsyncIterator[SharedBudget]:
    """`budget` shared with the other replicas for the block."""
    lender = SharedBudget(budget, sharing)
    await lender.start()
    try:
        yield lender
    finally:
        await lender.close()
