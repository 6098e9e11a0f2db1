"""What every scenario of `make bench` starts and runs: roles (`tests.bench.roles`) as
processes pinned to their CPU, `serve` processes, and the row each figure becomes."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tests.harness.processes import ServeProcess, serve_env, serve_process

SERVER_CPU, LOAD_CPU = 0, 1
SECRET = "bench-webhook-secret"


@dataclass
class Row:
    """One line of the table."""

    figure: str
    value: float
    unit: str
    baseline: str
    baseline_value: float | None
    ratio: float | None
    target: str
    met: bool | None  # None: a figure shown for context, with no target of its own
    detail: str = ""


@dataclass
class Role:
    """A running `tests.bench.roles` process."""

    process: asyncio.subprocess.Process
    port: int
    more_ports: tuple[int, ...] = ()  # any other ports a server role announced

    async def result(self, timeout: float) -> dict[str, Any]:
        """Waits for the role's JSON line (read to the end: it can be longer than a
        line reader's buffer)."""
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            line = await self.process.stdout.read()
            await self.process.wait()
        if not line:
            raise RuntimeError(f"bench role exited with {self.process.returncode} and no result")
        parsed: dict[str, Any] = orjson.loads(line)
        return parsed


async def spawn(name: str, args: dict[str, Any], cpu: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.bench.roles", name, orjson.dumps(args).decode(),
        env={**os.environ, "BENCH_CPU": str(cpu)},
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip


@asynccontextmanager
async def server_role(name: str, cpu: int = SERVER_CPU, **args: Any) -> AsyncIterator[Role]:
    """Starts a role that prints `READY <port>` and kills it on exit."""
    process = await spawn(name, args, cpu)
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30):
            line = (await process.stdout.readline()).decode()
        if not line.startswith("READY"):
            raise RuntimeError(f"bench role {name} did not start")
        port, *more_ports = (int(word) for word in line.split()[1:])
        yield Role(process, port, tuple(more_ports))
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def run_role(name: str, timeout: float, **args: Any) -> dict[str, Any]:
    """Runs a load role on the load CPU to completion and returns its result."""
    process = await spawn(name, args, LOAD_CPU)
    try:
        return await Role(process, 0).result(timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@asynccontextmanager
async def serve(workdir: Path, name: str, **extra: str) -> AsyncIterator[ServeProcess]:
    """A real `stackone-connect serve` on the server CPU with its own event log."""
    directory = workdir / name
    directory.mkdir(exist_ok=True)
    env = serve_env(directory, SECRET, STACKONE_CONNECT_BOOKMARK_INTERVAL="15", **extra)
    async with serve_process(env) as process:
        yield process
