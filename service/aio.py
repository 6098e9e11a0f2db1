"""Small asyncio helpers shared by the lifecycle and background stages."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any


async def cancel_all(tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Cancels `tasks` and waits for them, cancelling again while any is still running:
    on Python 3.11 `asyncio.wait_for` (used inside nats-py) can swallow a cancellation
    that arrives as its inner call completes, and the task would then run on."""
    while pending := [task for task in tasks if not task.done()]:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.5)
    await asyncio.gather(*tasks, return_exceptions=True)
