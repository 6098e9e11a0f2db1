"""Several `serve` processes sharing one JetStream stream (replicas)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from tests.harness.processes import ServeProcess, serve_env, serve_process
from tests.harness.support import WEBHOOK_SECRET, LogBackend


def replica_env(tmp_path: Path, url: str, stream: str, **extra: str) -> dict[str, str]:
    """Environment of one replica on the shared JetStream stream."""
    backend = LogBackend(url, stream=stream)
    return serve_env(tmp_path, WEBHOOK_SECRET, **backend.env(), **extra)


@asynccontextmanager
async def replicas(
    count: int, tmp_path: Path, url: str, *, stream: str = "", **extra: str
) -> AsyncIterator[list[ServeProcess]]:
    """`count` separate serve processes on one stream (a fresh one unless named)."""
    stream = stream or f"R{uuid.uuid4().hex}"
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                serve_process(replica_env(tmp_path, url, stream, **extra))
            )
            for _ in range(count)
        ]
