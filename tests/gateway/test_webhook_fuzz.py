"""Property-based fuzzing of the real gateway: whatever arrives, no crash, no 5xx, and
nothing recorded unless validly signed.

The default run throws a few hundred generated requests; `make fuzz` (marker `fuzz`)
throws 10,000.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import sqlite3
import zlib
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.app import WEBHOOK_PATH, GatewayState, init_app
from gateway.signature import sign
from service.events.ingest import Ingestor
from service.events.sqlite import SqliteEventLog, SqliteOptions
from service.events.verify import record_alone
from service.health import Health
from service.metrics import Metrics
from service.web import listening
from tests.harness.support import WEBHOOK_SECRET, in_a_thread, signed_headers, webhook

_T = TypeVar("_T")
MAX_BODY = 4096
SIGNED_BODY = webhook("account.created")  # waits in the inbox
SIGNED_DELETION = webhook("account.deleted")  # recorded by the door at once


@dataclass
class Gateway:
    """A gateway served from its own thread and loop, so sync hypothesis tests can call it.

    Its door is the service's: deletions and other alerts with nothing pending are
    recorded at once, the rest wait in the inbox."""

    base_url: str
    log: SqliteEventLog
    loop: asyncio.AbstractEventLoop
    http: httpx.Client
    recorded: set[str] = field(default_factory=set)

    def _run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    def held_ids(self) -> set[str]:
        """The ids of the webhooks in the inbox (nothing verifies them here) and of the
        events the door recorded itself (those that need no look-up)."""
        entries = self._run(self.log.pending(0, 100_000))
        events = self._run(self.log.read(0, 100_000))
        return {entry.event_id for entry in entries} | {event.event_id for event in events}

    def check_log(self) -> None:
        """Only accepted webhooks are held, and every accepted one is: in the inbox, as an
        event, or (a deletion of an account already deleted) as a remembered id."""
        held = self.held_ids()
        assert held <= self.recorded, "only validly signed events are accepted"
        with contextlib.closing(
            sqlite3.connect(f"{self.log.path.as_uri()}?mode=ro", uri=True)
        ) as db:
            for event_id in self.recorded - held:
                remembered = db.execute("SELECT 1 FROM dedup WHERE event_id = ?", (event_id,))
                assert remembered.fetchone(), f"{event_id} was accepted, then lost"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The real gateway and event log, running until the module's tests are done."""
    path = tmp_path_factory.mktemp("fuzz") / "events.db"

    @asynccontextmanager
    async def serving() -> AsyncIterator[tuple[str, SqliteEventLog]]:
        log = await SqliteEventLog.open(SqliteOptions(path))
        state = GatewayState(
            ingestor=Ingestor(log, record_alone=record_alone),
            secrets=[WEBHOOK_SECRET],
            url_token=None,
            health=Health(),  # readiness is not what this tests
            metrics=Metrics(),
            max_body_bytes=MAX_BODY,
        )
        try:
            async with listening(init_app(state), "127.0.0.1", 0) as app:
                yield app.base_url, log
        finally:
            await log.close()

    with (
        in_a_thread(serving, what="the gateway", start_within=10) as ((base_url, log), loop),
        httpx.Client(base_url=base_url, timeout=10) as http,
    ):
        gateway = Gateway(base_url, log, loop, http)
        yield gateway
        # Checked once the module's fuzzing ran: an empty inbox would prove nothing.
        assert gateway.recorded, "no fuzzed webhook was accepted"
        gateway.check_log()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
account_payloads = st.fixed_dictionaries(
    {"event": st.sampled_from(["account.created", "account.updated", "account.deleted",
                               "account.error", "hris_employees.created"]) | st.text(max_size=20)},
    optional={
        "account_id": st.text(max_size=30) | st.integers(0, 2**63 - 1) | json_values,
        "provider": st.text(max_size=20) | json_values,
        "origin_owner_id": st.text(max_size=20),
        "event_date": st.sampled_from(["2026-11-24T14:06:49.120Z", "yesterday", ""]) | json_values,
        "sent_at": st.text(max_size=25),
        "data": st.dictionaries(st.sampled_from(["account_id", "provider", "x"]), json_values),
        "id": st.text(max_size=12),
    },
)  # fmt: skip
bodies = (
    account_payloads.map(orjson.dumps)
    | json_values.map(orjson.dumps)
    | st.binary(max_size=512)
    | st.binary(min_size=MAX_BODY - 10, max_size=MAX_BODY + 200)
)


WebhookRequest = tuple[bytes, list[tuple[str, str]], bool]


def _encoded(body: bytes, encoding: str) -> bytes:
    """`body` compressed as `encoding` says; as it is for the others (which aiohttp leaves
    alone). A gzip body that is not gzip is tests/gateway/test_gateway.py's to check."""
    if encoding == "gzip":
        return gzip.compress(body)
    if encoding == "deflate":
        return zlib.compress(body)
    return body


@st.composite
def webhook_requests(draw: st.DrawFn) -> WebhookRequest:
    """A body as sent, headers, and whether the signature is valid for the body the gateway
    reads (after any content encoding, which aiohttp undoes)."""
    body = draw(bodies)
    mode = draw(st.sampled_from(["valid", "padded", "other-secret", "random", "missing", "cut"]))
    signatures = {
        "valid": sign(WEBHOOK_SECRET, body),
        "padded": sign(WEBHOOK_SECRET, body) + "=",
        "other-secret": sign("another-secret", body),
        "random": draw(st.text(alphabet="abcdefABCDEF0123456789-_=+/", max_size=64)),
        "cut": sign(WEBHOOK_SECRET, body)[:-1],
    }
    headers = [("content-type", draw(st.sampled_from([
        "application/json", "application/json; charset=utf-8", "text/plain",
        "application/x-www-form-urlencoded", "",
    ])))]  # fmt: skip
    presented = [signatures[mode]] if mode in signatures else []
    if draw(st.booleans()):  # another signature header, valid or not; the first one counts
        presented.append(draw(st.sampled_from(sorted(signatures.values()))))
    headers += [("x-stackone-signature", signature) for signature in presented]
    encoding = draw(st.sampled_from(["", "", "identity", "gzip", "deflate", "br", "x-bogus"]))
    sent = body
    if encoding:
        headers.append(("content-encoding", encoding))
        sent = _encoded(body, encoding)
    validly_signed = bool(presented) and presented[0] in {signatures["valid"], signatures["padded"]}
    return sent, headers, validly_signed


def check_one(gateway: Gateway, request: WebhookRequest) -> None:
    """Posts one request and checks the gateway's answer and the log against it."""
    body, headers, validly_signed = request
    chunked = len(body) % 3 == 0  # some bodies arrive chunked, with no content-length
    content = iter([body[: len(body) // 2], body[len(body) // 2 :]]) if chunked else body
    response = gateway.http.post(WEBHOOK_PATH, content=content, headers=headers)
    assert response.status_code < 500, response.text
    if not validly_signed:
        # 400: a body that is not what its content-encoding says cannot be read at all.
        assert response.status_code in {400, 401, 413, 415}, response.text
    if response.status_code == 200 and response.json()["result"] == "accepted":
        gateway.recorded.add(response.json()["event_id"])
    gateway.check_log()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=webhook_requests())
@example(request=(SIGNED_BODY, list(signed_headers(SIGNED_BODY).items()), True))
@example(request=(SIGNED_DELETION, list(signed_headers(SIGNED_DELETION).items()), True))
def test_generated_webhooks_never_crash_or_record_unsigned_events(
    gateway: Gateway, request: WebhookRequest
) -> None:
    """A few hundred generated requests: no 5xx; only validly signed events recorded."""
    check_one(gateway, request)


@pytest.mark.fuzz
@pytest.mark.timeout(1800)
@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=webhook_requests())
def test_ten_thousand_generated_webhooks(gateway: Gateway, request: WebhookRequest) -> None:
    """The 10,000-request run behind the `fuzz` marker (`make fuzz`)."""
    check_one(gateway, request)
