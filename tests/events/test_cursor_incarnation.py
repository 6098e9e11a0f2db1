"""Cursors name the log incarnation they came from: a log put back from a backup (by
`backup` or by hand), a new log at the same place or a recreated JetStream stream numbers
its events again, and a cursor of the replaced log gets OUT_OF_RANGE instead of silently
resuming past events it never saw. Real `serve` processes, SQLite and JetStream."""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import httpx
import nats
import orjson
import pytest

from service.events import cursors
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.nats import NatsServer
from tests.harness.processes import ServeProcess, run_to_end, serve_env, serve_process
from tests.harness.streams import attached, next_event, subscribed
from tests.harness.support import WEBHOOK_SECRET, LogBackend, deliver, webhook

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]
RESYNC = "resync from a snapshot"


async def record(service: ServeProcess, count: int) -> list[str]:
    """Records `count` webhooks through the gateway; the cursors their events got."""
    async with (
        subscribed(service.grpc_target) as stream,
        httpx.AsyncClient(base_url=service.gateway_url) as http,
    ):
        for _ in range(count):
            assert (await deliver(http, webhook())).status_code == 200
        return [(await next_event(stream)).cursor for _ in range(count)]


async def resume_after(service: ServeProcess, cursor: str) -> grpc.aio.AioRpcError | str:
    """Resumes a stream after `cursor`: the refusal, or the cursor of the first event
    recorded once the stream is attached."""
    async with grpc.aio.insecure_channel(service.grpc_target) as channel:
        stub = pb_grpc.ConnectServiceStub(channel)
        stream = stub.StreamAccountEvents(pb.StreamAccountEventsRequest(after_cursor=cursor))
        try:
            await attached(stream)
        except grpc.aio.AioRpcError as error:
            return error
        try:
            await record(service, 1)  # something for the resumed stream to deliver
            return (await next_event(stream)).cursor
        finally:
            stream.cancel()


def refused(answer: grpc.aio.AioRpcError | str) -> str:
    """The message of an OUT_OF_RANGE refusal (failing the test on anything else)."""
    assert isinstance(answer, grpc.aio.AioRpcError), f"resumed, delivering {answer}"
    assert answer.code() == grpc.StatusCode.OUT_OF_RANGE, answer.details()
    return answer.details() or ""


def delivered(answer: grpc.aio.AioRpcError | str) -> str:
    """The cursor a resumed stream delivered (failing the test on a refusal)."""
    assert isinstance(answer, str), f"refused: {answer.details()}"
    return answer


def database_files(directory: Path) -> list[Path]:
    """The SQLite files of the log in `directory` (its -wal too), not the service's marks."""
    return [
        path
        for path in directory.glob("events.db*")
        if not path.name.endswith((".incarnation", ".lock"))
    ]


def remove_database(directory: Path) -> None:
    """Deletes the SQLite files of the log in `directory`."""
    for path in database_files(directory):
        path.unlink()


def tag(cursor: str) -> int:
    """The incarnation a public cursor names (its upper bits: no decimal prefix)."""
    parsed = cursors.parse(cursor)
    assert parsed is not None
    return parsed.tag


def sequence(cursor: str) -> int:
    """The position a public cursor names within its incarnation."""
    parsed = cursors.parse(cursor)
    assert parsed is not None
    return parsed.sequence


@asynccontextmanager
async def serving(env: dict[str, str]) -> AsyncIterator[ServeProcess]:
    """A `serve` process, stopped gracefully at the end."""
    async with serve_process(env) as service:
        yield service


async def test_a_restored_backup_refuses_cursors_past_it_and_resumes_those_it_holds(
    tmp_path: Path,
) -> None:
    """Backed up at cursor 5, 6-8 recorded, the backup restored: cursor 7 (and the bare 7
    of the previous release) get OUT_OF_RANGE saying to resync; cursor 5 and the restored
    log's own cursors resume."""
    env = serve_env(tmp_path, WEBHOOK_SECRET)
    db = tmp_path / "events.db"
    async with serving(env) as live:
        first = await record(live, 5)
        code, out, err = await run_to_end(
            [sys.executable, "-m", "service.cli", "backup", "--json", str(tmp_path / "copy.db")],
            timeout=30,
            env=env,
        )
        assert code == 0, err
        assert orjson.loads(out)["latest_cursor"] == first[-1]
        later = await record(live, 3)
    assert [sequence(c) for c in first + later] == list(range(1, 9))
    remove_database(tmp_path)  # its -wal too, which SQLite would replay onto the copy
    shutil.copy(tmp_path / "copy.db", db)
    async with serving(env) as restored:
        assert RESYNC in refused(await resume_after(restored, later[1]))
        assert RESYNC in refused(await resume_after(restored, str(sequence(later[1]))))
        resumed = delivered(await resume_after(restored, first[-1]))
        assert sequence(resumed) == 6, "cursor 5 resumes"
        assert resumed not in later, "the restored log's cursor 6 is not the replaced log's"
        again = await resume_after(restored, resumed)
        assert sequence(delivered(again)) == 7


async def test_a_copy_put_back_by_hand_is_a_new_incarnation(tmp_path: Path) -> None:
    """The database copied with `cp` at cursor 5 and copied back after 6-8 were handed
    out: the high-water mark beside it shows the copy, so cursor 7 gets OUT_OF_RANGE and
    cursor 5 resumes."""
    env = serve_env(tmp_path, WEBHOOK_SECRET)
    async with serving(env) as live:
        first = await record(live, 5)
    (tmp_path / "by-hand").mkdir()
    for path in database_files(tmp_path):
        shutil.copy(path, tmp_path / "by-hand")
    async with serving(env) as live:
        later = await record(live, 3)
    remove_database(tmp_path)
    for path in database_files(tmp_path / "by-hand"):
        shutil.copy(path, tmp_path)
    async with serving(env) as restored:
        assert RESYNC in refused(await resume_after(restored, later[1]))
        resumed = await resume_after(restored, first[-1])
        assert sequence(delivered(resumed)) == 6


async def test_a_new_log_at_the_same_path_refuses_the_old_logs_cursors(tmp_path: Path) -> None:
    """The database deleted and created anew: the old log's cursors, tagged or bare, get
    OUT_OF_RANGE, though the new log has events at their sequence numbers."""
    env = serve_env(tmp_path, WEBHOOK_SECRET)
    async with serving(env) as live:
        old = await record(live, 3)
    remove_database(tmp_path)
    async with serving(env) as fresh:
        await record(fresh, 3)
        assert RESYNC in refused(await resume_after(fresh, old[0]))
        assert RESYNC in refused(await resume_after(fresh, str(sequence(old[0]))))


async def test_an_unchanged_logs_cursors_resume_tagged_and_bare(tmp_path: Path) -> None:
    """A restart changes nothing: a cursor of before it resumes, and so does the bare form
    of the previous release (the log was never replaced), each at the next event."""
    env = serve_env(tmp_path, WEBHOOK_SECRET)
    async with serving(env) as live:
        before = await record(live, 3)
    async with serving(env) as again:
        resumed = delivered(await resume_after(again, before[-1]))
        assert sequence(resumed) == 4
        assert tag(resumed) == tag(before[-1]), "the same incarnation's tag"
        bare = await resume_after(again, str(sequence(before[-1])))
        assert sequence(delivered(bare)) == 4, "the bare cursor 3 resumes"


async def test_a_recreated_jetstream_stream_refuses_the_old_streams_cursors(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """The stream deleted while no replica runs and created again by the next: the old
    stream's cursors, tagged or bare, get OUT_OF_RANGE; a restart alone keeps them."""
    stream = f"C{uuid.uuid4().hex}"
    env = serve_env(tmp_path, WEBHOOK_SECRET, **LogBackend(nats_server.url, stream=stream).env())
    async with serving(env) as live:
        old = await record(live, 3)
    async with serving(env) as restarted:
        resumed = await resume_after(restarted, old[1])
        assert sequence(delivered(resumed)) == 3, "unchanged: resumes"
        bare = await resume_after(restarted, str(sequence(old[1])))
        assert sequence(delivered(bare)) == 3, "unchanged: the bare form too"
    connection = await nats.connect(nats_server.url)
    try:
        await connection.jetstream().delete_stream(stream)
    finally:
        await connection.close()
    async with serving(env) as recreated:
        new = await record(recreated, 3)
        assert [sequence(c) for c in new] == [1, 2, 3], "the stream numbers its events again"
        assert RESYNC in refused(await resume_after(recreated, old[1]))
        assert RESYNC in refused(await resume_after(recreated, str(sequence(old[1]))))
        resumed = await resume_after(recreated, new[-1])
        assert sequence(delivered(resumed)) == 4
