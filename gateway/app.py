"""The webhook gateway: an aiohttp app that verifies StackOne webhooks and records them.

`POST /webhooks/stackone` answers 2xx only once the webhook is durably in the inbox
(never waiting on StackOne: the verifier records the event later); a bad signature gets
401, a body that is not an event 400, a body over the limit 413, a content type other
than JSON 415, a storage failure or a full inbox 503 (so StackOne retries).
`GET /healthz` is liveness. Only these face the internet: `GET /readyz` (readiness) and
`GET /metrics` (Prometheus) are served by the admin app on its own listener.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import orjson
from aiohttp import web
from opentelemetry.trace import StatusCode
from prometheus_client import CONTENT_TYPE_LATEST, Counter

from gateway.encoding import BodyTooLarge, UndecodableBody, decode, unsupported
from gateway.signature import SIGNATURE_HEADER, is_valid_signature
from gateway.webhook import InvalidWebhook, parse_webhook
from service.events.ingest import Ingestor
from service.events.model import AccountEventType, EventLogError, InboxFull
from service.health import Health, HealthSnapshot
from service.logs import REQUEST_ID, request_id_from
from service.metrics import Metrics
from service.tracing import OFF, Tracing, remote_parent
from service.web import RAW_BODIES

_log = logging.getLogger(__name__)
WEBHOOK_PATH = "/webhooks/stackone"
MAX_BODY_BYTES = 256 * 1024
INBOX_FULL_RETRY_AFTER = 30  # seconds; StackOne keeps its own schedule, this is a hint
KNOWN_TYPES = frozenset(AccountEventType)


@dataclass(slots=True)
class GatewayState:
    """What the gateway's handlers need; `ready` turns False while shutting down."""

    ingestor: Ingestor
    secrets: Iterable[str]  # a `WebhookSecrets` re-reads its file as it is iterated
    url_token: str | None
    health: Health  # what /readyz reports: the checks' last snapshot
    metrics: Metrics
    max_body_bytes: int = MAX_BODY_BYTES
    body_timeout: float = 10.0
    accepting: bool = True
    _counters: dict[tuple[str, str], Counter] = field(default_factory=dict)

    def count(self, event_type: str, outcome: str) -> None:
        """Counts one webhook (the labelled child is looked up once per label pair)."""
        counter = self._counters.get((event_type, outcome))
        if counter is None:
            counter = self._counters[event_type, outcome] = self.metrics.webhooks.labels(
                event_type, outcome
            )
        counter.inc()


GATEWAY_STATE = web.AppKey("gateway_state", GatewayState)
TRACING = web.AppKey("tracing", Tracing)


def _problem(
    state: GatewayState, status: int, outcome: str, reason: str, **headers: str
) -> web.Response:
    state.count("unknown", outcome)  # refused before its type is known
    _log.info("webhook refused (%d): %s", status, reason, extra={"outcome": outcome})
    return web.json_response({"error": reason}, status=status, headers=headers)


@dataclass(frozen=True, slots=True)
class _Refusal:
    """Why a webhook is refused before it is known to come from StackOne."""

    status: int
    outcome: str
    reason: str
    headers: dict[str, str] = field(default_factory=dict)


async def receive_webhook(request: web.Request) -> web.Response:
    """Verifies, parses and records one StackOne webhook, as one server span."""
    started_ns = time.time_ns()
    state = request.app[GATEWAY_STATE]
    admitted = await _admitted(state, request)
    # Its span begins at arrival but is made once the sender is known: only a signed
    # webhook's trace headers are continued; anyone else's choose neither the parent nor
    # the sampling (the span is a root, sampled as this service's sampler says).
    tracing = request.app[TRACING]
    signed = isinstance(admitted, bytes)
    with tracing.server_span(
        f"POST {WEBHOOK_PATH}",
        started_ns=started_ns,
        # Read only when a span is made: untraced, the headers are left unparsed.
        parent=remote_parent(request.headers) if signed and tracing.enabled else None,
        attributes={"http.request.method": "POST", "http.route": WEBHOOK_PATH},
    ) as span:
        if isinstance(admitted, _Refusal):
            response = _refused(state, admitted)
        else:
            response = await _recorded(state, admitted)
        if span is not None:
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                span.set_status(StatusCode.ERROR)
        return response


async def _admitted(state: GatewayState, request: web.Request) -> bytes | _Refusal:
    """The decoded body of a webhook signed by StackOne, or why it is refused."""
    if not state.accepting:
        return _Refusal(503, "draining", "shutting down; retry")
    if request.content_type != "application/json":
        return _Refusal(415, "unsupported_media_type", "the body must be application/json")
    content_encoding = request.headers.get("content-encoding", "")
    if problem := unsupported(content_encoding):
        return _Refusal(400, "malformed", problem)
    if (request.content_length or 0) > state.max_body_bytes:
        return _too_large(state)  # before reading: the wire size alone is over the limit
    try:
        if request.content.is_eof():  # it came whole with the headers: no timer to set
            raw = await request.read()
        else:
            async with asyncio.timeout(state.body_timeout):
                raw = await request.read()  # as sent: client_max_size caps it
        body = decode(raw, content_encoding, state.max_body_bytes)
    except (web.HTTPRequestEntityTooLarge, BodyTooLarge):
        return _too_large(state)
    except TimeoutError:
        return _Refusal(408, "timeout", f"the body did not arrive within {state.body_timeout:g}s")
    except UndecodableBody:
        return _Refusal(400, "malformed", "the body cannot be decoded as its Content-Encoding says")
    except web.RequestPayloadError:
        return _Refusal(400, "malformed", "the body's chunked framing is malformed")
    except ConnectionResetError:
        # The sender went away mid-body: nobody reads an answer, and nothing was recorded.
        return _Refusal(400, "disconnected", "the client disconnected mid-body")
    if state.url_token is not None and not hmac.compare_digest(
        request.query.get("token", "").encode(), state.url_token.encode()
    ):
        return _Refusal(401, "unauthorized", "the webhook URL token is missing or wrong")
    if not is_valid_signature(state.secrets, body, request.headers.get(SIGNATURE_HEADER)):
        reason = f"the {SIGNATURE_HEADER} header does not match the body"
        return _Refusal(401, "unauthorized", reason)
    return body


def _refused(state: GatewayState, refusal: _Refusal) -> web.Response:
    response = _problem(state, refusal.status, refusal.outcome, refusal.reason, **refusal.headers)
    if refusal.status == 413:
        response.force_close()  # a sender past the limit gets no further requests in
    return response


async def _recorded(state: GatewayState, body: bytes) -> web.Response:
    """Parses a signed webhook's body and puts it in the inbox."""
    try:
        webhook = parse_webhook(body)  # the one parse: it travels on with the entry
        result = await state.ingestor.ingest(webhook, body)
    except InvalidWebhook as error:
        return _problem(state, 400, "malformed", str(error))
    except InboxFull as error:
        _log.warning("webhook refused, asking StackOne to retry later: %s", error)
        return _problem(
            state, 503, "inbox_full", f"{error}; retry later",
            **{"Retry-After": str(INBOX_FULL_RETRY_AFTER)},
        )  # fmt: skip
    except EventLogError as error:
        _log.error("webhook not recorded, asking StackOne to retry: %s", error)
        return _problem(state, 503, "unavailable", "the event could not be recorded; retry")
    state.count(_type_label(webhook.type), result.value)
    if _log.isEnabledFor(logging.DEBUG):
        _log.debug(
            "webhook %s %s", webhook.type, result.value,
            extra={"event_id": webhook.event_id, "account_id": webhook.account_id},
        )  # fmt: skip
    answer = orjson.dumps({"result": result.value, "event_id": webhook.event_id})
    return web.Response(body=answer, content_type="application/json")


def _too_large(state: GatewayState) -> _Refusal:
    return _Refusal(413, "too_large", f"the body is over the {state.max_body_bytes}-byte limit")


def _type_label(event_type: str) -> str:
    """A metric label from a bounded set, whatever types senders invent."""
    if event_type in KNOWN_TYPES:
        return event_type
    return "account.other" if event_type.startswith("account.") else "other"


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness as the service's health checks last found it (`service.health`, which
    gRPC health reads too), every check listed by name: 503 while shutting down or while
    a readiness check fails, naming it and why."""
    state = request.app[GATEWAY_STATE]
    snapshot = state.health.snapshot
    checks = _checks(snapshot)
    if not state.accepting:
        return web.json_response({"error": "shutting down", "checks": checks}, status=503)
    if not snapshot.ready:
        problems = "; ".join(snapshot.problems())
        return web.json_response({"error": problems, "checks": checks}, status=503)
    return web.json_response({"status": "ready", "checks": checks})


def _checks(snapshot: HealthSnapshot) -> dict[str, dict[str, object]]:
    """Each check by name: passing, whether readiness waits on it, and why it fails."""
    return {
        result.name: {"passing": result.passing, "readiness": result.readiness}
        | ({} if result.passing else {"detail": result.detail})
        for result in snapshot.results
    }


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics of the whole service (gRPC, gateway, event log, upstream)."""
    body = request.app[GATEWAY_STATE].metrics.exposition()
    return web.Response(body=body, headers={"content-type": CONTENT_TYPE_LATEST})


@web.middleware
async def request_id(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Gives every request an id (the caller's X-Request-Id, or a new one) for the logs."""
    value = request_id_from(request.headers.get("x-request-id"))
    REQUEST_ID.set(value)
    response = await handler(request)
    response.headers["x-request-id"] = value
    return response


@web.middleware
async def unread_body_ends_connection(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Ends the connection of a request whose body was not read to its end (too large,
    late, or refused before reading): the answer says `Connection: close` and what follows
    is dropped unread. aiohttp would otherwise read the rest for up to 10 s after
    answering (decoding it where it decodes: seconds of CPU for one gzip body)."""
    try:
        response = await handler(request)
    except web.HTTPException as error:  # an HTTPException is also the response sent
        _end_if_unread(request, error)
        raise
    _end_if_unread(request, response)
    return response


def _end_if_unread(request: web.Request, response: web.StreamResponse) -> None:
    if request.content.is_eof():
        return
    request.protocol.close()  # from now on, what arrives is dropped undecoded
    request.content.feed_eof()  # so aiohttp does not wait to read the rest
    response.force_close()


def init_app(state: GatewayState, tracing: Tracing = OFF) -> web.Application:
    """The public webhook listener: the webhook path and liveness, nothing else; with
    `tracing` on, each webhook is a span (its log lines carry it)."""
    app = web.Application(
        client_max_size=state.max_body_bytes,
        middlewares=[unread_body_ends_connection, request_id],
    )
    app[RAW_BODIES] = True  # decoded by the handler, within the body limit
    app[GATEWAY_STATE] = state
    app[TRACING] = tracing
    app.router.add_post(WEBHOOK_PATH, receive_webhook)
    app.router.add_get("/healthz", healthz)
    return app


def init_admin_app(state: GatewayState) -> web.Application:
    """The admin listener (loopback by default): metrics, readiness and liveness."""
    app = web.Application(middlewares=[unread_body_ends_connection, request_id])
    app[GATEWAY_STATE] = state
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
