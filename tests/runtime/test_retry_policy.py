"""The service's one retry policy (`service.retry`): its waits, and a cancellation that
no hook can retry."""

from __future__ import annotations

import asyncio

import pytest

from service.retry import RetryPolicy

pytestmark = pytest.mark.asyncio


async def test_waits_double_from_the_first_with_jitter_up_to_the_longest() -> None:
    """Retry n waits first * 2**(n-1) plus up to `first` of jitter, never past `longest`."""
    policy = RetryPolicy(attempts=None, first_wait=0.1, longest_wait=2.0)
    for retry, low in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.6)]:
        waits = [policy.wait(retry) for _ in range(200)]
        assert low <= min(waits)
        assert max(waits) <= min(low + 0.1, 2.0)
        assert max(waits) - min(waits) > 0.01 or low + 0.1 > 2.0, "jittered"
    assert {policy.wait(30) for _ in range(20)} == {2.0}


async def test_a_cancelled_attempt_ends_the_loop_even_when_the_hook_retries_everything() -> None:
    """A task cancelled inside an attempt ends cancelled: stamina shows its hook the
    cancellation too, and a hook that says yes to any error must not retry it."""
    started = asyncio.Event()
    shown: list[Exception] = []

    def retry_anything(error: Exception) -> bool:
        shown.append(error)
        return len(shown) == 1  # (once: without the guard this test fails, not hangs)

    async def retried() -> None:
        async for attempt in RetryPolicy(attempts=None).attempts_of(retry_anything):
            with attempt:
                started.set()
                await asyncio.Event().wait()

    task = asyncio.create_task(retried())
    await started.wait()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    assert done == {task}
    assert task.cancelled()
    assert shown == [], "the hook never saw the cancellation"


async def test_call_counts_the_direct_first_try_as_the_policys_first_attempt() -> None:
    """`call` tries once outside stamina's loop; its failure is the loop's first attempt,
    so a policy of 3 attempts makes 3 tries in all, and a success ends it at once."""
    tries: list[int] = []

    async def fails() -> None:
        tries.append(len(tries) + 1)
        raise ConnectionError(f"try {len(tries)}")

    with pytest.raises(ConnectionError, match="try 3"):
        await RetryPolicy(attempts=3, first_wait=0.001).call(fails, ConnectionError)
    assert tries == [1, 2, 3]

    async def second_time_lucky() -> str:
        tries.append(len(tries) + 1)
        if len(tries) < 5:
            raise ConnectionError("not yet")
        return "done"

    assert (
        await RetryPolicy(attempts=3, first_wait=0.001).call(second_time_lucky, ConnectionError)
        == "done"
    )
    assert tries == [1, 2, 3, 4, 5]


async def test_call_retries_nothing_its_hook_refuses() -> None:
    """A failure the hook answers False to is raised from the first try, unretried."""
    tries: list[str] = []

    async def final() -> None:
        tries.append("try")
        raise LookupError("final")

    with pytest.raises(LookupError):
        await RetryPolicy(attempts=None, first_wait=0.001).call(final, lambda error: False)
    assert tries == ["try"]
