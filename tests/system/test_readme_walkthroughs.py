"""The README's console walk-throughs, run as written, in order, on one running service
(as `make run` starts it: the bundled emulator, a fresh log): each command's output must
be what the README shows (times, tokens and this run's ports masked)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.harness.processes import ServeProcess, serve_env, serve_process
from tests.harness.walkthroughs import Console, walkthrough

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]
CLI = str(Path(sys.executable).parent / "stackone-connect")
WALKTHROUGHS = [
    "Walk-through: link an account and watch the event arrive",
    "Sending an Auth Link by e-mail",
    "An account went to error: getting the customer to reconnect",
]


@pytest_asyncio.fixture
async def service(tmp_path: Path) -> AsyncIterator[ServeProcess]:
    """`serve` with the emulator and its webhooks, as `make run` has it."""
    env = serve_env(tmp_path, "whsec-walkthrough", STACKONE_CONNECT_BOOKMARK_INTERVAL="15")
    async with serve_process(env) as process:
        yield process


async def test_the_readme_walkthroughs_run_as_written(service: ServeProcess) -> None:
    """Each walk-through continues from the state the one before it left."""
    emulator = service.emulator_url.removeprefix("http://")
    admin = service.admin_url.removeprefix("http://")
    console = Console(
        {"C": CLI, "STACKONE_CONNECT_TARGET": service.grpc_target},
        {
            "127.0.0.1:8090": emulator,
            "localhost:8090": emulator,
            "127.0.0.1:50051": service.grpc_target,
            "localhost:9464": admin,
        },
    )
    try:
        for heading in WALKTHROUGHS:
            for step in walkthrough(heading):
                await console.run(step)
    finally:
        await console.close()
