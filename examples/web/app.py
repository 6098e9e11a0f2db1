"""An app's own backend for linking its customers' tools: what a user of stackone-connect
writes, in one small aiohttp module.

    GET  /                             the page (static/index.html)
    GET  /vendor/stackone-hub.js       StackOne's Hub web component, from node_modules
    POST /api/connect-session          CreateSession for the signed-in customer: a fresh
                                       token for the Hub, and an Auth Link; with
                                       {"account_id": ...}, to reconnect that account
    GET  /api/accounts                 ListAccounts from the registry: the customer's
                                       accounts, and which need reconnecting
    GET  /api/accounts/{id}            GetAccount: is the new link working?
    GET  /api/events                   StreamAccountEvents as server-sent events

The customer is whoever is signed in; here a fixed one (`Config.owner_id`), set on the
server because a browser must never choose whose accounts it links.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import orjson
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message

from service.tracing import OFF, Tracing
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from stackone_connect_client import Client, Connection, EventWatch, Resynced, SnapshotEnd

HERE = Path(__file__).parent
HUB_SCRIPT = HERE / "node_modules" / "@stackone" / "hub" / "dist" / "webcomponent.js"
STACKONE_API = "https://api.stackone.com"
AUTH_LINK_SECONDS = 5 * 24 * 3600  # how long StackOne's connect guide says an Auth Link is valid

# What an account's status means for the customer who just linked it.
STATUS_MEANINGS = {
    "ACCOUNT_STATUS_ACTIVE": "Linked and working: StackOne can read this account.",
    "ACCOUNT_STATUS_ERROR": "Linked, but StackOne cannot use it yet. Usually the credentials "
    "lack a permission at the provider: fix it there and link again.",
    "ACCOUNT_STATUS_INACTIVE": "Unlinked: link it again to use it.",
    "ACCOUNT_STATUS_EXPIRED": "The credentials StackOne holds expired: reconnect to enter "
    "new ones.",
    "ACCOUNT_STATUS_SUSPENDED": "Suspended at StackOne: it does not sync until it is "
    "re-enabled there.",
    "ACCOUNT_STATUS_ARCHIVED": "Archived at StackOne.",
}


@dataclass(frozen=True)
class Config:
    """Where the service and the Hub's API are, and who the signed-in customer is."""

    grpc_target: str = "127.0.0.1:50051"
    grpc_token: str | None = None
    hub_base_url: str = "http://127.0.0.1:8090"
    owner_id: str = "acme"
    owner_name: str = "Acme Inc"
    categories: tuple[str, ...] = ("hris",)

    @classmethod
    def from_environment(cls) -> Config:
        """The service's own variables: its address and token as its CLI reads them, and
        StackOne (with an API key) or else the bundled emulator for the Hub."""
        env = os.environ
        if env.get("STACKONE_CONNECT_API_KEY"):
            hub_base_url = env.get("STACKONE_CONNECT_BASE_URL", STACKONE_API)
        else:
            emulator = env.get("STACKONE_CONNECT_EMULATOR_ADDRESS", "127.0.0.1:8090")
            hub_base_url = f"http://{emulator}"
        return cls(
            grpc_target=env.get("STACKONE_CONNECT_TARGET", cls.grpc_target),
            grpc_token=env.get("STACKONE_CONNECT_TOKEN") or None,
            hub_base_url=env.get("EXAMPLE_HUB_BASE_URL", hub_base_url),
        )


# Statuses a customer fixes by linking the account again (a reconnect session).
RECONNECT_STATUSES = frozenset({pb.ACCOUNT_STATUS_ERROR, pb.ACCOUNT_STATUS_EXPIRED})
LIST_PAGE_SIZE = 100

CONFIG = web.AppKey("config", Config)
STUB: web.AppKey[pb_grpc.ConnectServiceAsyncStub] = web.AppKey("stub")
CLIENT = web.AppKey("client", Client)
TRACING = web.AppKey("tracing", Tracing)


def _as_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _metadata(request: web.Request) -> tuple[tuple[str, str], ...]:
    token = request.app[CONFIG].grpc_token
    return (("authorization", f"Bearer {token}"),) if token else ()


async def index(request: web.Request) -> web.FileResponse:
    """The page."""
    return web.FileResponse(HERE / "static" / "index.html")


async def hub_script(request: web.Request) -> web.StreamResponse:
    """The Hub's web component, served by the app itself (no CDN)."""
    if not HUB_SCRIPT.exists():
        raise web.HTTPServiceUnavailable(text="The Hub is not installed: run `make install`.")
    return web.FileResponse(HUB_SCRIPT, headers={"content-type": "text/javascript"})


async def connect_session(request: web.Request) -> web.Response:
    """A fresh session for the signed-in customer: the Hub's token and an Auth Link; bound
    to one of the customer's accounts when the body names it (a reconnect); lasting 5 days
    when the body says `auth_link` (a link to send by e-mail)."""
    config = request.app[CONFIG]
    try:
        body = await request.json() if request.can_read_body else {}
    except ValueError:
        return web.json_response({"error": "the body is not JSON"}, status=400)
    body = body if isinstance(body, dict) else {}
    account_id = str(body.get("account_id") or "")
    try:
        if account_id and not await _owns(request, account_id):
            return web.json_response({"error": "not one of your accounts"}, status=404)
        wanted = pb.CreateSessionRequest(
            origin_owner_id=config.owner_id,
            origin_owner_name=config.owner_name,
            categories=config.categories,
            account_id=account_id,
        )
        if body.get("auth_link") is True:  # it goes by e-mail: 5 days, StackOne's guide's figure
            wanted.expires_in = AUTH_LINK_SECONDS
        session = await request.app[STUB].CreateSession(
            wanted,
            metadata=_metadata(request),
            timeout=10,
        )
    except grpc.aio.AioRpcError as error:
        return web.json_response({"error": error.details()}, status=502)
    return web.json_response(
        {
            "token": session.token,
            "auth_link_url": session.auth_link_url,
            "expires_at": session.expires_at.ToJsonString(),
            "hub_base_url": config.hub_base_url,
        }
    )


async def _owns(request: web.Request, account_id: str) -> bool:
    """Whether the signed-in customer owns the account (a browser names it, so check)."""
    try:
        found = await request.app[STUB].GetAccount(
            pb.GetAccountRequest(account_id=account_id, read_from=pb.READ_FROM_REGISTRY),
            metadata=_metadata(request),
            timeout=10,
        )
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return False
        raise
    return found.origin_owner_id == request.app[CONFIG].owner_id


def _meaning(found: pb.Account) -> str:
    status = pb.AccountStatus.Name(found.status)
    return STATUS_MEANINGS.get(status, f"StackOne reports '{found.raw_status}'.")


async def _registry_listing(request: web.Request) -> pb.ListAccountsResponse:
    """Every page of the customer's accounts from the registry, with the first page's
    cursor and source."""
    listing = pb.ListAccountsRequest(
        origin_owner_ids=[request.app[CONFIG].owner_id],
        page_size=LIST_PAGE_SIZE,
        read_from=pb.READ_FROM_REGISTRY,
    )
    found = pb.ListAccountsResponse()
    while True:
        page = await request.app[STUB].ListAccounts(
            listing, metadata=_metadata(request), timeout=10
        )
        if page.answered_from != found.answered_from:
            # The first page, or StackOne's first page after a fall-back mid-listing.
            found = pb.ListAccountsResponse(cursor=page.cursor, answered_from=page.answered_from)
        found.accounts.extend(page.accounts)
        if not page.next_page_token:
            return found
        listing.page_token = page.next_page_token


async def accounts(request: web.Request) -> web.Response:
    """The customer's accounts as the service's registry holds them (no StackOne call; from
    StackOne while the registry is not complete, and then it says so)."""
    try:
        page = await _registry_listing(request)
    except grpc.aio.AioRpcError as error:
        return web.json_response({"error": error.details()}, status=502)
    answered_from = "registry" if page.answered_from == pb.READ_FROM_REGISTRY else "stackone"
    return web.json_response(
        {
            "accounts": [
                {
                    "account": _as_json(one),
                    "meaning": _meaning(one),
                    "reconnect": one.status in RECONNECT_STATUSES,
                }
                for one in page.accounts
            ],
            "answered_from": answered_from,
            "cursor": page.cursor,  # the listing reflects events up to it; empty from StackOne
        }
    )


async def account(request: web.Request) -> web.Response:
    """The account as StackOne reports it now, with what its status means."""
    try:
        found = await request.app[STUB].GetAccount(
            pb.GetAccountRequest(account_id=request.match_info["account_id"]),
            metadata=_metadata(request),
            timeout=10,
        )
    except grpc.aio.AioRpcError as error:
        not_found = error.code() == grpc.StatusCode.NOT_FOUND
        return web.json_response({"error": error.details()}, status=404 if not_found else 502)
    if found.origin_owner_id != request.app[CONFIG].owner_id:
        return web.json_response({"error": "not one of your accounts"}, status=404)
    return web.json_response({"account": _as_json(found), "meaning": _meaning(found)})


def _server_sent(event: str, data: object = None, cursor: str | None = None) -> bytes:
    """One server-sent event. Its id is the stream's cursor, which a reconnecting
    EventSource sends back as Last-Event-ID: the stream then resumes after it."""
    lines = f"event: {event}\ndata: {orjson.dumps(data).decode()}\n"
    if cursor is not None:
        lines = f"id: {cursor}\n{lines}"
    return (lines + "\n").encode()


def _watch(request: web.Request) -> EventWatch:
    """The customer's events, from now or after the page's Last-Event-ID; the client
    library resumes across the service's restarts by itself."""
    return request.app[CLIENT].watch(
        origin_owner_ids=[request.app[CONFIG].owner_id],
        after_cursor=request.headers.get("last-event-id") or None,
        bookmarks=True,
    )


async def _follow(watch: EventWatch, response: web.StreamResponse) -> None:
    async for item in watch:
        match item:
            case pb.AccountEvent():
                await response.write(_server_sent("account", _as_json(item), item.cursor))
            case pb.Bookmark() | SnapshotEnd():
                # The cursor read up to; the first one says the stream is attached.
                await response.write(_server_sent("bookmark", cursor=item.cursor))
            case Resynced():
                # The page's cursor is older than the service keeps: events were missed,
                # so the page reloads its accounts; their current state follows here too.
                await response.write(_server_sent("resynced", {"message": item.message}))
            case pb.Account():
                await response.write(_server_sent("snapshot", _as_json(item)))


async def events(request: web.Request) -> web.StreamResponse:
    """The customer's account events, live, as server-sent events."""
    response = web.StreamResponse(
        headers={"content-type": "text/event-stream", "cache-control": "no-cache"}
    )
    await response.prepare(request)
    try:
        await _follow(_watch(request), response)
    except grpc.aio.AioRpcError as error:  # retrying cannot help (e.g. a bad token)
        with contextlib.suppress(ConnectionResetError):
            await response.write(_server_sent("failed", {"error": error.details()}))
    except ConnectionResetError:
        pass  # the page went away
    return response


async def _grpc_channel(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    connection = Connection(target=config.grpc_target, token=config.grpc_token)
    async with connection.channel(app[TRACING].grpc_client_interceptors()) as channel:
        app[STUB] = pb_grpc.ConnectServiceStub(channel)
        app[CLIENT] = Client.on_stub(app[STUB], token=config.grpc_token)
        yield


def build_app(config: Config, tracing: Tracing = OFF) -> web.Application:
    """The example app's backend. Run it with `handler_cancellation=True`, so that an event
    stream ends as soon as its page goes away. With `tracing` on, each request is a span
    whose context its calls to the service carry on (`traceparent` metadata)."""
    app = web.Application(middlewares=tracing.aiohttp_middlewares())
    app[CONFIG] = config
    app[TRACING] = tracing
    app.cleanup_ctx.append(_grpc_channel)
    app.router.add_get("/", index)
    app.router.add_get("/vendor/stackone-hub.js", hub_script)
    app.router.add_static("/static", HERE / "static")
    app.router.add_post("/api/connect-session", connect_session)
    app.router.add_get("/api/accounts", accounts)
    app.router.add_get("/api/accounts/{account_id}", account)
    app.router.add_get("/api/events", events)
    return app
