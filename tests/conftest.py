"""Shared fixtures: real servers on 127.0.0.1 port 0, nothing mocked."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
import pytest_asyncio

from service.api.v1 import stackone_connect_pb2_grpc as pb_grpc
from service.config import ENV_PREFIX
from service.events.sqlite import SqliteEventLog
from service.runtime import Runtime, running
from tests.support import make_settings


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keeps the developer's own STACKONE_CONNECT_* variables out of every test."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


@pytest_asyncio.fixture
async def event_log(tmp_path: Path) -> AsyncIterator[SqliteEventLog]:
    """A fresh embedded event log in a temporary file."""
    log = await SqliteEventLog.open(tmp_path / "events.db")
    yield log
    await log.close()


@pytest_asyncio.fixture
async def service(tmp_path: Path) -> AsyncIterator[Runtime]:
    """The whole service (gRPC, gateway, bundled emulator) as `serve` runs it."""
    async with running(make_settings(tmp_path)) as runtime:
        yield runtime


@pytest_asyncio.fixture
async def stub(service: Runtime) -> AsyncIterator[pb_grpc.ConnectServiceAsyncStub]:
    """A gRPC client of the running service."""
    async with grpc.aio.insecure_channel(service.grpc_target) as channel:
        yield pb_grpc.ConnectServiceStub(channel)


@pytest_asyncio.fixture
async def emulator_http(service: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the bundled StackOne emulator's own actions."""
    assert service.emulator is not None
    async with httpx.AsyncClient(base_url=service.emulator.base_url, timeout=5) as client:
        yield client
