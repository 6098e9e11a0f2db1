"""The webhook gateway over real HTTP: verify, validate, put in the inbox durably, answer.

No verifier runs here, so what the gateway accepted stays in the inbox to be looked at.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import httpx
import orjson
import pytest
import pytest_asyncio

from gateway.app import WEBHOOK_PATH, GatewayState, init_app
from gateway.signature import sign
from service.events.ingest import Ingestor
from service.events.sqlite import SqliteEventLog
from service.metrics import Metrics
from service.web import listening
from tests.support import WEBHOOK_SECRET, signed_headers

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


@dataclass
class Gateway:
    """A running gateway, its HTTP client and the log it records into."""

    http: httpx.AsyncClient
    log: SqliteEventLog
    state: GatewayState

    async def post(self, body: bytes, headers: Mapping[str, str | bytes]) -> httpx.Response:
        """Delivers one webhook."""
        raw = [(k.encode(), v if isinstance(v, bytes) else v.encode()) for k, v in headers.items()]
        return await self.http.post(WEBHOOK_PATH, content=body, headers=raw)

    async def recorded(self) -> list[str]:
        """Event ids in the inbox, in arrival order."""
        return [entry.event_id for entry in await self.log.pending(0, 1000)]


@pytest_asyncio.fixture
async def gateway(event_log: SqliteEventLog) -> AsyncIterator[Gateway]:
    """A gateway and its log, with no verifier: accepted webhooks stay in the inbox."""
    state = GatewayState(
        ingestor=Ingestor(event_log),
        secrets=["old-secret", WEBHOOK_SECRET],
        url_token=None,
        readiness_check=event_log.check_writable,
        metrics=Metrics(),
        max_body_bytes=4096,
    )
    async with (
        listening(init_app(state), "127.0.0.1", 0) as app,
        httpx.AsyncClient(base_url=app.base_url) as http,
    ):
        yield Gateway(http, event_log, state)


async def test_a_signed_account_event_is_in_the_inbox_then_acknowledged(gateway: Gateway) -> None:
    """A validly signed account.created gets 200 and is in the inbox, raw body and all."""
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
    assert (await gateway.http.get("/readyz")).status_code == 503


async def test_health_and_readiness(gateway: Gateway) -> None:
    """Liveness is 200; readiness is 200 while accepting and 503 once draining."""
    assert (await gateway.http.get("/healthz")).json() == {"status": "ok"}
    assert (await gateway.http.get("/readyz")).status_code == 200
    gateway.state.accepting = False
    assert (await gateway.http.get("/readyz")).status_code == 503


async def test_a_body_that_is_not_json_by_content_type_gets_415(gateway: Gateway) -> None:
    """A signed body sent as text/plain is refused with 415 and not recorded."""
    body = orjson.dumps(CREATED)
    headers = {**signed_headers(body), "content-type": "text/plain"}
    response = await gateway.post(body, headers)
    assert response.status_code == 415
    assert await gateway.recorded() == []
