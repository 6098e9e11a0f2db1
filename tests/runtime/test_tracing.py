"""OpenTelemetry traces on the real servers, collected by the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, closing
from pathlib import Path

import grpc
import httpx
import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from google.protobuf.empty_pb2 import Empty
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from examples.web.app import Config, build_app
from service.emulator import EMULATOR_STATE
from service.emulator.accounts import new_account
from service.emulator.bodies import AccountSpec
from service.events.model import InboxEntry, Webhook
from service.events.sqlite import SqliteEventLog, SqliteOptions
from service.logs import JsonFormatter
from service.runtime import Runtime, running
from service.tracing import TracingConfigError, from_environment, span_context_of, with_processors
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.otlp import (
    CLIENT,
    SERVER,
    OtlpReceiver,
    ReceivedSpan,
    otlp_grpc_receiver,
    otlp_http_receiver,
)
from tests.harness.processes import SERVE, serve_env, serve_process
from tests.harness.streams import attached, next_event
from tests.harness.support import (
    WEBHOOK_SECRET,
    LogBackend,
    deliver,
    eventually,
    make_settings,
    webhook,
)

pytestmark = pytest.mark.asyncio
BACKENDS = ["sqlite", "jetstream"]  # the inbox keeps a webhook's context on each
CALLER_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CALLER_SPAN = 0x00F067AA0BA902B7
CALLER_TRACEPARENT = f"00-{CALLER_TRACE:032x}-{CALLER_SPAN:016x}-01"


@pytest.fixture
def exported() -> InMemorySpanExporter:
    """Every span the service ends, as the SDK hands it to an exporter."""
    return InMemorySpanExporter()


@pytest_asyncio.fixture
async def service(
    tmp_path: Path, backend: LogBackend, exported: InMemorySpanExporter
) -> AsyncIterator[Runtime]:
    """The whole service with tracing on, every trace sampled, into `exported` (in this
    module, conftest's `stub` and the fixtures below are clients of it)."""
    tracing = with_processors([SimpleSpanProcessor(exported)])
    # A longer quiet period: a burst's webhooks share one look-up and one event.
    settings = make_settings(tmp_path, verify_quiet=0.5, **backend.settings())
    async with running(settings, tracing) as runtime:
        yield runtime
    tracing.shutdown()


@pytest_asyncio.fixture
async def gateway_http(service: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the traced service's webhook gateway."""
    async with httpx.AsyncClient(base_url=service.gateway.base_url, timeout=5) as client:
        yield client


def _one(spans: Sequence[ReadableSpan], what: str) -> ReadableSpan:
    assert len(spans) == 1, f"{what}: {[span.name for span in spans]}"
    return spans[0]


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def _trace(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_id)


async def test_a_callers_trace_holds_the_rpc_the_budget_wait_and_the_stackone_call(
    stub: pb_grpc.ConnectServiceAsyncStub, exported: InMemorySpanExporter
) -> None:
    """CreateSession with a caller's traceparent: its RPC span is the caller's child and
    holds the budget wait (class, seconds) and the StackOne call, whose context reaches
    StackOne (the emulator's span is that call's child)."""
    request = pb.CreateSessionRequest(origin_owner_id="tenant-1", origin_owner_name="Tenant One")
    await stub.CreateSession(request, metadata=(("traceparent", CALLER_TRACEPARENT),))

    def of_trace() -> list[ReadableSpan]:
        return [span for span in exported.get_finished_spans() if _trace(span) == CALLER_TRACE]

    await eventually(
        lambda: any(
            span.kind == SpanKind.SERVER
            for span in of_trace()
            if span.attributes and span.attributes.get("rpc.method") == "CreateSession"
        )
    )
    spans = of_trace()
    rpc = _one(
        [s for s in spans if s.attributes and s.attributes.get("rpc.method") == "CreateSession"],
        "the RPC",
    )
    assert rpc.kind == SpanKind.SERVER
    assert _parent_id(rpc) == CALLER_SPAN
    wait = _one([s for s in spans if s.name == "stackone budget wait"], "the budget wait")
    assert _parent_id(wait) == _id(rpc)
    assert wait.attributes is not None
    assert wait.attributes["stackone.budget.class"] == "caller"
    assert 0 <= float(wait.attributes["stackone.budget.wait_seconds"]) < 5  # type: ignore[arg-type]
    call = _one([s for s in spans if s.kind == SpanKind.CLIENT], "the StackOne call")
    assert _parent_id(call) == _id(rpc)
    assert call.attributes is not None
    assert str(call.attributes.get("url.full", call.attributes.get("http.url"))).endswith(
        "/connect_sessions"
    )
    at_stackone = _one(
        [s for s in spans if s.kind == SpanKind.SERVER and s is not rpc], "the emulator's"
    )
    assert _parent_id(at_stackone) == _id(call)


async def test_a_webhook_burst_is_recorded_by_a_span_linked_to_each_and_its_event_carries_it(
    service: Runtime,
    stub: pb_grpc.ConnectServiceAsyncStub,
    gateway_http: httpx.AsyncClient,
    exported: InMemorySpanExporter,
) -> None:
    """Three webhooks of one account: each receipt is a span; the look-up, the folding and
    the recording of their one event are linked to all three; the event a subscriber
    receives carries the recording's trace, which continues the first webhook's."""
    stream = stub.StreamAccountEvents(pb.StreamAccountEventsRequest())
    await attached(stream)
    bodies = [
        webhook("account.updated", account_id="acct-burst", id=f"evt-burst-{n}") for n in range(3)
    ]
    for body in bodies:  # in order: the first one's trace is the event's
        assert (await deliver(gateway_http, body)).status_code == 200
    event = await next_event(stream)
    assert list(event.covered_event_ids) == [f"evt-burst-{n}" for n in range(3)]
    # The outermost span ends once the recording is confirmed, after the event is out.
    await eventually(lambda: any(s.name == "verify account" for s in exported.get_finished_spans()))
    spans = exported.get_finished_spans()
    receipts = sorted(
        (s for s in spans if s.kind == SpanKind.SERVER and s.name.startswith("POST")),
        key=lambda span: span.start_time or 0,
    )
    assert len(receipts) == 3
    assert receipts[0].attributes is not None
    assert receipts[0].attributes["stackone.event_id"] == "evt-burst-0"
    webhook_spans = {_id(span) for span in receipts}
    for name in (
        "verify account",
        "look up account",
        "fold account webhooks",
        "record account events",
    ):
        span = _one([s for s in spans if s.name == name], name)
        assert {link.context.span_id for link in span.links} == webhook_spans, name
        assert _trace(span) == _trace(receipts[0]), name
    carried = span_context_of(event.traceparent)
    assert carried is not None, event.traceparent
    assert carried.trace_id == _trace(receipts[0])
    fold = _one([s for s in spans if s.name == "fold account webhooks"], "the fold")
    assert carried.span_id == _id(fold)
    stream.cancel()


async def test_a_webhook_the_emulator_sends_continues_the_trace_that_caused_it(
    service: Runtime, exported: InMemorySpanExporter
) -> None:
    """A traced request that links an account at the (emulated) StackOne: the signed
    account.created it sends carries that trace, so the gateway's receipt of it, and so
    the event, join the trace of the request (make demo's page to its event)."""
    assert service.emulator is not None
    async with httpx.AsyncClient(base_url=service.emulator.base_url, timeout=5) as emulator:
        created = await emulator.post(
            "/emulator/accounts",
            json={"provider": "hibob", "origin_owner_id": "t-1", "origin_owner_name": "T"},
            headers={"traceparent": CALLER_TRACEPARENT},
        )
    account_id = created.json()["id"]

    def receipts() -> list[ReadableSpan]:
        return [
            span
            for span in exported.get_finished_spans()
            if span.kind == SpanKind.SERVER
            and (span.attributes or {}).get("stackone.account_id") == account_id
        ]

    await eventually(lambda: bool(receipts()), timeout=10)
    assert _trace(_one(receipts(), "the webhook's receipt")) == CALLER_TRACE


class _JsonLines(logging.Handler):
    """Log lines as `serve` writes them, formatted when written (in the writer's context)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(orjson.loads(self.format(record)))


@pytest.fixture
def log_lines() -> Iterator[_JsonLines]:
    """The JSON lines the gateway logs during the test."""
    handler = _JsonLines()
    logger = logging.getLogger("gateway.app")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


async def test_log_lines_made_in_a_span_carry_its_trace_and_span_ids(
    gateway_http: httpx.AsyncClient, exported: InMemorySpanExporter, log_lines: _JsonLines
) -> None:
    """The line logging a refused webhook has the ids of the webhook request's span."""
    response = await gateway_http.post(
        "/webhooks/stackone",
        content=webhook(),
        headers={"content-type": "application/json", "x-stackone-signature": "wrong"},
    )
    assert response.status_code == 401
    await eventually(lambda: any(s.kind == SpanKind.SERVER for s in exported.get_finished_spans()))
    request = _one(
        [s for s in exported.get_finished_spans() if s.kind == SpanKind.SERVER], "the request"
    )
    refused = [
        line for line in log_lines.lines if str(line["message"]).startswith("webhook refused")
    ]
    assert len(refused) == 1
    assert refused[0]["trace_id"] == f"{_trace(request):032x}"
    assert refused[0]["span_id"] == f"{_id(request):016x}"


async def test_log_lines_outside_a_span_carry_no_ids(log_lines: _JsonLines) -> None:
    """A line logged outside any span has neither key (the formatter adds none)."""
    logging.getLogger("gateway.app").info("outside")
    assert "trace_id" not in log_lines.lines[-1]
    assert "span_id" not in log_lines.lines[-1]


def _receiver(protocol: str) -> AbstractAsyncContextManager[tuple[OtlpReceiver, str]]:
    return otlp_http_receiver() if protocol == "http/protobuf" else otlp_grpc_receiver()


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
async def test_serve_exports_a_callers_and_a_webhooks_traces_over_otlp(
    tmp_path: Path, protocol: str
) -> None:
    """`serve` with only OTEL_* variables set exports over OTLP (either protocol) to a
    receiver on loopback: the caller's trace through StackOne, and the trace a webhook
    starts, which its recorded event carries to the subscriber."""
    async with _receiver(protocol) as (receiver, endpoint):
        env = serve_env(
            tmp_path,
            WEBHOOK_SECRET,
            STACKONE_CONNECT_VERIFY_QUIET="0.05",
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
            OTEL_SERVICE_NAME="connect-under-test",
            OTEL_BSP_SCHEDULE_DELAY="50",  # milliseconds between exports
        )
        async with (
            serve_process(env) as serve,
            grpc.aio.insecure_channel(serve.grpc_target) as channel,
            httpx.AsyncClient(base_url=serve.gateway_url, timeout=5) as http,
        ):
            stub = pb_grpc.ConnectServiceStub(channel)
            request = pb.CreateSessionRequest(origin_owner_id="t-1", origin_owner_name="T One")
            await stub.CreateSession(request, metadata=(("traceparent", CALLER_TRACEPARENT),))
            stream = stub.StreamAccountEvents(pb.StreamAccountEventsRequest())
            await attached(stream)
            body = webhook("account.updated", account_id="acct-otlp", id="evt-otlp")
            assert (await deliver(http, body)).status_code == 200
            event = await next_event(stream)
            stream.cancel()
            carried = span_context_of(event.traceparent)
            assert carried is not None, event.traceparent

            def names(trace_id: int) -> set[str]:
                return {span.name for span in receiver.of_trace(trace_id)}

            await eventually(
                lambda: (
                    "stackone budget wait" in names(CALLER_TRACE)
                    and "record account events" in names(carried.trace_id)
                ),
                timeout=10,
            )
    caller = receiver.of_trace(CALLER_TRACE)
    assert {span.service_name for span in receiver.spans} == {"connect-under-test"}
    (rpc,) = [s for s in caller if s.attributes.get("rpc.method") == "CreateSession"]
    assert (rpc.kind, rpc.parent_span_id) == (SERVER, CALLER_SPAN)
    (wait,) = [s for s in caller if s.name == "stackone budget wait"]
    assert wait.parent_span_id == rpc.span_id
    assert wait.attributes["stackone.budget.class"] == "caller"
    (call,) = [s for s in caller if s.kind == CLIENT]
    assert call.parent_span_id == rpc.span_id
    webhooks = receiver.of_trace(carried.trace_id)
    (receipt,) = [s for s in webhooks if s.kind == SERVER and s.name.startswith("POST")]
    assert receipt.attributes["stackone.event_id"] == "evt-otlp"
    (recording,) = [s for s in webhooks if s.name == "record account events"]
    assert (receipt.trace_id, receipt.span_id) in recording.links


async def test_tracing_is_off_without_otel_variables_and_installs_nothing() -> None:
    """No OTEL_* variable (or OTEL_SDK_DISABLED, or an exporter of `none`): no exporter,
    no interceptor, no middleware, no transport wrapper."""
    for environ in (
        {},
        {"OTEL_SERVICE_NAME": "x"},
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},
    ):
        tracing = from_environment(environ)
        assert not tracing.enabled, environ
        assert tracing.grpc_interceptors() == []
        assert tracing.aiohttp_middlewares() == []
        transport = httpx.AsyncHTTPTransport()
        assert tracing.http_transport(transport, httpx.Limits()) is transport


async def test_a_service_without_otel_variables_has_no_tracing_layer(
    tmp_path: Path, backend: LogBackend
) -> None:
    """`running` as `serve` runs it, with no OTEL_* variable: its gateway has no tracing
    middleware."""
    async with running(make_settings(tmp_path, **backend.settings())) as untraced:
        middlewares = untraced.gateway.runner.app.middlewares
    assert middlewares
    assert not [m for m in middlewares if m.__module__.startswith("opentelemetry")]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "udp"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ("OTEL_TRACES_EXPORTER", "zipkin"),
    ],
)
async def test_an_unusable_otel_variable_is_refused_naming_it(variable: str, value: str) -> None:
    """A value of an OTEL_* variable that cannot be used is an error naming the variable
    (the SDK itself would only log a warning and fall back)."""
    valid = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
        "OTEL_TRACES_SAMPLER": "traceidratio",  # so that its argument is read
    }
    with pytest.raises(TracingConfigError, match=f"^{variable}: "):
        from_environment(valid | {variable: value})


async def test_serve_stops_with_one_line_naming_an_unusable_otel_variable(tmp_path: Path) -> None:
    """`serve` with an OTEL_* value it cannot use: exit 2, one line naming the variable."""
    env = serve_env(
        tmp_path,
        WEBHOOK_SECRET,
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4318",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/json",
    )
    process = await asyncio.create_subprocess_exec(
        *SERVE, env={**os.environ, **env}, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(30):
        _, stderr = await process.communicate()
    assert process.returncode == 2, stderr
    lines = stderr.decode().splitlines()
    assert lines == [
        "stackone-connect: cannot start: OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' is not one "
        "of grpc, http/protobuf"
    ]


async def test_the_example_app_carries_the_pages_trace_to_the_service(
    service: Runtime, exported: InMemorySpanExporter
) -> None:
    """A page's request with a traceparent: the example app's span is its child, and the
    app's ListAccounts call carries it on, so the service's RPC span is in the same trace."""
    app_tracing = with_processors([SimpleSpanProcessor(exported)])
    runner = web.AppRunner(build_app(Config(grpc_target=service.grpc_target), app_tracing))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{runner.addresses[0][1]}", timeout=10
        ) as page:
            await page.get("/api/accounts", headers={"traceparent": CALLER_TRACEPARENT})
    finally:
        await runner.cleanup()
        app_tracing.shutdown()
    await eventually(lambda: bool(_rpc_spans(exported, "ListAccounts")))
    spans = [s for s in exported.get_finished_spans() if _trace(s) == CALLER_TRACE]
    request = _one([s for s in spans if s.name == "GET /api/accounts"], "the page's")
    assert _parent_id(request) == CALLER_SPAN
    call = _one(
        [s for s in spans if s.kind == SpanKind.CLIENT and _parent_id(s) == _id(request)],
        "the app's gRPC call",
    )
    rpc = _one(_rpc_spans(exported, "ListAccounts"), "the RPC")
    assert (_trace(rpc), _parent_id(rpc)) == (CALLER_TRACE, _id(call))


@pytest.mark.slow
async def test_the_cli_sends_its_commands_trace_to_the_service(
    service: Runtime, exported: InMemorySpanExporter
) -> None:
    """`sessions create` with OTEL_* variables: the command is a trace (exported over OTLP)
    whose gRPC call carries it, so the service's RPC span is its child."""
    async with otlp_http_receiver() as (receiver, endpoint):
        process = await asyncio.create_subprocess_exec(
            *SERVE[:-1], "sessions", "create", "--target", service.grpc_target,
            "--owner-id", "t-1", "--owner-name", "T One", "--json",
            env={**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(30):
            _, stderr = await process.communicate()
        assert process.returncode == 0, stderr
    command = _one_received(
        [s for s in receiver.spans if s.name == "stackone-connect create_session"], "the command"
    )
    call = _one_received(
        [s for s in receiver.spans if s.kind == CLIENT and s.parent_span_id == command.span_id],
        "its call",
    )
    await eventually(lambda: bool(_rpc_spans(exported, "CreateSession")))
    rpc = _one(_rpc_spans(exported, "CreateSession"), "the RPC")
    assert (_trace(rpc), _parent_id(rpc)) == (command.trace_id, call.span_id)


def _rpc_spans(exported: InMemorySpanExporter, method: str) -> list[ReadableSpan]:
    """The service's spans of RPCs of `method`."""
    return [
        span
        for span in exported.get_finished_spans()
        if span.kind == SpanKind.SERVER
        and span.attributes
        and span.attributes.get("rpc.method") == method
    ]


def _one_received(spans: Sequence[ReceivedSpan], what: str) -> ReceivedSpan:
    assert len(spans) == 1, f"{what}: {[span.name for span in spans]}"
    return spans[0]


async def test_a_sweep_is_a_trace_and_its_events_carry_it(
    tmp_path: Path, backend: LogBackend, exported: InMemorySpanExporter
) -> None:
    """A reconciliation sweep is a trace of its own holding its listing (budget class
    `reconcile`) and its recording; the event it records for an account no webhook
    announced carries that trace."""
    settings = make_settings(
        tmp_path, reconcile_interval=0.05, reconcile_grace=0, **backend.settings()
    )
    tracing = with_processors([SimpleSpanProcessor(exported)])
    async with running(settings, tracing) as service:
        assert service.emulator is not None
        state = service.emulator.runner.app[EMULATOR_STATE]
        state.config.deliver_webhooks = False
        account_id = new_account(
            state, AccountSpec(origin_owner_id="t-1", origin_owner_name="T")
        ).id
        async with grpc.aio.insecure_channel(service.grpc_target) as channel:
            stream = pb_grpc.ConnectServiceStub(channel).StreamAccountEvents(
                pb.StreamAccountEventsRequest(from_earliest=Empty())
            )
            event = await next_event(stream, timeout=10)
            stream.cancel()
    tracing.shutdown()
    assert (event.source, event.account.id) == (pb.EVENT_SOURCE_RECONCILIATION, account_id)
    carried = span_context_of(event.traceparent)
    assert carried is not None, event.traceparent
    spans = [s for s in exported.get_finished_spans() if _trace(s) == carried.trace_id]
    sweep = _one([s for s in spans if s.name == "reconcile sweep"], "the sweep")
    assert sweep.parent is None
    assert carried.span_id == _id(sweep)
    recording = _one([s for s in spans if s.name == "record reconciliation events"], "recording")
    assert _parent_id(recording) == _id(sweep)
    waits = [s for s in spans if s.name == "stackone budget wait"]
    assert waits
    assert {(s.attributes or {}).get("stackone.budget.class") for s in waits} == {"reconcile"}
    assert any(s.kind == SpanKind.CLIENT for s in spans)


async def test_an_inbox_from_before_tracing_gains_the_context_column_at_open(
    tmp_path: Path,
) -> None:
    """A SQLite log whose inbox has no `traceparent` column (written before tracing) is
    brought to it at open: its waiting entries read with no context, new ones keep theirs."""
    path = tmp_path / "events.db"
    log = await SqliteEventLog.open(SqliteOptions(path))
    old = Webhook("evt-old", "account.updated", "acct-1")
    await log.accept(InboxEntry(0, old, time.time(), b"{}"))
    await log.close()
    with closing(sqlite3.connect(path)) as conn:  # the inbox as the release before had it
        conn.execute("ALTER TABLE inbox DROP COLUMN traceparent")
        conn.commit()
    log = await SqliteEventLog.open(SqliteOptions(path))
    try:
        webhook = Webhook("evt-new", "account.updated", "acct-1")
        new = InboxEntry(0, webhook, time.time(), b"{}", CALLER_TRACEPARENT)
        await log.accept(new)
        pending = await log.pending(0, 10)
    finally:
        await log.close()
    assert [(e.event_id, e.traceparent) for e in pending] == [
        ("evt-old", ""),
        ("evt-new", CALLER_TRACEPARENT),
    ]


async def test_health_checks_make_no_spans(
    service: Runtime, exported: InMemorySpanExporter, stub: pb_grpc.ConnectServiceAsyncStub
) -> None:
    """gRPC health probes, every few seconds from each prober, are not traced; the RPCs
    around them are."""
    async with grpc.aio.insecure_channel(service.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        await health.Check(health_pb2.HealthCheckRequest())
    await stub.ListAccounts(pb.ListAccountsRequest())
    await eventually(lambda: bool(_rpc_spans(exported, "ListAccounts")))
    assert not [s for s in exported.get_finished_spans() if "Health" in s.name]
