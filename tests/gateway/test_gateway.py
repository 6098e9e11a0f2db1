"""The webhook gateway over real HTTP: verify, validate, put in the inbox durably, answer.

No verifier runs here, so what the gateway accepted stays in the inbox to be looked at.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import orjson
import pytest
import pytest_asyncio

from gateway.app import WEBHOOK_PATH, GatewayState, init_admin_app, init_app
from gateway.signature import sign
from service.aio import cancel_all
from service.events.ingest import Ingestor
from service.events.model import EventLogError
from service.events.sqlite import SqliteEventLog
from service.health import Health
from service.metrics import Metrics
from service.web import ListeningApp, listening
from tests.harness.support import WEBHOOK_SECRET, eventually, signed_headers

pytestmark = pytest.mark.asyncio

CREATED = {
    "event": "account.created",
    "account_id": "58810347712093448152",
    "provider": "hibob",
    "origin_owner_id": "tenant-5521",
    "origin_owner_name": "Bluefin Logistics",
    "event_date": "2026-11-24T14:06:49.120Z",
    "sent_at": "2026-11-24T14:06:49.803Z",
}


IDLE_TIMEOUT = 0.5
MAX_CONNECTIONS = 8


@dataclass
class Gateway:
    """A running gateway and its admin listener, their HTTP clients, and the log."""

    http: httpx.AsyncClient
    admin: httpx.AsyncClient
    log: SqliteEventLog
    state: GatewayState
    port: int

    async def post(self, body: bytes, headers: Mapping[str, str | bytes]) -> httpx.Response:
        """Delivers one webhook."""
        raw = [(k.encode(), v if isinstance(v, bytes) else v.encode()) for k, v in headers.items()]
        return await self.http.post(WEBHOOK_PATH, content=body, headers=raw)

    async def recorded(self) -> list[str]:
        """Event ids in the inbox, in arrival order."""
        return [entry.event_id for entry in await self.log.pending(0, 1000)]


@pytest_asyncio.fixture
async def gateway(event_log: SqliteEventLog) -> AsyncIterator[Gateway]:
    """A gateway and its log, with no verifier: accepted webhooks stay in the inbox; its
    health checks the log every 10 ms."""
    health = Health(expected=(EventLogError,))
    health.register("event_log_writable", event_log.check_writable)
    await health.run_checks()
    checks = asyncio.create_task(health.run(0.01))
    state = GatewayState(
        ingestor=Ingestor(event_log),
        secrets=["old-secret", WEBHOOK_SECRET],
        url_token=None,
        health=health,
        metrics=Metrics(),
        max_body_bytes=4096,
        body_timeout=0.5,
    )
    try:
        async with (
            listening(
                init_app(state),
                "127.0.0.1",
                0,
                keepalive_timeout=IDLE_TIMEOUT,
                max_connections=MAX_CONNECTIONS,
            ) as app,
            listening(init_admin_app(state), "127.0.0.1", 0) as admin_app,
            httpx.AsyncClient(base_url=app.base_url) as http,
            httpx.AsyncClient(base_url=admin_app.base_url) as admin,
        ):
            yield Gateway(http, admin, event_log, state, app.port)
    finally:
        await cancel_all([checks])


async def test_a_signed_account_event_is_in_the_inbox_then_acknowledged(gateway: Gateway) -> None:
    """A validly signed account.created gets 200 and is in the inbox, parsed, with its raw
    body kept beside."""
    body = orjson.dumps(CREATED)
    response = await gateway.post(body, signed_headers(body))
    assert response.status_code == 200
    assert response.json()["result"] == "accepted"
    (entry,) = await gateway.log.pending(0, 10)
    assert (entry.type, entry.account_id, entry.body) == (
        "account.created",
        "58810347712093448152",
        body,
    )
    assert entry.event_id == response.json()["event_id"]
    webhook = entry.webhook
    assert (webhook.provider, webhook.origin_owner_id, webhook.origin_owner_name) == (
        "hibob",
        "tenant-5521",
        "Bluefin Logistics",
    )
    assert webhook.occurred_at == datetime(2026, 11, 24, 14, 6, 49, 120_000, tzinfo=UTC)
    assert not entry.from_raw_body_only


async def test_redeliveries_are_recorded_once_even_with_a_new_sent_at(gateway: Gateway) -> None:
    """The same event delivered again, with or without a changed sent_at, is a duplicate."""
    first = orjson.dumps(CREATED)
    retried = orjson.dumps({**CREATED, "sent_at": "2026-11-24T14:07:30.000Z"})
    results = [
        (await gateway.post(body, signed_headers(body))).json()["result"]
        for body in (first, first, retried)
    ]
    assert results == ["accepted", "duplicate", "duplicate"]
    assert len(await gateway.recorded()) == 1


async def test_every_configured_secret_is_accepted_and_padding_is_tolerated(
    gateway: Gateway,
) -> None:
    """Rotation: both secrets verify; a base64 value with '=' padding verifies too."""
    old = orjson.dumps({**CREATED, "account_id": "1"})
    padded = orjson.dumps({**CREATED, "account_id": "2"})
    old_headers = signed_headers(old, "old-secret")
    padded_headers = signed_headers(padded)
    padded_headers["x-stackone-signature"] += "="
    assert (await gateway.post(old, old_headers)).status_code == 200
    assert (await gateway.post(padded, padded_headers)).status_code == 200
    assert len(await gateway.recorded()) == 2


@pytest.mark.parametrize(
    ("case", "signature"),
    [
        ("missing header", None),
        ("empty header", ""),
        ("wrong secret", sign("not-the-secret", orjson.dumps(CREATED))),
        ("signature of another body", sign(WEBHOOK_SECRET, b"{}")),
        ("truncated", sign(WEBHOOK_SECRET, orjson.dumps(CREATED))[:20]),
        ("hex instead of base64url", "ab" * 32),
        ("non-ascii bytes", b"s\xefgnature"),
    ],
)
async def test_a_bad_signature_gets_401_and_nothing_is_recorded(
    gateway: Gateway, case: str, signature: str | bytes | None
) -> None:
    """Every kind of wrong signature is refused with 401 and leaves the log empty."""
    headers: dict[str, str | bytes] = {"content-type": "application/json"}
    if signature is not None:
        headers["x-stackone-signature"] = signature
    response = await gateway.post(orjson.dumps(CREATED), headers)
    assert response.status_code == 401, case
    assert "x-stackone-signature" in response.json()["error"]
    assert await gateway.recorded() == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"account_id": "1"}', "no 'event' field"),
        (b'{"event": "account.created"}', "no 'account_id' field"),
        (b'{"event": "account.created", "account_id": {"x": 1}}', "'account_id' must be a string"),
        (b'{"event": "account.updated", "account_id": "1", "event_date": "yesterday"}', "ISO-8601"),
    ],
)
async def test_a_malformed_webhook_gets_400_with_the_reason(
    gateway: Gateway, body: bytes, reason: str
) -> None:
    """A signed body that is not a recordable event gets 400 naming the problem."""
    response = await gateway.post(body, signed_headers(body))
    assert response.status_code == 400
    assert reason in response.json()["error"]
    assert await gateway.recorded() == []


async def test_fields_nested_under_data_are_accepted(gateway: Gateway) -> None:
    """The documented-uncertain shape with fields under `data` is recorded the same way."""
    body = orjson.dumps({"event": "account.updated", "data": {"account_id": "77", "provider": "x"}})
    assert (await gateway.post(body, signed_headers(body))).status_code == 200
    (entry,) = await gateway.log.pending(0, 10)
    assert (entry.type, entry.account_id) == ("account.updated", "77")


async def test_non_account_events_are_acknowledged_but_not_recorded(gateway: Gateway) -> None:
    """Unified-record events are not ours: 200 so StackOne stops, nothing recorded."""
    body = orjson.dumps({"event": "hris_employees.created", "data": {"id": "e1"}})
    response = await gateway.post(body, signed_headers(body))
    assert response.status_code == 200
    assert response.json()["result"] == "ignored"
    assert await gateway.recorded() == []


async def test_an_oversized_body_gets_413(gateway: Gateway) -> None:
    """A body over the size limit is refused before it is verified or parsed."""
    body = orjson.dumps({**CREATED, "padding": "x" * 5000})
    response = await gateway.post(body, signed_headers(body))
    assert response.status_code == 413
    assert await gateway.recorded() == []


async def test_the_url_token_is_checked_when_configured(gateway: Gateway) -> None:
    """With a URL token set, a delivery without it is refused even if signed."""
    gateway.state.url_token = "url-secret"
    body = orjson.dumps(CREATED)
    assert (await gateway.post(body, signed_headers(body))).status_code == 401
    response = await gateway.http.post(
        WEBHOOK_PATH, params={"token": "url-secret"}, content=body, headers=signed_headers(body)
    )
    assert response.status_code == 200


async def test_a_storage_failure_gets_503_so_stackone_retries(gateway: Gateway) -> None:
    """When the log cannot append, the gateway answers 503 and readiness fails."""
    await gateway.log.close()
    body = orjson.dumps(CREATED)
    response = await gateway.post(body, signed_headers(body))
    assert response.status_code == 503

    async def not_ready() -> bool:
        return (await gateway.admin.get("/readyz")).status_code == 503

    await eventually(not_ready)


async def test_health_and_readiness(gateway: Gateway) -> None:
    """Liveness is 200; readiness is 200 while accepting and 503 once draining."""
    assert (await gateway.http.get("/healthz")).json() == {"status": "ok"}
    assert (await gateway.admin.get("/readyz")).status_code == 200
    gateway.state.accepting = False
    assert (await gateway.admin.get("/readyz")).status_code == 503


async def test_a_body_that_is_not_json_by_content_type_gets_415(gateway: Gateway) -> None:
    """A signed body sent as text/plain is refused with 415 and not recorded."""
    body = orjson.dumps(CREATED)
    headers = {**signed_headers(body), "content-type": "text/plain"}
    response = await gateway.post(body, headers)
    assert response.status_code == 415
    assert await gateway.recorded() == []


async def test_readiness_and_metrics_are_only_on_the_admin_listener(gateway: Gateway) -> None:
    """The public listener serves the webhook path and liveness; nothing else leaks."""
    for path in ("/metrics", "/readyz"):
        assert (await gateway.http.get(path)).status_code == 404
        assert (await gateway.admin.get(path)).status_code == 200
    assert (await gateway.http.get("/healthz")).status_code == 200


@pytest.mark.parametrize(
    ("encoding", "content"),
    [("br-x", orjson.dumps(CREATED)), ("gzip", orjson.dumps(CREATED)), ("zip, gzip", b"{}")],
)
async def test_a_body_it_cannot_decode_is_400_and_not_recorded(
    gateway: Gateway, caplog: pytest.LogCaptureFixture, encoding: str, content: bytes
) -> None:
    """An unknown Content-Encoding, or gzip that is not gzip: 400, no ERROR traceback."""
    headers = {**signed_headers(content), "content-encoding": encoding}
    with caplog.at_level(logging.ERROR):
        response = await gateway.post(content, headers)
    assert response.status_code == 400
    assert "Content-Encoding" in response.json()["error"]
    assert await gateway.recorded() == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_gzip_body_is_decoded_and_recorded(gateway: Gateway) -> None:
    """A gzip-encoded webhook signed over its JSON is accepted like a plain one."""
    body = orjson.dumps(CREATED)
    headers = {**signed_headers(body), "content-encoding": "gzip"}
    assert (await gateway.post(gzip.compress(body), headers)).status_code == 200
    assert len(await gateway.recorded()) == 1


async def _raw(gateway: Gateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", gateway.port)


def _head(length: int) -> bytes:
    return (
        f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


async def test_a_body_that_stalls_gets_408(gateway: Gateway) -> None:
    """A sender that stops mid-body is answered 408 once the body timeout passes."""
    reader, writer = await _raw(gateway)
    writer.write(_head(100) + b'{"event"')
    async with asyncio.timeout(5):
        status_line = await reader.readline()
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 408")
    assert await gateway.recorded() == []


async def test_a_sender_vanishing_mid_body_is_counted_not_a_traceback(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    """A connection closed mid-body records nothing and logs no ERROR."""
    disconnected = gateway.state.metrics.webhooks.labels("unknown", "disconnected")
    with caplog.at_level(logging.INFO):
        _, writer = await _raw(gateway)
        writer.write(_head(1000) + b'{"event"')
        await writer.drain()
        writer.close()
        await eventually(lambda: disconnected._value.get() == 1)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert await gateway.recorded() == []


async def test_headers_that_trickle_in_are_cut_off(gateway: Gateway) -> None:
    """A connection that keeps sending header bytes but never ends them is closed."""
    reader, writer = await _raw(gateway)
    started = time.monotonic()
    async with asyncio.timeout(10):
        for byte in _head(10)[:-4]:
            if reader.at_eof():
                break
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(IDLE_TIMEOUT / 10)  # a slow sender: the point of the test
        assert await reader.read() == b""
    writer.close()
    assert time.monotonic() - started < IDLE_TIMEOUT * 6


async def test_connections_past_the_cap_get_503(gateway: Gateway) -> None:
    """With MAX_CONNECTIONS open, the next connection is answered 503 and closed."""
    app = init_app(gateway.state)
    async with listening(app, "127.0.0.1", 0, max_connections=MAX_CONNECTIONS) as capped:
        held = []
        for _ in range(MAX_CONNECTIONS):
            reader, writer = await asyncio.open_connection("127.0.0.1", capped.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # then kept alive
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
            held.append(writer)
        reader, writer = await asyncio.open_connection("127.0.0.1", capped.port)
        assert (await reader.readline()).startswith(b"HTTP/1.1 503")
        writer.close()
        held.pop().close()
        await eventually(lambda: len(app_connections(capped)) < MAX_CONNECTIONS)
        reader, writer = await asyncio.open_connection("127.0.0.1", capped.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 200"), "a freed slot is reused"
        for connection in [*held, writer]:
            connection.close()


def app_connections(app: ListeningApp) -> list[object]:
    """The connections an application's server holds open."""
    server = app.runner.server
    return list(server.connections) if server is not None else []


async def test_unknown_event_types_are_acknowledged_under_bounded_labels(gateway: Gateway) -> None:
    """Any type is answered 2xx; metric labels come from a fixed set whatever the types."""
    for event_type in ("hris_employees.created", "x" * 90, "account.error", "account.zz"):
        body = orjson.dumps({**CREATED, "event": event_type})
        assert (await gateway.post(body, signed_headers(body))).status_code == 200
    labels = {
        sample.labels["type"]
        for family in gateway.state.metrics.webhooks.collect()
        for sample in family.samples
    }
    assert labels == {"other", "account.other"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("account_id", "x" * 256),
        ("account_id", ".."),
        ("account_id", "a\u0000b"),
        ("id", "e" * 256),
        ("event", "account." + "y" * 100),
        # Account events no stream filter could select (event_types takes account.[a-z_]+).
        ("event", "account."),
        ("event", "account.<b>created</b>"),
        ("event", "account.up\u0007dated"),
        ("event", "account.Created"),
        ("origin_owner_name", "n" * 1025),
        ("event_date", "0001-01-01T00:00:00+14:00"),
    ],
)
async def test_fields_past_their_bounds_are_400_naming_the_field(
    gateway: Gateway, field: str, value: str
) -> None:
    """Ids, types, texts and dates beyond their bounds are refused before the inbox."""
    body = orjson.dumps({**CREATED, field: value})
    response = await gateway.post(body, signed_headers(body))
    assert response.status_code == 400
    assert f"'{field}'" in response.json()["error"]
    assert await gateway.recorded() == []


@pytest.mark.parametrize(
    ("supplied", "kept"), [("req-42", True), ("r" * 129, False), ("has space", False)]
)
async def test_a_request_id_is_kept_only_when_short_and_printable(
    gateway: Gateway, supplied: str, kept: bool
) -> None:
    """The caller's x-request-id goes into every log line, so only a short token is kept;
    anything else is replaced by a fresh id."""
    response = await gateway.http.get("/healthz", headers={"x-request-id": supplied})
    echoed = response.headers["x-request-id"]
    assert (echoed == supplied) is kept
    assert len(echoed) <= 128
