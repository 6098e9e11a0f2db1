"""Shared fixtures: real servers on 127.0.0.1 port 0, nothing mocked."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import pytest_asyncio

from service.config import ENV_PREFIX
from service.events.log import EventLog
from service.runtime import Runtime, running
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.nats import NatsServer
from tests.harness.support import LogBackend, make_settings


def pytest_addoption(parser: pytest.Parser) -> None:
    """`--fuzz` runs the long fuzzing runs (marker `fuzz`), which are skipped otherwise."""
    parser.addoption(
        "--fuzz", action="store_true", help="run the 10,000-example fuzzing runs (make fuzz)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skips `fuzz` tests without `--fuzz`, whatever `-m` says (it replaces addopts' `-m`)."""
    if config.getoption("--fuzz"):
        return
    skip = pytest.mark.skip(reason="a long fuzzing run: needs --fuzz (make fuzz)")
    for item in items:
        if item.get_closest_marker("fuzz") is not None:
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Turns the skip of a `needs_root` test into a failure where `CI` is set: CI runs as
    root, so there the skip means a storage-fault test silently stopped running."""
    report = yield
    if report.skipped and os.environ.get("CI") and item.get_closest_marker("needs_root"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"a needs_root test skipped in CI (CI={os.environ['CI']}): {reason}"
    return report


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keeps the developer's own STACKONE_CONNECT_* (and OTEL_*: tracing) variables out
    of every test."""
    for name in list(os.environ):
        if name.startswith((ENV_PREFIX, "OTEL_")):
            monkeypatch.delenv(name)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Runs a module's tests on every backend it lists in `BACKENDS` (default: SQLite)."""
    if "backend" in metafunc.fixturenames:
        backends = getattr(metafunc.module, "BACKENDS", ["sqlite"])
        metafunc.parametrize("backend", backends, indirect=True)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One real nats-server with JetStream for the session; tests use their own streams."""
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> LogBackend:
    """Where a test's event log lives: a SQLite file, or a fresh JetStream stream."""
    if request.param == "sqlite":
        return LogBackend(f"sqlite:///{tmp_path / 'events.db'}")
    server: NatsServer = request.getfixturevalue("nats_server")
    return LogBackend(server.url, stream=f"T{uuid.uuid4().hex}")


@pytest_asyncio.fixture
async def event_log(backend: LogBackend) -> AsyncIterator[EventLog]:
    """A fresh event log on the test's backend."""
    log = await backend.open()
    yield log
    await log.close()


@pytest_asyncio.fixture
async def service(tmp_path: Path, backend: LogBackend) -> AsyncIterator[Runtime]:
    """The whole service (gRPC, gateway, bundled emulator) as `serve` runs it."""
    async with running(make_settings(tmp_path, **backend.settings())) as runtime:
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
