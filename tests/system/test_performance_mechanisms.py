"""The mechanisms kept for a benchmark figure, each guarded by what it saves (a count of
timers, encodes, wraps, SQLite statements and the threads running them, lines of Python
run, imports, look-ups in flight), never by timing it, so that simplifying one away fails
here, not only in `make bench`. The figures a ratio holds are in tests/system/test_ratios.py."""

from __future__ import annotations

import asyncio
import importlib.abc
import importlib.machinery
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, closing, contextmanager
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

import grpc
import httpx
import pytest
import stamina
from aiohttp import web

from service.events import verify
from service.events.cursors import UNTAGGED, Incarnation
from service.events.feed import Feed
from service.events.model import Accepted, EventRecord, StoredEvent
from service.events.records import event_record
from service.events.registry import RegistryQuery
from service.events.sqlite import SqliteEventLog
from service.events.tail import Watermark
from service.events.verify import Verifier
from service.metrics import Metrics
from service.rpc import wire
from service.rpc.interceptor import CallInterceptor
from service.runtime import Runtime
from service.stackone.client import StackOneClient
from service.stackone.models import ConnectSessionCreate
from service.web import listening
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.processes import serve_env, serve_process
from tests.harness.records import record, webhook_entry
from tests.harness.stackone_answers import SESSION
from tests.harness.streams import events_covering, subscribed
from tests.harness.support import WEBHOOK_SECRET, LogBackend, deliver, eventually
from tests.harness.verification import LOOK_UP, running_harness, webhook

pytestmark = pytest.mark.asyncio
SERVICE = "bench.Echo"


def _counting_timers(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the loop timers set from here (`call_later` sets them through `call_at`)."""
    loop = asyncio.get_running_loop()
    timers = [0]
    call_at = loop.call_at

    def counting_call_at(
        when: float, callback: Callable[..., Any], *args: Any, **context: Any
    ) -> Any:
        timers[0] += 1
        return call_at(when, callback, *args, **context)

    monkeypatch.setattr(loop, "call_at", counting_call_at)
    return timers


async def test_a_thousand_waits_share_one_loop_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Idle streams wait on the log's watermark with a timeout each: 1,000 waits with the
    same timeout set one loop timer (a timer each is a libuv handle per stream), and all
    still end when the mark passes."""
    timers = _counting_timers(monkeypatch)
    mark = Watermark()
    waits = [mark.wait_past(0, timeout=60) for _ in range(1000)]
    assert timers == [1]
    mark.advance(1)
    await asyncio.gather(*waits)


async def test_a_thousand_streams_waiting_on_the_log_set_one_loop_timer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same through the SQLite log's `wait_for_append`, where idle streams wait: one
    timer, a bare future each, all done once an event is recorded."""
    async with sqlite_log(tmp_path) as log:
        timers = _counting_timers(monkeypatch)
        waits = [log.wait_for_append(0, timeout=60) for _ in range(1000)]
        assert timers == [1]
        assert all(isinstance(wait, asyncio.Future) for wait in waits)
        await log.append([record(1)])
        await asyncio.gather(*waits)


def _events(cursors: range) -> list[StoredEvent]:
    return [
        StoredEvent(cursor, f"evt-{cursor}", "account.updated", "a", "hibob", "o", 0.0, b"")
        for cursor in cursors
    ]


async def test_streams_sending_the_same_events_encode_each_once() -> None:
    """Every stream following the head sends the events just recorded: 1,000 streams'
    frames of the same 50 events encode each event once, in any batching."""
    cache = wire.FrameCache()
    events = _events(range(1, 51))
    for _ in range(1000):
        cache.frames(list(events), 100, None)
    cache.frames(events, 1, None)  # one a message: the same encoded events
    cache.frames(events[:10], 100, "hibob only")
    assert cache.encodes == 50


async def test_live_streams_of_a_running_service_encode_each_recorded_event_once(
    service: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service's streams send the stored bytes through one frame cache: 20 streams
    following the head while 10 webhooks are recorded encode each event once (200 if each
    stream encoded its own)."""
    encodes = 0
    event_payload = wire.event_payload

    def counting_event_payload(event: StoredEvent, incarnation: Incarnation = UNTAGGED) -> bytes:
        nonlocal encodes
        encodes += 1
        return event_payload(event, incarnation)

    monkeypatch.setattr(wire, "event_payload", counting_event_payload)
    async with AsyncExitStack() as stack:
        streams = [
            await stack.enter_async_context(subscribed(service.grpc_target)) for _ in range(20)
        ]
        async with httpx.AsyncClient(base_url=service.gateway.base_url) as gateway:
            answers = [
                await deliver(gateway, webhook("account.deleted", f"gone-{n}")) for n in range(10)
            ]
        recorded = {answer.json()["event_id"] for answer in answers}
        await asyncio.gather(*(events_covering(stream, recorded) for stream in streams))
    assert encodes == 10


async def _fifty_calls_of_two_methods(interceptor: CallInterceptor) -> None:
    """50 calls of each of two echo methods on a grpc.aio server with `interceptor`."""

    async def echo(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return request

    server = grpc.aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "One": grpc.unary_unary_rpc_method_handler(echo),
                    "Two": grpc.unary_unary_rpc_method_handler(echo),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for method in ("One", "Two"):
                call = channel.unary_unary(f"/{SERVICE}/{method}", None, None)
                for _ in range(50):
                    assert await call(b"x") == b"x"
    finally:
        await server.stop(None)


async def test_each_method_is_wrapped_once_whatever_the_calls() -> None:
    """The interceptor wraps a method's handler once, not per call (a closure and a
    handler per open stream would cost ~0.5 KiB each)."""
    interceptor = CallInterceptor(Metrics(), SERVICE)
    await _fifty_calls_of_two_methods(interceptor)
    assert interceptor.wraps == 2


async def test_each_method_looks_its_metrics_up_once_whatever_the_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The interceptor looks a method's labelled metrics up once per method and outcome,
    not on every call (`labels()` takes a lock and builds a key: part of the ~105 µs a
    registry GetAccount costs over the bare method)."""
    metrics = Metrics()
    lookups: list[tuple[str, ...]] = []
    for metric in (metrics.rpcs, metrics.rpc_seconds):
        labels = metric.labels

        def counting_labels(*values: str, labels: Callable[..., Any] = labels) -> Any:
            lookups.append(values)
            return labels(*values)

        monkeypatch.setattr(metric, "labels", counting_labels)
    await _fifty_calls_of_two_methods(CallInterceptor(metrics, SERVICE))
    assert len(lookups) == 4, lookups  # each method: its latency, its OK count


async def test_a_feed_keeps_no_instance_dict() -> None:
    """An open stream holds a Feed for its whole life: slots, not a dict per instance."""
    assert "__slots__" in Feed.__dict__
    assert all("__dict__" not in vars(cls) for cls in Feed.__mro__ if cls is not object)


@pytest.mark.slow
async def test_serve_runs_on_uvloop_frozen_and_without_a_log_line_per_stackone_request(
    tmp_path: Path,
) -> None:
    """`serve` runs its loop on uvloop (cheaper sockets and callbacks), freezes what
    start-up built (gc.freeze: a full collection no longer walks it; it took ~45 ms, the p99
    of sending one event to 1,000 streams), and even at DEBUG writes no httpx or httpcore
    line per StackOne request (a formatted JSON line per call)."""
    env = serve_env(tmp_path, WEBHOOK_SECRET, STACKONE_CONNECT_LOG_LEVEL="DEBUG")

    def freeze_lines() -> list[dict[str, object]]:
        return [x for x in serve.log_lines if str(x.get("message", "")).startswith("gc.freeze: ")]

    async with serve_process(env) as serve:
        await eventually(lambda: bool(freeze_lines()), timeout=10)
        async with grpc.aio.insecure_channel(serve.grpc_target) as channel:
            stub = pb_grpc.ConnectServiceStub(channel)
            for _ in range(3):
                request = pb.CreateSessionRequest(origin_owner_id="o", origin_owner_name="O")
                assert (await stub.CreateSession(request)).token
    (line,) = freeze_lines()
    frozen = int(str(line["message"]).split()[1])
    assert frozen > 10_000, line
    assert line["event_loop"] == "uvloop.Loop", line
    loggers = {str(x.get("logger", "")) for x in serve.log_lines}
    assert not {name for name in loggers if name.split(".")[0] in ("httpx", "httpcore")}


@asynccontextmanager
async def sqlite_log(tmp_path: Path) -> AsyncIterator[SqliteEventLog]:
    """A SQLite log opened as `serve` opens it."""
    log = await LogBackend(f"sqlite:///{tmp_path / 'events.db'}").open()
    assert isinstance(log, SqliteEventLog)
    try:
        yield log
    finally:
        await log.close()


_TRANSACTION = ("BEGIN IMMEDIATE", "COMMIT")


async def test_sqlite_stages_writes_on_the_loop_and_only_commits_on_the_writer_thread(
    tmp_path: Path,
) -> None:
    """Appends and webhooks arriving together run their statements on the event loop's
    thread (in-memory B-tree work, cheaper than a hop to another thread and back each);
    only the COMMIT, which waits for the fsync, runs on the writer thread."""
    async with sqlite_log(tmp_path) as log:
        before = log.commits
        entries = [webhook_entry(f"w-{n}", "account.updated", f"a-{n}") for n in range(50)]
        with log.statements() as statements:
            appends = [log.append([record(n)]) for n in range(50)]
            await asyncio.gather(*appends, *(log.accept(entry) for entry in entries))
        commits = log.commits - before
    loop_thread = threading.get_ident()
    assert {s.connection for s in statements} == {"writer"}
    on_loop = [s.sql for s in statements if s.thread == loop_thread]
    assert [s.sql for s in statements if s.thread != loop_thread] == ["COMMIT"] * commits
    assert sum(sql.startswith("INSERT INTO events") for sql in on_loop) == 50
    assert sum(sql.startswith("INSERT INTO inbox") for sql in on_loop) == 50
    assert 1 <= commits <= 10  # group-committed


async def test_the_door_writes_one_inbox_row_per_webhook_and_reads_the_inbox_never(
    tmp_path: Path,
) -> None:
    """A webhook taken into the inbox costs one INSERT there (its pending id is kept in
    memory, not looked up, and no index on random ids dirties a page per webhook); a
    redelivery of one still waiting is answered from memory: no statement of its own."""
    entries = [webhook_entry(f"w-{n}", "account.updated", f"a-{n}") for n in range(20)]
    async with sqlite_log(tmp_path) as log:
        with log.statements() as statements:
            taken = await asyncio.gather(*(log.accept(entry) for entry in entries))
            redelivered = await asyncio.gather(*(log.accept(entry) for entry in entries))
        with closing(sqlite3.connect(log.path)) as schema:
            indexes = schema.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'inbox'"
            ).fetchall()
    assert indexes == []
    assert taken == [Accepted.QUEUED] * 20
    assert redelivered == [Accepted.DUPLICATE] * 20
    assert {s.connection for s in statements} == {"writer"}
    work = [s.sql for s in statements if s.sql not in _TRANSACTION]
    assert [sql for sql in work if "inbox" in sql] == [
        sql for sql in work if sql.startswith("INSERT INTO inbox")
    ]
    # Per webhook taken: its id checked against those recorded (dedup), its inbox row.
    assert len(work) == 2 * 20, work


async def test_streams_following_the_head_read_it_from_memory(tmp_path: Path) -> None:
    """The newest events are kept in memory (the tail): reading what was just recorded,
    as every stream following the head does after each commit, runs no SQLite query."""
    async with sqlite_log(tmp_path) as log:
        await log.append([record(n) for n in range(100)])
        with log.statements() as statements:
            for after in range(100):
                assert [event.cursor for event in await log.read(after, 1)] == [after + 1]
    assert statements == []


def _created(account_id: str, owner: str) -> EventRecord:
    """An account.created of `account_id` for customer `owner`, as the verifier records it."""
    account = pb.Account(id=account_id, provider="hibob", origin_owner_id=owner)
    event = pb.AccountEvent(event_id=f"evt-{account_id}", type="account.created", account=account)
    return event_record(event)


async def test_registry_reads_of_one_account_or_customer_stay_on_the_loop_thread(
    tmp_path: Path,
) -> None:
    """A GetAccount, or a ListAccounts of one customer, from the registry is one index
    read on the event loop's own connection (a hop to the reader thread cost ~35 µs of a
    ~345 µs call): nothing runs on another thread."""
    async with sqlite_log(tmp_path) as log:
        await log.append([_created(f"acct-{n}", f"owner-{n % 2}") for n in range(4)])
        with log.statements() as statements:
            one = await log.registry(RegistryQuery(account_ids=frozenset({"acct-1"}), limit=1))
            owners = await log.registry(RegistryQuery(origin_owner_ids=frozenset({"owner-0"})))
    assert [entry.account_id for entry in one.accounts] == ["acct-1"]
    assert [entry.account_id for entry in owners.accounts] == ["acct-0", "acct-2"]
    assert [s.connection for s in statements] == ["lookup", "lookup"]
    assert {s.thread for s in statements} == {threading.get_ident()}


@contextmanager
def lines_run_in(module: ModuleType) -> Iterator[list[int]]:
    """Counts the lines of `module` that run on this thread from here (Python's own trace
    hook: a count of work done, whatever the machine's speed)."""
    filename = module.__file__
    count = [0]

    def in_frame(frame: FrameType, event: str, arg: object) -> Any:
        if event == "line":
            count[0] += 1
        return in_frame

    def on_call(frame: FrameType, event: str, arg: object) -> Any:
        return in_frame if frame.f_code.co_filename == filename else None

    previous = sys.gettrace()  # a debugger's or coverage's, put back after
    sys.settrace(on_call)
    try:
        yield count
    finally:
        sys.settrace(previous)


async def _verified_deletions(
    log: SqliteEventLog, waiting: int, deletions: int, module: ModuleType = verify
) -> int:
    """Lines of `module` run while the verifier records `deletions` webhooks that need no
    look-up, with `waiting` other accounts waiting out a long quiet period meanwhile."""
    entries = [webhook_entry(f"u-{n}", "account.updated", f"w-{n}") for n in range(waiting)]
    entries += [webhook_entry(f"d-{n}", "account.deleted", f"d-{n}") for n in range(deletions)]
    await asyncio.gather(*(log.accept(entry) for entry in entries))
    verifier = Verifier(log, None, metrics=Metrics(), quiet=600, deadline=3600, concurrency=1)
    with lines_run_in(module) as lines:
        running = asyncio.create_task(verifier.run())
        try:
            async with asyncio.timeout(30):
                while log.latest_cursor < deletions:
                    await log.wait_for_append(log.latest_cursor, 1)
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
    return lines[0]


async def test_the_verifier_starts_ready_accounts_without_walking_the_waiting_ones(
    tmp_path: Path,
) -> None:
    """The verifier keeps accounts in a heap by when they are ready: recording 30
    deletions, one at a time, beside 1,000 accounts still waiting costs about what reading
    those 1,000 costs (~26,000 lines of verify.py in all), not a walk over all of them at
    each of its 30 wake-ups (~176,000; the walk was a third of the loop under load)."""
    async with sqlite_log(tmp_path) as log:
        lines = await _verified_deletions(log, 1000, 30)
    assert lines < 60_000, f"{lines} lines of verify.py run"


async def test_a_verifier_that_never_fails_never_enters_the_retry_loop(tmp_path: Path) -> None:
    """The verifier's step runs at every wake-up and seldom fails, so it is tried outside
    stamina's retry loop (`RetryPolicy.call`): entered at each step, that loop took a
    quarter of the event loop under `account.updated` ingest (door 0.25x of the bare
    handler, against 0.35-0.39x). Recording 30 deletions runs no line of stamina."""
    async with sqlite_log(tmp_path) as log:
        lines = await _verified_deletions(log, 0, 30, module=stamina._core)
    assert lines == 0, f"{lines} lines of stamina run"


async def test_look_ups_go_16_at_a_time_through_a_pool_callers_never_wait_for(
    tmp_path: Path,
) -> None:
    """The verifier's look-ups go 16 at a time through a connection pool of their own
    (in one pool with the callers', httpcore rescanned every waiting request on each
    change: two thirds of the loop with 256, and callers queued behind them): with 40
    accounts to look up and StackOne taking 3 s, 16 are in flight, never more, and a
    caller's CreateSession is answered while all 16 are still out."""
    backend = LogBackend(f"sqlite:///{tmp_path / 'events.db'}")
    async with running_harness(tmp_path, backend, rate_limit=100_000) as harness:
        accounts = [await harness.account() for _ in range(40)]
        await harness.slow_look_ups(3.0)
        for account_id in accounts:
            assert (await harness.deliver(webhook("account.updated", account_id))).is_success
        await eventually(lambda: harness.state.in_flight[LOOK_UP] == 16)
        async with grpc.aio.insecure_channel(harness.service.grpc_target) as channel:
            request = pb.CreateSessionRequest(origin_owner_id="o", origin_owner_name="O")
            assert (await pb_grpc.ConnectServiceStub(channel).CreateSession(request)).token
        assert harness.state.in_flight[LOOK_UP] == 16
        assert harness.state.most_in_flight[LOOK_UP] == 16


class _ImportsSeen(importlib.abc.MetaPathFinder):
    """A finder first in line that finds nothing: it sees each import that searches."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        """Notes the name; leaves finding it to the others."""
        self.names.append(fullname)
        return None


async def test_a_stackone_request_imports_nothing() -> None:
    """httpcore imports sniffio on every request and falls back when it is missing; a
    failed import searches sys.path each time (7 % of a CreateSession): the pinned sniffio
    makes 20 requests on a real connection pool search for no module at all."""

    async def session(request: web.Request) -> web.Response:
        return web.Response(status=201, body=SESSION, content_type="application/json")

    app = web.Application()
    app.router.add_post("/connect_sessions", session)
    body = ConnectSessionCreate(origin_owner_id="t", origin_owner_name="T")
    seen = _ImportsSeen()
    async with listening(app, "127.0.0.1", 0) as upstream:
        client = StackOneClient(f"http://127.0.0.1:{upstream.port}", "key")
        try:
            await client.create_connect_session(body)  # first-use imports are fine
            sys.meta_path.insert(0, seen)
            for _ in range(20):
                await client.create_connect_session(body)
        finally:
            if seen in sys.meta_path:
                sys.meta_path.remove(seen)
            await client.aclose()
    assert seen.names == []
