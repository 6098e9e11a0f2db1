"""The SQLite log when its storage fails: health tells the truth, one writer per file,
damaged files refused at start-up, background work that outlives every failure.

Storage failures here are real ones: SQLite's own page limit (SQLITE_FULL, "database or
disk is full"), a real full filesystem (a small tmpfs, when this machine lets the test
mount one) and files made immutable (`chattr +i`, which stops even root's writes).
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, closing, contextmanager
from dataclasses import replace
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.aio import cancel_all
from service.events.log import EventLog
from service.events.model import EventLogUnavailable, EventRecord, Retention
from service.events.sqlite import SqliteEventLog, SqliteOptions
from service.health import Health
from service.metrics import Metrics
from service.rpc.server import new_health_servicer
from service.runtime import ConfigurationError, Runtime, grpc_health, running
from tests.harness.processes import SERVE, run_to_end, serve_env, serve_process
from tests.harness.support import (
    WEBHOOK_SECRET,
    deliver,
    eventually,
    inbox_is_empty,
    make_settings,
    metric,
    webhook,
)

pytestmark = pytest.mark.asyncio
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
EVENT_LOG_URL = "STACKONE_CONNECT_EVENT_LOG_URL"


def record(n: int, body: bytes = b"") -> EventRecord:
    """An account.deleted record numbered `n`."""
    return EventRecord(f"evt-{n}", "account.deleted", f"acct-{n}", "hibob", "o", body)


@asynccontextmanager
async def served(
    tmp_path: Path, **overrides: object
) -> AsyncIterator[tuple[Runtime, grpc.aio.Channel, httpx.AsyncClient]]:
    """The whole service probing its log every 50 ms, a gRPC channel and an admin client."""
    settings = make_settings(tmp_path, readiness_interval=0.05, **overrides)
    async with (
        running(settings) as service,
        grpc.aio.insecure_channel(service.grpc_target) as channel,
        httpx.AsyncClient(base_url=service.admin.base_url) as admin,
    ):
        yield service, channel, admin


async def health_becomes(channel: grpc.aio.Channel, status: int, timeout: float = 10) -> None:
    """Returns once gRPC health (the whole server) reports `status`."""
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
    async with asyncio.timeout(timeout):
        async for update in watch:
            if update.status == status:
                break
    watch.cancel()


async def set_page_limit(log: EventLog, pages: int | None) -> int:
    """Sets SQLite's page limit on the log's writing connection (None: the pages it has
    now, so no page can be added: SQLITE_FULL, as on a full disk); returns the old one."""
    assert isinstance(log, SqliteEventLog)
    old = await log.pragma("max_page_count")
    limit = pages
    if limit is None:
        assert await log.pragma("freelist_count") == 0, "free pages: room under the limit"
        limit = await log.pragma("page_count")
    await log.pragma("max_page_count", limit)
    return old


def tool(name: str) -> str:
    """The path of a system command, skipping the test where it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


@contextmanager
def immutable(paths: Sequence[Path]) -> Iterator[None]:
    """Makes files immutable (`chattr +i`: every write fails, root's too) until the block
    exits; skips the test where the flag cannot be set (it needs root, and ext4 or xfs)."""
    chattr = tool("chattr")
    try:
        subprocess.run([chattr, "+i", *map(str, paths)], check=True, capture_output=True)
    except subprocess.CalledProcessError as error:
        pytest.skip(f"cannot make files immutable here: {error.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", *map(str, paths)], check=True)


@contextmanager
def small_filesystem(directory: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `directory` until the block exits; skips the test
    where mounting is not allowed (it needs root, or CAP_SYS_ADMIN)."""
    mount, umount = tool("mount"), tool("umount")
    directory.mkdir()
    command = [mount, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)]
    try:
        subprocess.run(command, check=True, capture_output=True)
    except subprocess.CalledProcessError as error:
        pytest.skip(f"cannot mount a tmpfs here: {error.stderr.decode().strip()}")
    try:
        yield directory
    finally:
        subprocess.run([umount, str(directory)], check=True)


def wal_of_a_busy_log(database: Path) -> None:
    """Leaves the WAL as a busy log's is: grown to its working size (4 MiB, where SQLite
    checkpoints) and, checkpointed, written again from its start, in blocks it has."""
    with closing(sqlite3.connect(database, timeout=5, isolation_level=None)) as conn:
        conn.execute("INSERT INTO probe (id, room) VALUES (2, zeroblob(4 << 20))")
        conn.execute("DELETE FROM probe WHERE id = 2")
        conn.execute("PRAGMA wal_checkpoint(RESTART)")


def fill(filler: Path) -> None:
    """Writes to `filler` until the filesystem has no block left."""
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:
            os.write(fd, bytes(4096))
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)


# --- Health tells the truth -------------------------------------------------------


async def test_a_full_database_is_not_serving_until_it_has_room_again(tmp_path: Path) -> None:
    """At SQLite's page limit (SQLITE_FULL) health is NOT_SERVING and /readyz 503; lifting
    the limit brings back SERVING and 200."""
    async with served(tmp_path) as (service, channel, admin):
        unlimited = await set_page_limit(service.event_log, None)
        await health_becomes(channel, NOT_SERVING)
        refused = await admin.get("/readyz")
        await set_page_limit(service.event_log, unlimited)
        await health_becomes(channel, SERVING)
        assert (await admin.get("/readyz")).status_code == 200
    assert refused.status_code == 503
    assert "database or disk is full" in refused.json()["error"]


@pytest.mark.needs_root
async def test_a_full_filesystem_is_not_serving_until_space_is_freed(tmp_path: Path) -> None:
    """With the log on a real filesystem that fills up, health is NOT_SERVING and /readyz
    503 (no space left), though SQLite alone could still write for a while (its WAL reuses
    its blocks); freeing the space brings back SERVING and 200."""
    with small_filesystem(tmp_path / "disk", "16m") as disk:
        url = f"sqlite:///{disk / 'events.db'}"
        async with served(tmp_path, event_log_url=url) as (_, channel, admin):
            await asyncio.to_thread(wal_of_a_busy_log, disk / "events.db")
            filler = disk / "filler"
            # Topped up until the probe fails: a probe finishing as the disk fills gives
            # its old page back, and that page would do for every later probe.
            async with asyncio.timeout(10):
                while (await admin.get("/readyz")).status_code != 503:
                    fill(filler)
            await health_becomes(channel, NOT_SERVING)
            refused = await admin.get("/readyz")
            filler.unlink()
            await health_becomes(channel, SERVING)
            assert (await admin.get("/readyz")).status_code == 200
    assert "No space left on device" in refused.json()["error"]


@pytest.mark.needs_root
async def test_an_unwritable_log_is_not_serving_until_it_is_writable_again(
    tmp_path: Path,
) -> None:
    """With the log's files immutable, health is NOT_SERVING, /readyz 503 and a webhook
    503 (a writer failure counted); writable again, SERVING, 200, and webhooks recorded."""
    log_files = [tmp_path / "events.db", tmp_path / "events.db-wal"]
    writer_failures = 'stackone_connect_background_failures_total{task="event_log_writer"}'
    async with (
        served(tmp_path) as (service, channel, admin),
        httpx.AsyncClient(base_url=service.gateway.base_url) as gateway,
    ):
        with immutable(log_files):
            await health_becomes(channel, NOT_SERVING)
            refused = await admin.get("/readyz")
            webhook_refused = await deliver(gateway, webhook())
            failures = await metric(admin, writer_failures)
        await health_becomes(channel, SERVING)
        assert (await admin.get("/readyz")).status_code == 200
        assert (await deliver(gateway, webhook())).status_code == 200
    assert refused.status_code == 503
    assert "disk I/O error" in refused.json()["error"]
    assert webhook_refused.status_code == 503
    assert failures == 1


# --- One writer per file ------------------------------------------------------------


async def serve_until_it_exits(env: dict[str, str]) -> tuple[int, str]:
    """Runs `serve` expecting it to refuse to start; returns its exit code and stderr."""
    code, _, err = await run_to_end(SERVE, env=env, timeout=30)
    return code, err


@pytest.mark.slow
async def test_a_second_serve_on_the_same_file_refuses_to_start(tmp_path: Path) -> None:
    """A second `serve` on a SQLite file in use exits 2 with one line naming the file, the
    first one's pid and the setting; the first one serves on."""
    env = serve_env(tmp_path, WEBHOOK_SECRET)
    database = tmp_path / "events.db"
    async with serve_process(env) as first:
        code, err = await serve_until_it_exits(env)
        async with httpx.AsyncClient(base_url=first.admin_url) as admin:
            assert (await admin.get("/readyz")).status_code == 200
    assert code == 2
    assert err.splitlines() == [
        f"stackone-connect: cannot start: the event log {database} is in use by another "
        f"process (pid {first.pid}): one process at a time writes a SQLite log (replicas "
        f"share a NATS JetStream log instead) ({EVENT_LOG_URL})"
    ]


async def test_one_open_log_per_file_until_it_is_closed(tmp_path: Path) -> None:
    """A second open of a file in use fails at once, in the same process too; once the
    first log is closed the file opens again."""
    path = tmp_path / "events.db"
    log = await SqliteEventLog.open(SqliteOptions(path))
    try:
        with pytest.raises(EventLogUnavailable, match=f"{path} is in use by another process"):
            await SqliteEventLog.open(SqliteOptions(path))
    finally:
        await log.close()
    reopened = await SqliteEventLog.open(SqliteOptions(path))
    await reopened.close()


# --- Damaged files ------------------------------------------------------------------


@pytest.mark.slow
async def test_a_file_that_is_not_a_database_is_a_one_line_start_up_error(
    tmp_path: Path,
) -> None:
    """`serve` on a file of garbage exits 2 with one line naming the file and the setting."""
    database = tmp_path / "events.db"
    database.write_bytes(b"these bytes are no SQLite database\n" * 200)
    code, err = await serve_until_it_exits(serve_env(tmp_path, WEBHOOK_SECRET))
    assert code == 2
    assert err.splitlines() == [
        f"stackone-connect: cannot start: cannot open the event log {database}: file is not "
        f"a database ({EVENT_LOG_URL})"
    ]


async def test_a_damaged_page_is_found_at_start_up(tmp_path: Path) -> None:
    """A log whose header is intact but one page is garbage is refused at start-up, in one
    line naming the file, before anything reads the damaged page."""
    database = tmp_path / "events.db"
    log = await SqliteEventLog.open(SqliteOptions(database))
    await log.append([record(n, bytes(1000)) for n in range(300)])
    await log.close()
    pages = database.stat().st_size // 4096
    with database.open("r+b") as file:
        file.seek(pages // 2 * 4096)
        file.write(b"\xa5" * 4096)
    with pytest.raises(ConfigurationError) as refused:
        async with running(make_settings(tmp_path)):
            pass
    message = str(refused.value)
    assert message.startswith(f"the event log {database} is damaged (")
    assert message.endswith(f"({EVENT_LOG_URL})")
    assert "\n" not in message


@pytest.mark.slow
async def test_an_empty_file_where_a_log_was_expected_is_a_warning(tmp_path: Path) -> None:
    """`serve` on a 0-byte file starts a new log in it and says so in a WARNING line."""
    database = tmp_path / "events.db"
    database.touch()
    async with serve_process(serve_env(tmp_path, WEBHOOK_SECRET)) as serve:
        warnings = [line for line in serve.log_lines if line.get("level") == "WARNING"]
    assert [line for line in warnings if line.get("event_log") == str(database)]


# --- Background work never dies -----------------------------------------------------


@pytest.mark.needs_root
async def test_the_retention_sweep_survives_a_storage_failure(tmp_path: Path) -> None:
    """Sweeps that fail (the files immutable) are reported and retried; once the files
    are writable a sweep prunes again."""
    path = tmp_path / "events.db"
    failures: list[str] = []
    log = await SqliteEventLog.open(
        SqliteOptions(path, Retention(max_count=1, sweep_interval=0.02)),
        report_failure=failures.append,
    )
    try:
        with immutable([path, path.with_name("events.db-wal")]):
            await eventually(lambda: len(failures) >= 2)
        await log.append([record(n) for n in range(3)])

        async def pruned() -> bool:
            return (await log.bounds()).pruned_through == 2

        await eventually(pruned)
    finally:
        await log.close()
    assert set(failures) == {"event_log_retention"}


async def test_the_writer_survives_a_write_it_cannot_make(tmp_path: Path) -> None:
    """A write failing with something other than a storage error (an id SQLite cannot
    bind, which no typed caller sends) fails alone and is reported; the writer commits
    the next one."""
    failures: list[str] = []
    log = await SqliteEventLog.open(
        SqliteOptions(tmp_path / "events.db"), report_failure=failures.append
    )
    unbindable = replace(record(0), covered_ids=(2**70,))  # type: ignore[arg-type]
    try:
        async with asyncio.timeout(5):
            with pytest.raises(EventLogUnavailable, match="too large"):
                await log.append([unbindable])
            (outcome,) = await log.append([record(1)])
    finally:
        await log.close()
    assert outcome.cursor == 1
    assert failures == ["event_log_writer"]


async def test_the_readiness_watch_survives_a_probe_that_raises_the_unexpected() -> None:
    """A probe raising something other than a storage error makes health NOT_SERVING, is
    counted, and the watch probes again: SERVING once a probe succeeds."""
    reporter = new_health_servicer()
    metrics = Metrics()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(reporter, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    mended = asyncio.Event()
    faults = 0

    async def probe() -> None:
        nonlocal faults
        if not mended.is_set():
            faults += 1
            raise ValueError("a fault in the probe itself, not in the storage")

    health = Health(metrics, expected=(EventLogUnavailable,))
    health.register("event_log_writable", probe)
    health.subscribe(grpc_health(reporter))
    await reporter.set("", SERVING)
    watch = asyncio.create_task(health.run(0.01))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await health_becomes(channel, NOT_SERVING)
            mended.set()
            await health_becomes(channel, SERVING)
    finally:
        await cancel_all([watch])
        await server.stop(None)
    counted = metrics.registry.get_sample_value(
        "stackone_connect_background_failures_total", {"task": "readiness"}
    )
    assert faults >= 1
    assert counted == faults


@pytest.mark.needs_root
async def test_reconciliation_survives_a_storage_failure(tmp_path: Path) -> None:
    """Sweeps that cannot record are counted as failed, and the next sweep after the
    storage recovers records what they could not."""
    failed = 'stackone_connect_reconcile_sweeps_total{outcome="failed"}'
    log_files = [tmp_path / "events.db", tmp_path / "events.db-wal"]
    async with served(tmp_path, reconcile_interval=0.05, reconcile_grace=0) as (
        service,
        _,
        admin,
    ):
        assert service.emulator is not None
        async with httpx.AsyncClient(base_url=service.emulator.base_url) as emulator:
            await emulator.put("/emulator/webhooks", json={"enabled": False})  # sweeps alone
            with immutable(log_files):
                spec = {"provider": "hibob", "origin_owner_id": "t", "origin_owner_name": "T"}
                account_id = (await emulator.post("/emulator/accounts", json=spec)).json()["id"]

                async def failed_twice() -> bool:
                    return await metric(admin, failed) >= 2

                await eventually(failed_twice, timeout=10)

            async def recorded() -> bool:
                known = await service.event_log.known_accounts()
                return account_id in known

            await eventually(recorded, timeout=10)


@pytest.mark.needs_root
async def test_the_verifier_survives_a_storage_failure(tmp_path: Path) -> None:
    """A webhook in the inbox whose event cannot be written is retried, counted, and
    recorded once the storage recovers."""
    failures = 'stackone_connect_background_failures_total{task="verifier"}'
    log_files = [tmp_path / "events.db", tmp_path / "events.db-wal"]
    body = webhook("account.updated")  # waits for the 2 s quiet period in the inbox
    async with (
        served(tmp_path, reconcile_interval=0, verify_quiet=2.0) as (service, _, admin),
        httpx.AsyncClient(base_url=service.gateway.base_url) as gateway,
    ):
        assert (await deliver(gateway, body)).status_code == 200
        with immutable(log_files):

            async def failed() -> bool:
                return await metric(admin, failures) >= 1

            await eventually(failed, timeout=10)
        await eventually(lambda: inbox_is_empty(service.event_log), timeout=10)
        assert await service.event_log.known_accounts()
