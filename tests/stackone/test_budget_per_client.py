"""Each client's own share of the callers' StackOne budget (`calls_per_minute`): past it
that client is refused RESOURCE_EXHAUSTED with RetryInfo at once, and the others go on."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import httpx
import orjson
import pytest
from google.rpc import error_details_pb2

from service.runtime import running
from service.stackone.budget import CALLER_SHARE, ClientShare, Priority, RateBudget
from service.stackone.errors import BudgetExhausted, ClientBudgetExhausted
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.support import details_of, make_settings, metric

pytestmark = pytest.mark.asyncio
NOISY = "noisy-batch-token-0123456789"
QUIET = "quiet-hub-token-0123456789"
RATE_LIMIT = 30
NOISY_SHARE = 10


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def take(budget: RateBudget, share: ClientShare | None) -> None:
    """One CALLER slot, taken for the client of `share`."""
    CALLER_SHARE.set(share)
    async with budget.slot(Priority.CALLER, timeout=0):
        pass  # the call: its slot is held a window from now


async def test_a_client_past_its_share_is_refused_at_once_and_others_go_on() -> None:
    """A share of 2 a minute: the third call is refused, saying when a call frees (the
    oldest call's minute), while a client without a share and another client go on; a
    call the shared budget refuses is not counted against the client."""
    clock = Clock()
    budget = RateBudget(5, window=60.0, clock=clock)
    batch, hub = ClientShare("batch", 2), ClientShare("hub", 2)
    await take(budget, batch)
    clock.now += 10
    await take(budget, batch)
    with pytest.raises(ClientBudgetExhausted) as refused:
        await take(budget, batch)
    assert refused.value.retry_after == pytest.approx(50.0)
    assert "client 'batch'" in str(refused.value)
    await take(budget, None)
    await take(budget, hub)
    await take(budget, hub)  # 5 of 5 slots taken now
    clock.now += 20
    with pytest.raises(ClientBudgetExhausted):
        await take(budget, batch)  # its two calls are still within the minute
    late = ClientShare("late", 1)
    with pytest.raises(BudgetExhausted) as shared:
        await take(budget, late)  # the shared budget is spent: not the client's fault
    assert not isinstance(shared.value, ClientBudgetExhausted)
    clock.now += 31  # the first call's slot is free again, and it was batch's
    await take(budget, late)  # its refused call was not counted against its one
    clock.now += 10
    await take(budget, batch)


def _clients(path: Path) -> Path:
    entry = {"scopes": ["sessions:create"]}
    clients = [
        {"name": "noisy-batch", "token": NOISY, "calls_per_minute": NOISY_SHARE, **entry},
        {"name": "quiet-hub", "token": QUIET, **entry},
    ]
    path.write_bytes(orjson.dumps({"clients": clients}))
    return path


REQUEST = pb.CreateSessionRequest(origin_owner_id="t-1", origin_owner_name="Acme")


@pytest.mark.timeout(60)
async def test_a_noisy_client_at_its_limit_does_not_slow_another_clients_sessions(
    tmp_path: Path,
) -> None:
    """With a budget of 30 a minute, a batch client of 10 hammering CreateSession (40 at a
    time, again and again) gets its 10 and then RESOURCE_EXHAUSTED with RetryInfo; the Hub
    client meanwhile gets all its 15 sessions at once, none waiting on the budget."""
    settings = make_settings(
        tmp_path, clients_file=_clients(tmp_path / "clients.json"), rate_limit=RATE_LIMIT
    )
    async with (
        running(settings) as service,
        grpc.aio.insecure_channel(service.grpc_target) as channel,
        httpx.AsyncClient(base_url=service.admin.base_url) as admin,
    ):
        stub = pb_grpc.ConnectServiceStub(channel)
        noisy_codes: list[grpc.StatusCode] = []
        refusal: grpc.aio.AioRpcError | None = None
        quiet_done, noisy_refused = asyncio.Event(), asyncio.Event()

        async def noisy_call() -> None:
            nonlocal refusal
            try:
                await stub.CreateSession(REQUEST, metadata=(("authorization", f"Bearer {NOISY}"),))
                noisy_codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as error:
                noisy_codes.append(error.code())
                refusal = error
                noisy_refused.set()

        async def hammer() -> None:
            while not quiet_done.is_set():
                await asyncio.gather(*(noisy_call() for _ in range(40)))

        hammering = asyncio.create_task(hammer())
        await noisy_refused.wait()  # the hub starts once the batch client spent its share
        latencies = []
        for _ in range(15):
            started = time.perf_counter()
            await stub.CreateSession(
                REQUEST, metadata=(("authorization", f"Bearer {QUIET}"),), timeout=5
            )
            latencies.append(time.perf_counter() - started)
        quiet_done.set()
        await hammering
        assert noisy_codes.count(grpc.StatusCode.OK) == NOISY_SHARE
        assert set(noisy_codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert refusal is not None
        assert "client 'noisy-batch'" in (refusal.details() or "")
        [retry] = details_of(refusal, error_details_pb2.RetryInfo)
        assert isinstance(retry, error_details_pb2.RetryInfo)
        assert 0 < retry.retry_delay.ToTimedelta().total_seconds() <= 60
        # None waited on the budget (a wait would last until a slot's minute is over).
        assert max(latencies) < 2.0, latencies
        refused = noisy_codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
        labels = 'client="noisy-batch",outcome'
        assert await metric(admin, f'stackone_connect_client_calls_total{{{labels}="ok"}}') == 10
        assert (
            await metric(admin, f'stackone_connect_client_calls_total{{{labels}="refused"}}')
            == refused
        )
