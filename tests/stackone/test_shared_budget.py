"""One StackOne budget and one share per client across replicas, through NATS JetStream.

Three `RateBudget`s, each with its own `SharedBudget` and NATS connection as three
replicas would have, spend one key against one emulator playing StackOne with the same
limit over the same short window: the emulator's 429 count says whether the replicas
together ever passed the limit in any sliding window.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson
import pytest
import pytest_asyncio

from service.emulator import EmulatorConfig, build_emulator_app
from service.stackone.budget import CALLER_SHARE, ClientShare, Priority, RateBudget
from service.stackone.client import StackOneClient
from service.stackone.errors import BudgetExhausted, ClientBudgetExhausted
from service.stackone.shared_budget import BudgetSharing, SharedBudget, shared
from service.web import listening
from tests.harness.nats import NatsServer
from tests.harness.support import eventually

pytestmark = pytest.mark.asyncio
API_KEY = "shared-budget-key"
LIMIT = 30  # calls per WINDOW, for the replicas together and for the emulator
WINDOW = 1.5
RENEW = 0.2
BLOCK = 3
REPLICAS = 3


def sharing(url: str, bucket: str) -> BudgetSharing:
    """Small blocks and fast renewals, so that a test lasts a few windows."""
    return BudgetSharing(
        url,
        bucket,
        expected_replicas=REPLICAS,
        block=BLOCK,
        renew=RENEW,
        longest_call=0.5,
        storage="memory",
        request_timeout=0.5,
    )


@dataclass
class Replica:
    """One replica's budget, its lender and its client of the shared emulator."""

    budget: RateBudget
    lender: SharedBudget
    client: StackOneClient
    calls: list[float]  # when each call was sent


@dataclass
class Cluster:
    """Replicas sharing one budget, the emulator they spend it at, and an account."""

    emulator: httpx.AsyncClient
    account_id: str
    replicas: list[Replica]

    async def rate_limited(self) -> int:
        """The emulator's count of calls it refused with 429 (over the limit)."""
        stats: dict[str, Any] = (await self.emulator.get("/emulator/stats")).json()
        return int(stats["rate_limited"])

    async def load(self, seconds: float, replicas: list[Replica] | None = None) -> None:
        """Reads the account from every replica, 8 calls at a time each, for `seconds`."""
        ends = time.monotonic() + seconds

        async def worker(replica: Replica) -> None:
            while (left := ends - time.monotonic()) > 0:
                try:
                    await replica.client.get_account(self.account_id, deadline=left)
                except BudgetExhausted:
                    return

        async with asyncio.TaskGroup() as group:
            for replica in replicas or self.replicas:
                for _ in range(8):
                    group.create_task(worker(replica))


@asynccontextmanager
async def cluster(url: str, *, count: int = REPLICAS) -> AsyncIterator[Cluster]:
    """`count` replicas sharing one budget on the NATS at `url` (a bucket of their own),
    and an emulator limited to LIMIT calls per WINDOW."""
    config = EmulatorConfig(api_key=API_KEY, rate_limit=LIMIT, rate_window=WINDOW)
    bucket = f"BUDGET_{uuid.uuid4().hex[:8]}"
    async with AsyncExitStack() as stack:
        served = await stack.enter_async_context(
            listening(build_emulator_app(config), "127.0.0.1", 0, shutdown_timeout=0.1)
        )
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=served.base_url, timeout=5)
        )
        account = await http.post("/emulator/accounts", json={"provider": "hibob"})
        replicas = []
        for _ in range(count):
            budget = RateBudget(LIMIT, window=WINDOW, caller_reserve=0.2)
            lender = await stack.enter_async_context(shared(budget, sharing(url, bucket)))
            calls: list[float] = []
            client = await stack.enter_async_context(
                StackOneClient(
                    served.base_url, API_KEY, budget=budget, max_retries=0, observer=_sent(calls)
                )
            )
            replicas.append(Replica(budget, lender, client, calls))
        yield Cluster(http, account.json()["id"], replicas)


def _sent(calls: list[float]) -> Callable[[str, str, float], None]:
    """A client's observer noting in `calls` when each call that ends was sent."""
    return lambda operation, outcome, seconds: calls.append(time.monotonic() - seconds)


@pytest_asyncio.fixture
async def own_nats(tmp_path: Path) -> AsyncIterator[NatsServer]:
    """A nats-server of this test's own, which it may stop."""
    server = NatsServer(tmp_path)
    server.start()
    yield server
    server.stop()


def most_in_any_window(moments: list[float], window: float) -> int:
    """The most of `moments` inside any half-open span of `window` seconds."""
    ordered = sorted(moments)
    first, most = 0, 0
    for last, moment in enumerate(ordered):
        while ordered[first] <= moment - window:
            first += 1
        most = max(most, last - first + 1)
    return most


async def test_three_replicas_under_load_stay_within_one_limit(nats_server: NatsServer) -> None:
    """Three replicas reading as fast as they can for three windows make no more than the
    key's limit of calls in any window between them (StackOne never says 429), and still
    spend most of it."""
    async with cluster(nats_server.url) as three:
        await three.load(3 * WINDOW)
        assert await three.rate_limited() == 0
        everyone = [moment for replica in three.replicas for moment in replica.calls]
        assert most_in_any_window(everyone, WINDOW) <= LIMIT
        assert len(everyone) >= 2 * LIMIT, f"{len(everyone)} calls in 3 windows"
        assert all(replica.calls for replica in three.replicas)


async def test_a_clients_calls_per_minute_hold_across_replicas(nats_server: NatsServer) -> None:
    """A client allowed 6 calls per window, calling through all three replicas, starts 6
    in the first window between them, not 6 on each."""
    quota = 6
    started: list[float] = []
    refused = 0

    async with cluster(nats_server.url) as three:
        ends = time.monotonic() + WINDOW * 0.9

        async def caller(replica: Replica, share: ClientShare) -> None:
            nonlocal refused
            CALLER_SHARE.set(share)
            while time.monotonic() < ends:
                try:
                    await replica.client.get_account(three.account_id)
                    started.append(time.monotonic())
                except ClientBudgetExhausted:
                    refused += 1
                    await asyncio.sleep(0.01)  # a client retrying after its refusal

        async with asyncio.TaskGroup() as group:
            for replica in three.replicas:  # each process has its own share of the client
                share = ClientShare("acme", quota)
                for _ in range(3):
                    group.create_task(caller(replica, share))
    assert len(started) == quota, f"{len(started)} calls of acme's {quota} per window"
    assert refused > 0


DEAD_REPLICA = """
import asyncio, sys
from service.stackone.budget import Priority, RateBudget
from service.stackone.shared_budget import BudgetSharing, shared

async def main():
    budget = RateBudget({limit}, window={window}, caller_reserve=0.2)
    sharing = BudgetSharing(
        {url!r}, {bucket!r}, expected_replicas=3, block={block}, renew={renew},
        longest_call=0.5, storage="memory", request_timeout=0.5,
    )
    async with shared(budget, sharing) as lender:
        print(lender.replica, flush=True)
        while True:  # as busy as it can be, until killed
            await budget.acquire(Priority.CALLER)
            budget.release()

asyncio.run(main())
"""


async def pool(url: str, bucket: str) -> dict[str, list[int]]:
    """The leases' table: what each replica holds."""
    connection = await nats.connect(url)
    try:
        entry = await (await connection.jetstream().key_value(bucket)).get("pool")
        table: dict[str, list[int]] = orjson.loads(entry.value or b"{}")
        return table
    finally:
        await connection.close()


async def test_a_killed_replica_gives_its_share_back_within_a_window_and_two_renewals(
    nats_server: NatsServer,
) -> None:
    """A busy replica killed with SIGKILL keeps its slots counted for a window (its last
    calls still count at StackOne), and within a window and two renewals (plus the
    server's expiry tick) the live replicas hold the whole limit again."""
    bucket = f"BUDGET_{uuid.uuid4().hex[:8]}"
    script = DEAD_REPLICA.format(
        limit=LIMIT, window=WINDOW, url=nats_server.url, bucket=bucket, block=BLOCK, renew=RENEW
    )
    doomed = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert doomed.stdout is not None
        dead = (await doomed.stdout.readline()).decode().strip()
        await eventually(lambda: _holds(nats_server.url, bucket, dead, LIMIT // 2), 10)
        budgets = [RateBudget(LIMIT, window=WINDOW, caller_reserve=0.2) for _ in range(2)]
        async with AsyncExitStack() as stack:
            for budget in budgets:
                await stack.enter_async_context(shared(budget, sharing(nats_server.url, bucket)))
            load = [asyncio.create_task(_busy(budget)) for budget in budgets]
            doomed.kill()
            await doomed.wait()
            killed = time.monotonic()
            await eventually(lambda: _gone(nats_server.url, bucket, dead), 10)
            released = time.monotonic() - killed
            await eventually(lambda: sum(b.capacity[0] for b in budgets) >= LIMIT - BLOCK, 2)
            for task in load:
                task.cancel()
    finally:
        if doomed.returncode is None:
            doomed.kill()
            await doomed.wait()
    assert released >= WINDOW - RENEW, f"released {released:.2f} s after the kill"
    assert released <= WINDOW + 2 * RENEW + 1.0, f"released {released:.2f} s after the kill"


async def _holds(url: str, bucket: str, replica: str, slots: int) -> bool:
    return pool_held(await pool(url, bucket), replica) >= slots


async def _gone(url: str, bucket: str, replica: str) -> bool:
    return replica not in await pool(url, bucket)


def pool_held(table: dict[str, list[int]], replica: str) -> int:
    """The slots `replica` holds in the leases' table."""
    return table.get(replica, [0, 0])[0]


async def _busy(budget: RateBudget) -> None:
    """Takes every slot the budget gives, as a replica under load would."""
    while True:
        await budget.acquire(Priority.CALLER)
        budget.release()


async def test_with_nats_stopped_each_replica_spends_its_fraction_and_never_more(
    own_nats: NatsServer,
) -> None:
    """NATS stopped under load: each replica falls back to a third of the limit (after
    the hold), keeps calling, and the three never pass the limit (StackOne never says
    429), during the outage or its start."""
    async with cluster(own_nats.url) as three:
        await three.load(WINDOW)
        own_nats.stop()
        stopped = time.monotonic()
        hold = three.replicas[0].lender.hold
        await three.load(hold + 2 * WINDOW)
        assert all(replica.lender.lost for replica in three.replicas)
        assert await three.rate_limited() == 0
        everyone = [moment for replica in three.replicas for moment in replica.calls]
        assert most_in_any_window(everyone, WINDOW) <= LIMIT
        for replica in three.replicas:
            assert replica.budget.capacity[0] == LIMIT // REPLICAS
            after_hold = [moment for moment in replica.calls if moment > stopped + hold]
            assert len(after_hold) >= LIMIT // REPLICAS, "the fallback lets it call"
