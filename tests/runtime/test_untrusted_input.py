"""Nothing an unauthenticated sender sends decides what is traced, sampled or logged as an
error: a malformed request to either door is a 4xx (or its gRPC status) and at most one
quiet line, and a stranger's `traceparent` neither parents a span nor chooses its sampling.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import orjson
import pytest
import pytest_asyncio
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gateway.app import WEBHOOK_PATH
from service.runtime import Runtime, running
from service.tracing import with_processors
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.processes import ServeProcess, serve_env, serve_process
from tests.harness.support import WEBHOOK_SECRET, eventually, make_settings, signed_headers, webhook

pytestmark = pytest.mark.asyncio
TOKEN = "untrusted-input-token-0123"
STRANGER_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
STRANGER_SPAN = 0x00F067AA0BA902B7
SAMPLED = f"00-{STRANGER_TRACE:032x}-{STRANGER_SPAN:016x}-01"
NOT_SAMPLED = f"00-{STRANGER_TRACE:032x}-{STRANGER_SPAN:016x}-00"
JSON = {"content-type": "application/json"}
SIGNED_GARBAGE = b"{not json"

# Each: what the request is, its bytes on the wire (past the request line's host), the
# status it must get.
_HOST = b"Host: gateway\r\n"
RAW_REQUESTS = [
    ("a header line over aiohttp's limit", b"POST /webhooks/stackone HTTP/1.1\r\n" + _HOST
     + b"traceparent: " + b"x" * 9000 + b"\r\n\r\n", 400),
    ("a header without a colon", b"POST /webhooks/stackone HTTP/1.1\r\n" + _HOST
     + b"Not A Header\r\n\r\n", 400),
    ("a request line over the limit", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 400),
    ("a malformed chunk", b"POST /webhooks/stackone HTTP/1.1\r\n" + _HOST
     + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    ("no Host header", b"GET /healthz HTTP/1.1\r\n\r\n", 400),
    ("an HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    ("not HTTP at all", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 64, 400),
]  # fmt: skip
WEBHOOK_REQUESTS = [
    ("no signature", {"content": webhook(), "headers": JSON}, 401),
    ("a wrong signature", {"content": webhook(), "headers": {**JSON, "x-stackone-signature": "x"}},
     401),
    ("signed bytes that are not JSON",
     {"content": SIGNED_GARBAGE, "headers": signed_headers(SIGNED_GARBAGE)}, 400),
    ("a body that is not JSON by its type",
     {"content": b"x", "headers": {"content-type": "text/plain"}}, 415),
    ("an unknown Content-Encoding",
     {"content": b"x", "headers": {**JSON, "content-encoding": "zz"}}, 400),
    # A gzip stream cut short decodes to what it holds (nothing), which is not signed.
    ("a gzip body cut short", {"content": b"x", "headers": {**JSON, "content-encoding": "gzip"}},
     401),
    ("a body over the limit", {"content": b"x" * 300_000, "headers": JSON}, 413),
    ("a garbage traceparent", {"content": webhook(), "headers": {**JSON, "traceparent": "zz" * 60}},
     401),
]  # fmt: skip


def _loud(lines: list[dict[str, object]]) -> list[dict[str, object]]:
    return [
        line
        for line in lines
        if line.get("level") not in {"DEBUG", "INFO", "WARNING"}
        or "exception" in line
        or "Traceback" in str(line.get("message", ""))
    ]


async def _raw_status(url: str, data: bytes) -> int:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()
    return int(status_line.split()[1])


async def _logged_by(serve: ServeProcess, before: int) -> list[dict[str, object]]:
    """The lines `serve` logged since `before`, once a marker request shows it got that far."""
    marker = f"marker-{before}"
    async with httpx.AsyncClient(base_url=serve.gateway_url, timeout=5) as http:
        await http.post(WEBHOOK_PATH, content=b"x", headers={"content-type": "text/plain",
                                                               "x-request-id": marker})  # fmt: skip
    await eventually(lambda: any(line.get("request_id") == marker for line in serve.log_lines))
    lines = serve.log_lines[before:]
    cut = next(n for n, line in enumerate(lines) if line.get("request_id") == marker)
    return lines[:cut]


async def test_malformed_http_and_webhooks_are_4xx_and_at_most_one_quiet_line(
    tmp_path: Path,
) -> None:
    """Each malformed request to the gateway (not HTTP, a bad header, a bad chunk, a bad
    signature, bad JSON, a bad type or coding, too large) gets its 4xx, and `serve` logs at
    most one line for it, below ERROR and without a traceback."""
    async with serve_process(serve_env(tmp_path, WEBHOOK_SECRET)) as serve:
        for what, data, status in RAW_REQUESTS:
            before = len(serve.log_lines)
            assert await _raw_status(serve.gateway_url, data) == status, what
            lines = await _logged_by(serve, before)
            assert not _loud(lines), (what, lines)
            assert len(lines) <= 1, (what, lines)
        async with httpx.AsyncClient(base_url=serve.gateway_url, timeout=5) as http:
            for what, request, status in WEBHOOK_REQUESTS:
                before = len(serve.log_lines)
                response = await http.post(WEBHOOK_PATH, **request)  # type: ignore[arg-type]
                assert response.status_code == status, (what, response.text)
                lines = await _logged_by(serve, before)
                assert not _loud(lines), (what, lines)
                assert len(lines) <= 1, (what, lines)
        await serve.stop()
    assert not _loud(serve.log_lines)


def _clients(folder: Path) -> Path:
    scopes = ["sessions:create", "accounts:read", "accounts:write", "events:read"]
    path = folder / "clients.json"
    path.write_bytes(orjson.dumps({"clients": [{"name": "a", "token": TOKEN, "scopes": scopes}]}))
    return path


async def test_malformed_grpc_calls_get_their_status_and_no_error_line(tmp_path: Path) -> None:
    """Calls without a token, with a wrong one, with garbage metadata, bytes that are not
    the request, an unknown method or service: each gets its status, and `serve` logs
    nothing at ERROR and no traceback."""
    env = serve_env(tmp_path, WEBHOOK_SECRET, STACKONE_CONNECT_CLIENTS_FILE=str(_clients(tmp_path)))
    async with (
        serve_process(env) as serve,
        grpc.aio.insecure_channel(serve.grpc_target) as channel,
    ):
        raw_get = channel.unary_unary(
            "/stackone_connect.v1.ConnectService/GetAccount",
            request_serializer=lambda raw: raw,
            response_deserializer=lambda raw: raw,
        )
        unknown = channel.unary_unary(
            "/stackone_connect.v1.ConnectService/Nope",
            request_serializer=lambda raw: raw,
            response_deserializer=lambda raw: raw,
        )
        no_service = channel.unary_unary(
            "/no.such.Service/Call", request_serializer=lambda raw: raw,
            response_deserializer=lambda raw: raw,
        )  # fmt: skip
        stub = pb_grpc.ConnectServiceStub(channel)
        request = pb.GetAccountRequest(account_id="acct-1")
        token = ("authorization", f"Bearer {TOKEN}")
        calls = [
            ("no token", stub.GetAccount(request), grpc.StatusCode.UNAUTHENTICATED),
            ("a wrong token", stub.GetAccount(request, metadata=(("authorization", "Bearer no"),)),
             grpc.StatusCode.UNAUTHENTICATED),
            ("a scheme alone", stub.GetAccount(request, metadata=(("authorization", "Bearer"),)),
             grpc.StatusCode.UNAUTHENTICATED),
            ("garbage metadata", stub.GetAccount(request, metadata=(
                ("x-anything-bin", b"\xff\x00"), ("traceparent", "zz" * 40),
                ("x-request-id", "x" * 5000), token)), grpc.StatusCode.NOT_FOUND),
            ("bytes that are not the request", raw_get(b"\xff\xff\xff", metadata=(token,)),
             grpc.StatusCode.INVALID_ARGUMENT),
            ("a request over the size limit", raw_get(b"\x0a" + b"\xff" * (5 << 20),
             metadata=(token,)), grpc.StatusCode.RESOURCE_EXHAUSTED),
            ("an unknown method", unknown(b"", metadata=(token,)), grpc.StatusCode.UNIMPLEMENTED),
            ("an unknown service", no_service(b""), grpc.StatusCode.UNIMPLEMENTED),
        ]  # fmt: skip
        for what, call, code in calls:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await call
            assert failed.value.code() == code, (what, failed.value.details())
        await serve.stop()
    assert not _loud(serve.log_lines), _loud(serve.log_lines)


@pytest.fixture
def exported() -> InMemorySpanExporter:
    """Every span the service ends."""
    return InMemorySpanExporter()


@pytest_asyncio.fixture
async def traced(tmp_path: Path, exported: InMemorySpanExporter) -> AsyncIterator[Runtime]:
    """The service with a clients file and tracing on under the default sampler
    (`parentbased_always_on`: a trusted parent's decision holds, roots are sampled)."""
    tracing = with_processors([SimpleSpanProcessor(exported)])
    settings = make_settings(tmp_path, clients_file=_clients(tmp_path))
    async with running(settings, tracing) as runtime:
        yield runtime
    tracing.shutdown()


def _servers(exported: InMemorySpanExporter) -> list[ReadableSpan]:
    return [span for span in exported.get_finished_spans() if span.kind == SpanKind.SERVER]


def _of_stranger(span: ReadableSpan) -> bool:
    assert span.context is not None
    return span.context.trace_id == STRANGER_TRACE or (
        span.parent is not None and span.parent.span_id == STRANGER_SPAN
    )


async def test_a_strangers_traceparent_on_an_unsigned_webhook_is_not_its_parent_or_sampling(
    traced: Runtime, exported: InMemorySpanExporter
) -> None:
    """Unsigned webhooks carrying a traceparent (sampled, or saying not to sample) are
    traced as roots of traces of their own, sampled as the service's sampler says; a
    signed one continues the trace it names."""
    async with httpx.AsyncClient(base_url=traced.gateway.base_url, timeout=5) as http:
        for traceparent in (SAMPLED, NOT_SAMPLED):
            headers = {**JSON, "x-stackone-signature": "wrong", "traceparent": traceparent}
            response = await http.post(WEBHOOK_PATH, content=webhook(), headers=headers)
            assert response.status_code == 401
        await eventually(lambda: len(_servers(exported)) == 2)
        refused = _servers(exported)
        assert all(span.parent is None for span in refused), [s.parent for s in refused]
        assert not any(_of_stranger(span) for span in refused)
        body = webhook("account.deleted")
        signed = {**signed_headers(body), "traceparent": SAMPLED}
        assert (await http.post(WEBHOOK_PATH, content=body, headers=signed)).status_code == 200
    await eventually(lambda: len(_servers(exported)) == 3)
    (accepted,) = [span for span in _servers(exported) if span not in refused]
    assert accepted.parent is not None
    assert accepted.parent.span_id == STRANGER_SPAN


async def test_a_strangers_traceparent_on_an_unauthenticated_call_is_not_its_parent_or_sampling(
    traced: Runtime, exported: InMemorySpanExporter
) -> None:
    """Calls without a valid token carrying a traceparent (sampled, or not) are spans of
    traces of their own, sampled as the service says; a known client's continues its trace."""
    async with grpc.aio.insecure_channel(traced.grpc_target) as channel:
        stub = pb_grpc.ConnectServiceStub(channel)
        request = pb.GetAccountRequest(account_id="acct-1")
        for metadata in (
            (("traceparent", SAMPLED),),
            (("traceparent", NOT_SAMPLED),),
            (("traceparent", SAMPLED), ("authorization", "Bearer wrong-token-0123456789")),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.GetAccount(request, metadata=metadata)
            assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED
        await eventually(lambda: len(_servers(exported)) == 3)
        refused = _servers(exported)
        assert all(span.parent is None for span in refused), [s.parent for s in refused]
        assert not any(_of_stranger(span) for span in refused)
        known = (("traceparent", SAMPLED), ("authorization", f"Bearer {TOKEN}"))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.GetAccount(pb.GetAccountRequest(account_id="acct-none"), metadata=known)
    await eventually(lambda: any(_of_stranger(span) for span in _servers(exported)))
