"""The StackOne client's mechanisms kept for CreateSession's latency, each guarded by what
it saves, so that simplifying one away fails here, not only in `make bench`."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from service.metrics import Metrics
from service.stackone.client import StackOneClient
from service.stackone.models import ConnectSessionCreate
from tests.harness.stackone_answers import SESSION

pytestmark = pytest.mark.asyncio


class RecordingStackOne(httpx.AsyncBaseTransport):
    """A StackOne that answers every call with a new session (and a cookie), keeping the
    requests it was sent."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Records `request`; answers 201 with a session."""
        self.requests.append(request)
        headers = {"content-type": "application/json", "set-cookie": "lb=node-1; Path=/"}
        return httpx.Response(201, headers=headers, content=SESSION)


async def test_session_requests_go_to_the_transport_with_everything_merged_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """100 CreateSessions parse no URL (the client merged its base URL once, not per call),
    each carries the auth, accept and JSON headers, and no cookie StackOne set comes back."""
    upstream = RecordingStackOne()
    client = StackOneClient("https://api.example/v1", "key", transport=upstream)
    body = ConnectSessionCreate(origin_owner_id="t", origin_owner_name="T")
    parsed = 0
    url_init = httpx.URL.__init__

    def counting_init(self: httpx.URL, url: Any = "", **kwargs: Any) -> None:
        nonlocal parsed
        parsed += isinstance(url, str)
        url_init(self, url, **kwargs)

    monkeypatch.setattr(httpx.URL, "__init__", counting_init)
    try:
        for _ in range(100):
            await client.create_connect_session(body)
    finally:
        await client.aclose()
    assert len(upstream.requests) == 100
    assert parsed == 0
    last = upstream.requests[-1]
    assert str(last.url) == "https://api.example/v1/connect_sessions"
    assert last.headers["authorization"] == "Basic a2V5Og=="  # base64("key:")
    assert last.headers["content-type"] == "application/json"
    assert last.headers["accept"] == "application/json"
    assert "cookie" not in last.headers
    assert orjson.loads(last.content) == body.body()


async def test_upstream_metrics_look_up_each_label_pair_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1,000 StackOne calls of one endpoint and outcome look their metrics up once, not
    twice a call (`labels()` takes a lock and builds a key each time)."""
    metrics = Metrics()
    lookups = 0
    labels = metrics.upstream_calls.labels

    def counting_labels(*values: str) -> Any:
        nonlocal lookups
        lookups += 1
        return labels(*values)

    monkeypatch.setattr(metrics.upstream_calls, "labels", counting_labels)
    for _ in range(1000):
        metrics.observe_upstream("POST /connect_sessions", "ok", 0.001)
    assert lookups == 1
    assert metrics.upstream_calls.labels("POST /connect_sessions", "ok")._value.get() == 1000
