"""The durable limit of webhook ingest: bare aiohttp handlers that do only what an
acknowledged webhook must cost, the baselines of the `durable_ingest` scenario.

Each checks StackOne's signature (`gateway.signature`: HMAC-SHA256, base64url, constant
time), parses the JSON and makes the raw body durable before answering 200:
`durable_sqlite` appends it to a SQLite log (WAL, synchronous=FULL) through a writer
thread that commits, in one transaction, whatever arrived while its previous commit ran;
`durable_jetstream` publishes it to a JetStream stream and answers on its PubAck, as the
service's JetStream inbox does. Both print `READY <port>` as the other server roles do.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from pathlib import Path
from typing import Any

import nats
import orjson
from aiohttp import web
from nats.js.api import StorageType, StreamConfig

from gateway.signature import SIGNATURE_HEADER, is_valid_signature

WEBHOOK_PATH = "/webhooks/stackone"
ACCEPTED = b'{"result":"accepted"}'


def _refusal(request: web.Request, secret: str, body: bytes) -> web.Response | None:
    """What the service refuses too, as cheaply: an unsigned or unparsable body."""
    if not is_valid_signature((secret,), body, request.headers.get(SIGNATURE_HEADER)):
        return web.Response(status=401)
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return web.Response(status=400)
    return None


class GroupCommitLog:
    """An append-only SQLite log whose one writer thread commits, in one fsync'd
    transaction, every body that arrived while its previous commit ran."""

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: queue.SimpleQueue[tuple[bytes, asyncio.Future[None]]] = queue.SimpleQueue()
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("CREATE TABLE IF NOT EXISTS log (seq INTEGER PRIMARY KEY, body BLOB)")
        self.commits = 0
        threading.Thread(target=self._write_loop, daemon=True).start()

    def append(self, body: bytes) -> asyncio.Future[None]:
        """A future set once `body` is committed."""
        done = self._loop.create_future()
        self._queue.put((body, done))
        return done

    def _write_loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany("INSERT INTO log (body) VALUES (?)", [(b,) for b, _ in batch])
            self._conn.execute("COMMIT")
            self.commits += 1
            self._loop.call_soon_threadsafe(_settle, [done for _, done in batch])


def _settle(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


async def durable_sqlite(args: dict[str, Any]) -> None:
    """Baseline: signature, parse, group-committed fsync'd append to SQLite, then 200."""
    secret = args["secret"]
    log = GroupCommitLog(Path(args["db"]), asyncio.get_running_loop())

    async def webhook(request: web.Request) -> web.Response:
        body = await request.read()
        if refused := _refusal(request, secret, body):
            return refused
        await log.append(body)
        return web.Response(body=ACCEPTED, content_type="application/json")

    await _serve(webhook)


async def durable_jetstream(args: dict[str, Any]) -> None:
    """Baseline: signature, parse, publish to a file-stored JetStream stream with the
    webhook's digest as its Nats-Msg-Id, then 200 once JetStream acknowledged it."""
    secret = args["secret"]
    connection = await nats.connect(args["nats"])
    js = connection.jetstream()
    stream = args["stream"]
    await js.add_stream(
        StreamConfig(name=stream, subjects=[f"{stream}.>"], storage=StorageType.FILE)
    )

    async def webhook(request: web.Request) -> web.Response:
        body = await request.read()
        if refused := _refusal(request, secret, body):
            return refused
        signature = request.headers[SIGNATURE_HEADER]
        await js.publish(f"{stream}.in", body, headers={"Nats-Msg-Id": signature})
        return web.Response(body=ACCEPTED, content_type="application/json")

    await _serve(webhook)


async def _serve(webhook: Any) -> None:
    app = web.Application()
    app.router.add_post(WEBHOOK_PATH, webhook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(f"READY {runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


ROLES = {"durable_sqlite": durable_sqlite, "durable_jetstream": durable_jetstream}
