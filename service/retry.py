"""The one retry policy of the service: stamina's loop, with jittered exponential backoff.

Every retrying loop (the StackOne client's attempts, the verifier's stages, the JetStream
log's fresh connections) runs as `async for attempt in policy.attempts(on): with attempt:`.
The wait before retry `n` (1-based) is `min(longest_wait, first_wait * 2**(n - 1) + U(0,
first_wait))`, stamina's formula; a hook passed as `on` may return its own wait instead
(the client's Retry-After), or False to stop at once (a deadline the wait would pass).
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import stamina
from stamina.instrumentation import RetryDetails, set_on_retry_hooks

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

RetryOn = type[Exception] | tuple[type[Exception], ...] | Callable[[Exception], bool | float]
"""What is retried: exception types, or a hook saying True (retry after the policy's
wait), a float (retry after that many seconds) or False (give up, re-raising it)."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to retry.

    Args:
        attempts: tries in all, the first included (None: until it succeeds or is
            cancelled).
        first_wait: seconds before the first retry, and the most jitter added to each.
        longest_wait: the longest wait between two tries.
    """

    attempts: int | None
    first_wait: float = 0.1
    longest_wait: float = 5.0

    def wait(self, retry: int) -> float:
        """The jittered wait before retry number `retry` (1-based), as stamina draws it."""
        exponential = self.first_wait * 2.0 ** min(retry - 1, 64)
        return min(self.longest_wait, exponential + random.uniform(0, self.first_wait))

    def attempts_of(self, on: RetryOn) -> AsyncIterator[stamina.Attempt]:
        """stamina's attempts under this policy; `on` says what is retried (and may
        return the wait itself)."""
        if not isinstance(on, type | tuple):
            on = _never_on_cancellation(on)
        return aiter(
            stamina.retry_context(
                on,
                attempts=self.attempts,
                timeout=None,  # deadlines are the callers' (a hook returning False)
                wait_initial=self.first_wait,
                wait_max=self.longest_wait,
                wait_jitter=self.first_wait,
            )
        )

    async def call(self, attempt: Callable[[], Awaitable[_T]], on: RetryOn) -> _T:
        """`attempt()`, retried under this policy. The first try runs outside stamina's
        loop, which costs tens of µs to enter: a step that runs many times a second and
        seldom fails (the verifier's) pays nothing for the policy until it fails, and its
        failure is then the loop's first attempt, judged by `on` like any other."""
        try:
            return await attempt()
        except Exception as error:  # a cancellation is not retried: it propagates
            first: Exception | None = error
        async for retry in self.attempts_of(on):
            with retry:
                if first is not None:
                    failed, first = first, None
                    raise failed
                return await attempt()
        raise AssertionError("stamina ends with a result or the last error")


def _never_on_cancellation(
    hook: Callable[[Exception], bool | float],
) -> Callable[[BaseException], bool | float]:
    # stamina shows a hook every exception, a cancellation too: that one is never retried.
    def decide(error: BaseException) -> bool | float:
        return hook(error) if isinstance(error, Exception) else False

    return decide


def _log_retry(details: RetryDetails) -> None:
    _log.debug(
        "retry %d of %s in %.2fs after %r",
        details.retry_num, details.name, details.wait_for, details.caused_by,
    )  # fmt: skip


# stamina's default hooks log every retry at WARNING and count it in prometheus_client's
# global registry, which the admin listener does not serve: each loop here counts and
# reports its own failures (the StackOne client's attempts, the verifier's failures).
set_on_retry_hooks([_log_retry])
