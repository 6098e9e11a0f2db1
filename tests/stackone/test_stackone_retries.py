"""The StackOne client's retry policy against a scripted StackOne (`httpx.MockTransport`,
which stands for StackOne's HTTP, not for our code): Retry-After in seconds and as an
HTTP date, the cap on attempts, per-attempt timeouts, and deadlines no call outlives."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
import pytest_asyncio

from service.retry import RetryPolicy
from service.stackone.client import StackOneClient
from service.stackone.errors import StackOneRateLimited, StackOneServerError, StackOneTimeout
from service.stackone.models import ConnectSessionCreate

pytestmark = pytest.mark.asyncio
ACCOUNT = {"id": "acc-1", "provider": "hibob", "status": "active"}
Answer = Callable[[int], httpx.Response | None]
"""StackOne's answer to its `n`th request (1-based); None: it never answers."""


class ScriptedStackOne:
    """A StackOne that answers as `answer` says and counts the requests it got."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests = 0
        self.transport = httpx.MockTransport(self._handle)

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        response = self.answer(self.requests)
        if response is None:
            await asyncio.Event().wait()  # hangs until the client gives up on it
            raise AssertionError("never woken")
        return response


def failing(status: int, *, retry_after: str | None = None, then_ok: int = 0) -> Answer:
    """`status` (with Retry-After) to every request, or to all before the `then_ok`th."""
    headers = {} if retry_after is None else {"Retry-After": retry_after}

    def answer(n: int) -> httpx.Response:
        if then_ok and n >= then_ok:
            return httpx.Response(200, json=ACCOUNT)
        return httpx.Response(status, json={"message": "scripted"}, headers=headers)

    return answer


Rig = Callable[[Answer], tuple[StackOneClient, ScriptedStackOne]]


@pytest_asyncio.fixture
async def stackone() -> AsyncIterator[Rig]:
    """Makes a client of a StackOne scripted by an `Answer`."""
    clients: list[StackOneClient] = []

    def client_of(answer: Answer) -> tuple[StackOneClient, ScriptedStackOne]:
        scripted = ScriptedStackOne(answer)
        client = StackOneClient("https://api.example/v1", "key", transport=scripted.transport)
        clients.append(client)
        return client, scripted

    yield client_of
    for client in clients:
        await client.aclose()


async def timed(call: Awaitable[object]) -> float:
    """Seconds `call` takes on the loop's clock."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    await call
    return loop.time() - started


def _in_two_seconds() -> str:
    return format_datetime(datetime.now(UTC) + timedelta(seconds=2), usegmt=True)


@pytest.mark.parametrize(
    ("status", "retry_after"),
    [(503, lambda: "1"), (429, _in_two_seconds)],
    ids=["seconds", "http-date"],
)
async def test_retry_after_is_waited_before_the_next_attempt(
    stackone: Rig, status: int, retry_after: Callable[[], str]
) -> None:
    """503 with `Retry-After: 1`, or 429 with a date 2 s ahead (whole seconds, so 1-2 s
    from now), then the account: the retry comes after at least a second."""
    client, scripted = stackone(failing(status, retry_after=retry_after(), then_ok=2))
    seconds = await timed(client.get_account("acc-1", deadline=5))
    assert 1.0 <= seconds < 5  # waited as asked, and answered within the deadline
    assert scripted.requests == 2


async def test_a_retry_after_past_the_deadline_ends_the_call_at_once(
    stackone: Rig,
) -> None:
    """429 asking for 30 s, with 5 s left: the 429 comes back now, after one request."""
    client, scripted = stackone(failing(429, retry_after="30"))
    with pytest.raises(StackOneRateLimited) as refused:
        await asyncio.wait_for(client.get_account("acc-1", deadline=5), timeout=1)
    assert refused.value.retry_after == 30
    assert (scripted.requests, refused.value.attempts) == (1, 1)


async def test_attempts_are_capped_and_the_last_error_says_how_many(
    stackone: Rig,
) -> None:
    """A StackOne failing for good gets 3 requests per call (max_retries 2), or the
    attempts of the policy a call brings; a session is created once, never retried."""
    client, scripted = stackone(failing(503))
    with pytest.raises(StackOneServerError) as failed:
        await client.get_account("acc-1", deadline=30)
    assert (scripted.requests, failed.value.attempts) == (3, 3)
    with pytest.raises(StackOneServerError) as failed:
        await client.get_account("acc-1", deadline=30, retry=RetryPolicy(5, first_wait=0.01))
    assert (scripted.requests, failed.value.attempts) == (8, 5)
    with pytest.raises(StackOneServerError):
        await client.create_connect_session(
            ConnectSessionCreate(origin_owner_id="o", origin_owner_name="O")
        )
    assert scripted.requests == 9


async def test_a_call_never_outlives_its_deadline(
    stackone: Rig,
) -> None:
    """A StackOne that never answers: the call ends at its 0.3 s deadline, timed out."""
    client, _ = stackone(lambda n: None)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(StackOneTimeout):
        async with asyncio.timeout(2):  # (a TimeoutError here is the deadline missed)
            await client.get_account("acc-1", deadline=0.3)
    assert 0.3 <= loop.time() - started < 0.45


async def test_an_attempt_that_hangs_is_timed_out_and_retried_within_the_deadline(
    stackone: Rig,
) -> None:
    """The first request hangs: with 0.2 s per attempt the second one, which answers,
    is sent well before the 5 s deadline."""
    answers = failing(503, then_ok=2)
    client, scripted = stackone(lambda n: None if n == 1 else answers(n))
    seconds = await timed(client.get_account("acc-1", deadline=5, attempt_timeout=0.2))
    assert 0.2 <= seconds < 1.0
    assert scripted.requests == 2
