"""`stackone-connect backup` under webhook load: the copy restores to a log that replays
every webhook acknowledged before the backup began, each event at its original position."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import sys
from pathlib import Path

import grpc
import httpx
import orjson
import pytest

from service.events import cursors
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.processes import serve_env, serve_process
from tests.harness.streams import replay_all
from tests.harness.support import WEBHOOK_SECRET, deliver, eventually, webhook

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]
BACKUP = [sys.executable, "-m", "service.cli", "backup", "--json"]


async def events_of(grpc_target: str) -> list[pb.AccountEvent]:
    """Every event the service at `grpc_target` has recorded, oldest first."""
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        return await replay_all(pb_grpc.ConnectServiceStub(channel))


def sequence(cursor: str) -> int:
    """The position a cursor names in its log incarnation."""
    parsed = cursors.parse(cursor)
    assert parsed is not None, cursor
    return parsed.sequence


def covered(events: list[pb.AccountEvent]) -> set[str]:
    """The webhook ids the events record."""
    return {event.event_id for event in events} | {
        webhook_id for event in events for webhook_id in event.covered_event_ids
    }


async def test_a_backup_under_load_restores_every_acknowledged_webhook_at_its_cursor(
    tmp_path: Path,
) -> None:
    """Webhooks flow before, during and after the backup; the copy, started as a new
    service, replays each webhook acknowledged before the backup began (recorded then, or
    waiting in the copied inbox and recorded after the restore), at unchanged positions."""
    (tmp_path / "live").mkdir()
    env = serve_env(tmp_path / "live", WEBHOOK_SECRET)
    acknowledged: list[str] = []
    sending = asyncio.Event()
    sending.set()
    async with serve_process(env) as live, httpx.AsyncClient(base_url=live.gateway_url) as http:

        async def sender() -> None:
            while sending.is_set():
                answer = await deliver(http, webhook())
                assert answer.status_code == 200, answer.text
                acknowledged.append(answer.json()["event_id"])

        # A reader holding its snapshot, as a long replay does, keeps every later commit
        # in the WAL (no checkpoint moves it into the file): a copy of the file misses them.
        pinned = sqlite3.connect(tmp_path / "live" / "events.db")
        pinned.execute("BEGIN")
        pinned.execute("SELECT count(*) FROM events").fetchone()
        senders = [asyncio.create_task(sender()) for _ in range(4)]
        await eventually(lambda: len(acknowledged) >= 300, timeout=30)
        before_backup = list(acknowledged)
        backup = await asyncio.create_subprocess_exec(
            *BACKUP, str(tmp_path / "copy.db"), env={**os.environ, **env},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await backup.communicate()
        assert backup.returncode == 0, err.decode()
        pinned.close()
        await eventually(lambda: len(acknowledged) >= len(before_backup) + 100, timeout=30)
        sending.clear()
        await asyncio.gather(*senders)
        original = await events_of(live.grpc_target)
    summary = orjson.loads(out)
    through = sequence(summary["latest_cursor"])
    assert through > 0, "events were recorded before the backup"

    (tmp_path / "restored").mkdir()
    shutil.copy(tmp_path / "copy.db", tmp_path / "restored" / "events.db")
    async with serve_process(serve_env(tmp_path / "restored", WEBHOOK_SECRET)) as restored:

        async def all_recorded() -> bool:
            return set(before_backup) <= covered(await events_of(restored.grpc_target))

        await eventually(all_recorded, timeout=30)
        replayed = await events_of(restored.grpc_target)
    # The copy is an incarnation of its own: its cursors carry another tag, and name
    # the same positions (the live log's cursors up to the backup resume in it).
    at_position = {sequence(event.cursor): event.event_id for event in original}
    copied = [event for event in replayed if sequence(event.cursor) <= through]
    assert len(copied) == through - (sequence(replayed[0].cursor) - 1)
    assert all(at_position[sequence(event.cursor)] == event.event_id for event in copied)
    assert len(acknowledged) > len(before_backup), "webhooks kept flowing past the backup"
