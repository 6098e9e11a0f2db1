"""The webhook gateway: an aiohttp app that verifies StackOne webhooks and records them.

`POST /webhooks/stackone` answers 2xx only once the event is durably in the event log;
a bad signature gets 401, a body that is not an event 400, a storage failure 503 (so
StackOne retries). `GET /healthz` is liveness, `GET /readyz` readiness.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import web

from gateway.signature import SIGNATURE_HEADER, is_valid_signature
from service.events.ingest import Ingestor, InvalidWebhook, parse_webhook
from service.events.model import EventLogError

_log = logging.getLogger(__name__)
WEBHOOK_PATH = "/webhooks/stackone"
MAX_BODY_BYTES = 256 * 1024


@dataclass(slots=True)
class GatewayState:
    """What the gateway's handlers need; `ready` turns False while shutting down."""

    ingestor: Ingestor
    secrets: Sequence[str]
    url_token: str | None
    readiness_check: Callable[[], Awaitable[None]]
    accepting: bool = True


GATEWAY_STATE = web.AppKey("gateway_state", GatewayState)


def _problem(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


async def receive_webhook(request: web.Request) -> web.Response:
    """Verifies, parses and records one StackOne webhook."""
    state = request.app[GATEWAY_STATE]
    if not state.accepting:
        return _problem(503, "shutting down; retry")
    body = await request.read()
    if state.url_token is not None and not hmac.compare_digest(
        request.query.get("token", "").encode(), state.url_token.encode()
    ):
        return _problem(401, "the webhook URL token is missing or wrong")
    if not is_valid_signature(state.secrets, body, request.headers.get(SIGNATURE_HEADER)):
        return _problem(401, f"the {SIGNATURE_HEADER} header does not match the body")
    try:
        event = parse_webhook(body)
        result = await state.ingestor.ingest(event)
    except InvalidWebhook as error:
        return _problem(400, str(error))
    except EventLogError as error:
        _log.error("webhook not recorded, asking StackOne to retry: %s", error)
        return _problem(503, "the event could not be recorded; retry")
    return web.json_response({"result": result.value, "event_id": event.event_id})


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: accepting work and the event log is writable."""
    state = request.app[GATEWAY_STATE]
    if not state.accepting:
        return _problem(503, "shutting down")
    try:
        await state.readiness_check()
    except Exception as error:  # any failure means not ready
        return _problem(503, str(error))
    return web.json_response({"status": "ready"})


def init_app(state: GatewayState, *, max_body_bytes: int = MAX_BODY_BYTES) -> web.Application:
    """Builds the gateway application around `state`."""
    app = web.Application(client_max_size=max_body_bytes)
    app[GATEWAY_STATE] = state
    app.router.add_post(WEBHOOK_PATH, receive_webhook)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
