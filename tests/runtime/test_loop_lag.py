"""The service measures its own event loop's lag and exports it as a metric."""

from __future__ import annotations

import time

import httpx
import pytest

from service.runtime import Runtime
from tests.harness.support import eventually, loop_lag_counts

pytestmark = pytest.mark.asyncio


async def test_a_blocked_event_loop_shows_in_the_lag_metrics(service: Runtime) -> None:
    """Blocking the loop for 150 ms: one more measurement over 100 ms in the histogram, and
    the recent-maximum gauge at 150 ms or so."""
    async with httpx.AsyncClient(base_url=service.admin.base_url) as http:

        async def lag() -> tuple[int, int]:
            return loop_lag_counts((await http.get("/metrics")).text, 0.1)

        async def measuring() -> bool:
            return (await lag())[0] > 0

        await eventually(measuring)
        lagged_before = (await lag())[1]
        time.sleep(0.15)  # noqa: ASYNC251 - blocking the loop is what this test does

        async def lagged() -> bool:
            return (await lag())[1] > lagged_before

        await eventually(lagged)
        page = (await http.get("/metrics")).text
    (gauge,) = [
        float(line.split()[1])
        for line in page.splitlines()
        if line.startswith("stackone_connect_event_loop_lag_max_seconds ")
    ]
    assert 0.13 <= gauge < 1.0
