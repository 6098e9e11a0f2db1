"""One StackOne rate budget: callers first, background within its share, 429s pause it.

A real `StackOneClient` spends a `RateBudget` against the emulator playing a real
StackOne (the same limit over the same short window), over HTTP on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from google.rpc import code_pb2, error_details_pb2

from service.emulator import EmulatorConfig, build_emulator_app
from service.events.reconcile import all_accounts
from service.metrics import Metrics
from service.rpc.status import status_for
from service.runtime import running
from service.stackone.budget import Priority, RateBudget
from service.stackone.client import StackOneClient
from service.stackone.errors import BudgetExhausted
from service.web import listening
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.support import details_of, make_settings

pytestmark = pytest.mark.asyncio
API_KEY = "budget-key"
LIMIT = 10  # calls per WINDOW, for the budget and the emulator alike
WINDOW = 1.0
ACCOUNT_ROUTE = "GET /accounts/{account_id}"


@dataclass
class Rig:
    """The emulator, a client spending a budget against it, and an account to read."""

    emulator: httpx.AsyncClient
    client: StackOneClient
    budget: RateBudget
    metrics: Metrics
    account_id: str

    async def stats(self) -> dict[str, Any]:
        """The emulator's counts of StackOne calls."""
        stats: dict[str, Any] = (await self.emulator.get("/emulator/stats")).json()
        return stats

    def get(self, priority: Priority, deadline: float | None = None) -> asyncio.Task[Any]:
        """Reads the account at `priority`, as a task."""
        return asyncio.create_task(
            self.client.get_account(self.account_id, deadline=deadline, priority=priority)
        )

    def spent(self, priority: str) -> float | None:
        """The budget_calls metric of one class."""
        return self.metrics.registry.get_sample_value(
            "stackone_connect_budget_calls_total", {"priority": priority}
        )


@pytest_asyncio.fixture
async def rig() -> AsyncIterator[Rig]:
    """An emulator limited to LIMIT calls per WINDOW and a client with the same budget."""
    config = EmulatorConfig(api_key=API_KEY, rate_limit=LIMIT, rate_window=WINDOW)
    async with (
        listening(build_emulator_app(config), "127.0.0.1", 0, shutdown_timeout=0.1) as emulator,
        httpx.AsyncClient(base_url=emulator.base_url, timeout=5) as http,
    ):
        metrics = Metrics()
        budget = RateBudget(LIMIT, window=WINDOW, caller_reserve=0.2, metrics=metrics)
        account = await http.post("/emulator/accounts", json={"provider": "hibob"})
        async with StackOneClient(emulator.base_url, API_KEY, budget=budget) as client:
            yield Rig(http, client, budget, metrics, account.json()["id"])


@pytest_asyncio.fixture
async def emulator() -> AsyncIterator[httpx.AsyncClient]:
    """A bare emulator (no limit, no latency) and an HTTP client of it."""
    app = build_emulator_app(EmulatorConfig(api_key=API_KEY))
    async with (
        listening(app, "127.0.0.1", 0, shutdown_timeout=0.1) as served,
        httpx.AsyncClient(base_url=served.base_url, timeout=5) as http,
    ):
        yield http


async def until(condition: Callable[[], bool], what: str, within: float = 3.0) -> None:
    """Returns once `condition()` holds (checked every few ms); fails after `within` s."""
    ends = time.monotonic() + within
    while not condition():
        if time.monotonic() > ends:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.005)


@pytest.fixture
def tasks() -> Iterator[list[asyncio.Task[Any]]]:
    """Background tasks of a test, cancelled if it ends without them."""
    started: list[asyncio.Task[Any]] = []
    yield started
    for task in started:
        task.cancel()


async def test_callers_get_through_a_flood_of_verification_and_stackone_never_says_429(
    rig: Rig, tasks: list[asyncio.Task[Any]]
) -> None:
    """12 verifications take their share; 12 callers then get every slot that frees first
    (within 1.6 windows), and StackOne, counting the same limit, never refuses a call."""
    tasks += [rig.get(Priority.VERIFY) for _ in range(12)]
    await until(lambda: rig.budget.waiting[Priority.VERIFY] == 4, "8 verifications granted")
    callers = [rig.get(Priority.CALLER, deadline=1.6 * WINDOW) for _ in range(12)]
    accounts = await asyncio.gather(*callers)
    assert {account.id for account in accounts} == {rig.account_id}
    await asyncio.gather(*tasks)
    stats = await rig.stats()
    assert stats["rate_limited"] == 0
    assert stats["calls"][ACCOUNT_ROUTE] == 24
    assert (rig.spent("caller"), rig.spent("verify")) == (12, 12)


async def test_background_never_uses_the_caller_reserve(
    rig: Rig, tasks: list[asyncio.Task[Any]]
) -> None:
    """With 10 slots and a 20% reserve, verification stops at 8; callers take the last 2
    at once; then the limit holds for callers too."""
    tasks += [rig.get(Priority.VERIFY) for _ in range(12)]
    await until(lambda: rig.budget.waiting[Priority.VERIFY] == 4, "verifications in line")
    assert rig.budget.granted[Priority.VERIFY] == 8
    assert rig.budget.in_use == 8
    # A deadline shorter than the window: only a free slot can serve these.
    await asyncio.gather(*(rig.get(Priority.CALLER, deadline=0.5) for _ in range(2)))
    assert rig.budget.in_use == LIMIT
    with pytest.raises(BudgetExhausted):
        await rig.get(Priority.CALLER, deadline=0.5)
    assert rig.budget.waiting[Priority.VERIFY] == 4
    assert (await rig.stats())["calls"][ACCOUNT_ROUTE] == LIMIT


async def test_a_429_pauses_background_as_a_whole_but_not_callers(
    rig: Rig, tasks: list[asyncio.Task[Any]]
) -> None:
    """One 429 (Retry-After 1 s) to a verification holds every verification and sweep,
    including ones that never saw it, until then; callers' calls go through meanwhile."""
    fault = {"path_prefix": "/accounts/", "status": 429, "retry_after": 1, "times": 1}
    assert (await rig.emulator.post("/emulator/faults", json=fault)).status_code == 201
    tasks.append(rig.get(Priority.VERIFY))
    await until(lambda: rig.budget.paused_until is not None, "background paused")
    paused_until = rig.budget.paused_until
    assert paused_until is not None
    tasks += [rig.get(Priority.VERIFY) for _ in range(3)]
    tasks.append(asyncio.create_task(all_accounts(rig.client, deadline=5.0)))  # a sweep
    await until(
        lambda: (
            rig.budget.waiting[Priority.VERIFY] >= 3 and rig.budget.waiting[Priority.RECONCILE] == 1
        ),
        "background calls held",
    )
    await asyncio.gather(*(rig.get(Priority.CALLER, deadline=0.5) for _ in range(2)))
    held = await rig.stats()
    assert held["calls"] == {ACCOUNT_ROUTE: 1 + 2}, "only the 429 and the callers were sent"
    assert not any(task.done() for task in tasks)

    await asyncio.gather(*tasks)
    assert time.monotonic() >= paused_until
    done = await rig.stats()
    assert done["calls"] == {ACCOUNT_ROUTE: 1 + 2 + 1 + 3, "GET /accounts": 1}
    assert rig.metrics.registry.get_sample_value("stackone_connect_upstream_rate_limited_total")


async def test_a_caller_out_of_budget_gets_budget_exhausted_at_once(rig: Rig) -> None:
    """With the window's budget spent, a caller with 0.5 s left is refused at once, with
    the seconds until a slot frees, as RESOURCE_EXHAUSTED + RetryInfo; nothing is sent."""
    await asyncio.gather(*(rig.get(Priority.CALLER) for _ in range(LIMIT)))
    started = time.monotonic()
    with pytest.raises(BudgetExhausted) as refused:
        await rig.get(Priority.CALLER, deadline=0.5)
    assert time.monotonic() - started < 0.25
    assert refused.value.retry_after is not None
    assert 0 < refused.value.retry_after <= WINDOW
    assert "STACKONE_CONNECT_RATE_LIMIT" in str(refused.value)
    status = status_for(refused.value)
    assert status.code == code_pb2.RESOURCE_EXHAUSTED
    assert status.details[0].Is(error_details_pb2.RetryInfo.DESCRIPTOR)
    assert (await rig.stats())["calls"][ACCOUNT_ROUTE] == LIMIT


async def test_a_caller_whose_deadline_passes_in_line_gets_budget_exhausted(
    rig: Rig, tasks: list[asyncio.Task[Any]]
) -> None:
    """Behind 10 callers in line for the next window, a caller with 1.3 s left gives up at
    its deadline and leaves the line; those ahead of it are served."""
    await asyncio.gather(*(rig.get(Priority.CALLER) for _ in range(LIMIT)))
    tasks += [rig.get(Priority.CALLER) for _ in range(LIMIT)]
    await until(lambda: rig.budget.waiting[Priority.CALLER] == LIMIT, "callers in line")
    started = time.monotonic()
    with pytest.raises(BudgetExhausted) as refused:
        await rig.get(Priority.CALLER, deadline=1.3 * WINDOW)
    assert 1.2 * WINDOW <= time.monotonic() - started < 1.6 * WINDOW
    assert refused.value.retry_after is not None
    assert refused.value.retry_after > 0
    await asyncio.gather(*tasks)
    assert rig.budget.waiting[Priority.CALLER] == 0
    assert (await rig.stats())["calls"][ACCOUNT_ROUTE] == 2 * LIMIT


async def test_a_slot_is_held_a_window_after_its_call_completes() -> None:
    """A call from t=0 to t=5 in a 10 s window holds its slot until t=15, not t=10."""
    now = [0.0]
    budget = RateBudget(1, window=10, caller_reserve=0, clock=lambda: now[0])
    async with budget.slot(Priority.CALLER):
        now[0] = 5.0
    now[0] = 14.9
    assert budget.in_use == 1
    with pytest.raises(BudgetExhausted) as refused:
        await budget.acquire(Priority.VERIFY, timeout=0)
    assert refused.value.retry_after == pytest.approx(0.1)
    now[0] = 15.0
    assert budget.in_use == 0


async def test_the_emulator_limit_answers_429_with_retry_after_and_stackones_body(
    emulator: httpx.AsyncClient,
) -> None:
    """Over 3 calls per 30 s, the key's next call gets 429, whole-second Retry-After and
    StackOne's error body; another key is not limited by it; stats count both kinds."""
    behaviour = {"rate_limit": 3, "rate_window": 30}
    assert (await emulator.put("/emulator/behaviour", json=behaviour)).status_code == 200
    for _ in range(3):
        assert (await emulator.get("/accounts", auth=(API_KEY, ""))).status_code == 200
    refused = await emulator.get("/accounts", auth=(API_KEY, ""))
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 30
    body = refused.json()
    assert (body["statusCode"], body["message"]) == (429, "Too Many Requests")
    assert "timestamp" in body
    assert (await emulator.get("/accounts", auth=("other-key", ""))).status_code == 401
    stats = (await emulator.get("/emulator/stats")).json()
    assert (stats["calls"], stats["rate_limited"]) == ({"GET /accounts": 5}, 1)


async def test_a_refused_call_takes_no_slot(emulator: httpx.AsyncClient) -> None:
    """Calls refused while the window is full do not keep it full: one gets through once
    the first call leaves the window, however many were refused meanwhile."""
    behaviour = {"rate_limit": 1, "rate_window": 0.3}
    assert (await emulator.put("/emulator/behaviour", json=behaviour)).status_code == 200
    started = time.monotonic()
    assert (await emulator.get("/accounts", auth=(API_KEY, ""))).status_code == 200
    refusals = 0
    while (await emulator.get("/accounts", auth=(API_KEY, ""))).status_code == 429:
        refusals += 1
        assert time.monotonic() - started < 2, "refused calls kept the window full"
    assert time.monotonic() - started >= 0.3
    assert refusals >= 1
    assert (await emulator.get("/emulator/stats")).json()["rate_limited"] == refusals


async def test_the_emulator_latency_delays_stackone_answers(emulator: httpx.AsyncClient) -> None:
    """With 0.3 s latency a StackOne call takes at least 0.3 s."""
    answered = await emulator.put("/emulator/behaviour", json={"latency": 0.3})
    assert answered.json() == {"latency": 0.3, "rate_limit": None, "rate_window": 60.0}
    started = time.monotonic()
    assert (await emulator.get("/accounts", auth=(API_KEY, ""))).status_code == 200
    assert time.monotonic() - started >= 0.3


@pytest.mark.parametrize(
    "behaviour",
    [
        {"latency": -1},
        {"latency": "slow"},
        {"latency": True},
        {"rate_limit": 0},
        {"rate_limit": 2.5},
        {"rate_limit": True},
        {"rate_window": 0},
        {"rate_window": None},
        {"speed": 1},
        [1],
    ],
    ids=[
        "negative-latency", "text-latency", "bool-latency", "zero-limit", "fractional-limit",
        "bool-limit", "zero-window", "null-window", "unknown-key", "not-an-object",
    ],
)  # fmt: skip
async def test_bad_behaviour_is_refused(emulator: httpx.AsyncClient, behaviour: Any) -> None:
    """A bad value is a 400 and changes nothing."""
    refused = await emulator.put("/emulator/behaviour", json=behaviour)
    assert refused.status_code == 400
    unchanged = await emulator.put("/emulator/behaviour", json={})
    assert unchanged.json() == {"latency": 0.0, "rate_limit": None, "rate_window": 60.0}


async def test_behaviour_changes_and_a_null_limit_lifts_it(emulator: httpx.AsyncClient) -> None:
    """PUT answers the behaviour it set; `"rate_limit": null` removes the limit."""
    limited = {"latency": 0, "rate_limit": 5, "rate_window": 2.5}
    assert (await emulator.put("/emulator/behaviour", json=limited)).json() == {
        "latency": 0.0, "rate_limit": 5, "rate_window": 2.5,
    }  # fmt: skip
    lifted = await emulator.put("/emulator/behaviour", json={"rate_limit": None})
    assert lifted.json() == {"latency": 0.0, "rate_limit": None, "rate_window": 2.5}


async def test_serve_spends_one_budget_and_configures_the_emulator(tmp_path: Path) -> None:
    """`serve` with STACKONE_CONNECT_RATE_LIMIT=2 sends two GetAccounts and refuses the
    third at once with RESOURCE_EXHAUSTED + RetryInfo, sending nothing; the emulator
    settings reach the bundled emulator."""
    settings = make_settings(tmp_path, rate_limit=2, emulator_rate_limit=50, emulator_latency=0.01)
    async with (
        running(settings) as service,
        grpc.aio.insecure_channel(service.grpc_target) as channel,
    ):
        assert service.emulator is not None
        stub = pb_grpc.ConnectServiceStub(channel)
        request = pb.GetAccountRequest(account_id="nope")
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await stub.GetAccount(request, timeout=5)
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetAccount(request, timeout=5)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "STACKONE_CONNECT_RATE_LIMIT" in (refused.value.details() or "")
        (retry,) = details_of(refused.value, error_details_pb2.RetryInfo)
        assert retry.retry_delay.seconds > 50  # type: ignore[attr-defined]
        async with httpx.AsyncClient(base_url=service.emulator.base_url, timeout=5) as http:
            assert (await http.get("/emulator/stats")).json()["calls"] == {ACCOUNT_ROUTE: 2}
            behaviour = (await http.put("/emulator/behaviour", json={})).json()
        assert behaviour == {"latency": 0.01, "rate_limit": 50, "rate_window": 60.0}
