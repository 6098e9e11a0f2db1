"""The emulator's webhook delivery: signed as StackOne signs them, one worker so an
account's webhooks arrive in the order they happened, each retried with exponential
backoff (the service's retry policy) and every attempt recorded for `GET /emulator/deliveries`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator

import aiohttp
import orjson
from aiohttp import web

from service.emulator.state import EMULATOR_STATE, DeliveryAttempt, EmulatorState, Webhook, iso, now
from service.retry import RetryPolicy

_log = logging.getLogger(__name__)
DELIVERY_ATTEMPTS = 6
DELIVERY_BACKOFF = 0.05  # seconds before the first retry, doubling for each next one
_DELIVERY = RetryPolicy(
    DELIVERY_ATTEMPTS, first_wait=DELIVERY_BACKOFF, longest_wait=DELIVERY_BACKOFF * 2**5
)


def sign_webhook(secret: str, body: bytes) -> str:
    """StackOne's signature: unpadded base64url of HMAC-SHA256(secret, raw body)."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class _NotDelivered(Exception):
    """An attempt that got no 2xx (its record says why)."""


async def _deliver(state: EmulatorState, http: aiohttp.ClientSession, webhook: Webhook) -> None:
    try:
        async for attempt in _DELIVERY.attempts_of(_NotDelivered):
            with attempt:
                await _attempt(state, http, webhook, attempt.num)
    except _NotDelivered:
        _log.warning("emulator gave up delivering %s for %s", webhook.event, webhook.account_id)


async def _attempt(
    state: EmulatorState, http: aiohttp.ClientSession, webhook: Webhook, number: int
) -> None:
    """One delivery attempt, recorded; `_NotDelivered` unless it got a 2xx."""
    record = DeliveryAttempt(str(webhook.event), webhook.account_id, number)
    state.deliveries.append(record)
    url, secret = state.config.webhook_url, state.config.webhook_secret or ""
    if url is None:  # switched off by PUT /emulator/webhooks since it was queued
        record.error = "no webhook URL is configured"
        raise _NotDelivered
    body = orjson.dumps(webhook.to_json(sent_at=iso(now())))
    headers = {
        "content-type": "application/json",
        "x-stackone-signature": sign_webhook(secret, body),
    }
    if webhook.traceparent:
        headers["traceparent"] = webhook.traceparent
    try:
        async with http.post(url, data=body, headers=headers) as response:
            record.status = response.status
    except (aiohttp.ClientError, TimeoutError) as error:
        record.error = f"{type(error).__name__}: {error}"
        raise _NotDelivered from error
    if not 200 <= record.status < 300:
        raise _NotDelivered


async def delivery_worker(app: web.Application) -> AsyncIterator[None]:
    """A cleanup context delivering the emulator `app`'s queued webhooks while it runs."""
    state = app[EMULATOR_STATE]
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:

        async def work() -> None:
            while True:
                webhook = await state.outbox.get()
                try:
                    await _deliver(state, http, webhook)
                finally:
                    state.outbox.task_done()

        # One worker: webhooks of an account arrive in the order they happened.
        worker = asyncio.create_task(work())
        yield
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
