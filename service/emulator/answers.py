"""What every room of the emulator answers with: StackOne's error body, request bodies
read through `bodies`, and the base URL links are made from."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel

from service.emulator.bodies import BadBody, parsed
from service.emulator.state import EMULATOR_STATE, Account, EmulatorState, Session, iso, now

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_B = TypeVar("_B", bound=BaseModel)
_Refusal = TypeVar("_Refusal", bound=web.HTTPClientError)


def stackone_error(status: int, message: str, **headers: str) -> web.Response:
    """An error in StackOne's shape."""
    body = {"statusCode": status, "message": message, "timestamp": iso(now())}
    return web.json_response(body, status=status, headers=headers)


def bad_request(message: str) -> web.HTTPBadRequest:
    """A 400 to raise, with StackOne's error body."""
    return refusal(web.HTTPBadRequest, message)


def refusal(kind: type[_Refusal], message: str) -> _Refusal:
    """An HTTP error of `kind` to raise, with StackOne's error body."""
    body = {"statusCode": kind.status_code, "message": message, "timestamp": iso(now())}
    return kind(text=orjson.dumps(body).decode(), content_type="application/json")


def live_session_of(
    request: web.Request, token: object, missing: type[web.HTTPClientError], why: str
) -> Session:
    """The live session `token` names; else a `missing` error saying `why` (raised)."""
    session = emulator_state(request).live_session(token)
    if session is None:
        raise refusal(missing, why)
    return session


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request's body as a JSON object, else a 400 (raised)."""
    try:
        # orjson: json.loads (aiohttp's) recurses, and a deeply nested body would be a 500.
        body = orjson.loads(await request.read())
    except (ValueError, RecursionError) as error:
        raise bad_request("body is not JSON") from error
    if not isinstance(body, dict):
        raise bad_request("body must be a JSON object")
    return body


async def body_as(request: web.Request, kind: type[_B], refusal: str) -> _B:
    """The request's body as a `kind`, else a 400 (raised) whose message is `refusal`, a
    colon, and what is wrong with each field."""
    try:
        return parsed(kind, await json_object(request))
    except BadBody as error:
        raise bad_request(f"{refusal}: {error}") from None


def emulator_state(request: web.Request) -> EmulatorState:
    """The state of the emulator answering `request`."""
    return request.app[EMULATOR_STATE]


def base_url(request: web.Request) -> str:
    """Where the emulator is reached, as links it hands out name it."""
    configured = emulator_state(request).config.public_base_url
    return configured or f"{request.scheme}://{request.host}"


AccountHandler = Callable[[web.Request, Account], Awaitable[web.StreamResponse]]


def with_account(handler: AccountHandler) -> Handler:
    """Hands `handler` the path's `{account_id}` account, or answers StackOne's 404."""

    @functools.wraps(handler)
    async def found(request: web.Request) -> web.StreamResponse:
        account_id = request.match_info["account_id"]
        account = emulator_state(request).accounts.get(account_id)
        if account is None:
            return stackone_error(404, f"Account {account_id} not found")
        return await handler(request, account)

    return found
