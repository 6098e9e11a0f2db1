"""Async client of the StackOne endpoints used here: connect sessions and accounts.

Pooled httpx transports (one for callers, one for background work) that requests go to
directly, HTTP Basic auth with the API key as the user name, explicit timeouts, and a
`deadline` on every call (the seconds the caller has left) that bounds the whole call,
retries included. Idempotent calls are retried on outages, 5xx, 408 and 429 with jittered
exponential backoff, honouring `Retry-After` but never waiting past the deadline.

With a `RateBudget`, every HTTP attempt (retries included) first takes a slot of it at
the call's `priority`, waiting at most the time left before the deadline, and a 429 from
StackOne pauses the budget's background classes.
"""

from __future__ import annotations

import asyncio
import base64
import random
import string
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import orjson
from pydantic import BaseModel, ValidationError

from service.stackone.budget import Priority, RateBudget
from service.stackone.errors import (
    BudgetExhausted,
    StackOneAPIError,
    StackOneError,
    StackOneRateLimited,
    StackOneServerError,
    StackOneTimeout,
    StackOneUnavailable,
    error_for_status,
)
from service.stackone.models import (
    AccountListQuery,
    ConnectSession,
    ConnectSessionCreate,
    LinkedAccount,
)
from service.tracing import OFF, Tracing, traced_budget_wait

DEFAULT_TIMEOUT = httpx.Timeout(connect=3.0, read=10.0, write=10.0, pool=3.0)
BACKOFF_BASE = 0.1
BACKOFF_CAP = 2.0
BACKGROUND_CONNECTIONS = 16  # verification and reconciliation share these
# What StackOne sends is untrusted too: every answer is bounded before it is parsed.
MAX_RESPONSE_BYTES = 8 * 1024 * 1024  # a page of 100 accounts is about 100 KB
MAX_ERROR_BODY = 16 * 1024
MAX_MESSAGE = 300
MAX_RETRY_AFTER = 300.0
MAX_REQUEST_TARGET_BYTES = 8000
"""Bytes of a request's path and query once encoded: RFC 9110 (section 4.1) asks every
HTTP party to take request targets of 8,000 bytes; past that a server may refuse them
(aiohttp, the emulator's, past 8,190 bytes of request line) and httpx itself past 64 KiB."""
LIST_PATH = "/accounts"
_FORM_UNENCODED = (string.ascii_letters + string.digits + "_.-~ ").encode()
_RETRYABLE = (StackOneUnavailable, StackOneServerError, StackOneRateLimited)
_ModelT = TypeVar("_ModelT", bound=BaseModel)
Observer = Callable[[str, str, float], None]
"""Called after each HTTP attempt with (endpoint, HTTP status or error name, seconds)."""


def retry_after_seconds(value: str, now: datetime | None = None) -> float | None:
    """StackOne's `Retry-After` (seconds or an HTTP date) as seconds in [0, MAX_RETRY_AFTER].

    Anything else (negative, NaN, infinite, unparsable) is ignored: the backoff applies.
    """
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:
        return None
    seconds = (moment - (now or datetime.now(UTC))).total_seconds()
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


def _bounded(text: str) -> str:
    """StackOne's text as it may appear in our errors: one line, at most MAX_MESSAGE chars."""
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def _error_message(status: int, reason: str, content: bytes) -> tuple[str, dict[str, Any] | None]:
    fallback = _bounded(reason) if reason else f"HTTP {status}"
    if len(content) > MAX_ERROR_BODY:
        return fallback, None  # too large to keep or pass on
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return fallback, None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return _bounded(body["message"]), body
    return fallback, None


def list_target_bytes(query: AccountListQuery) -> int:
    """Bytes of the request target (`/accounts?…`, after any path of the base URL) that
    `list_accounts(query)` sends, counted without building it (a third of a megabyte at
    the filters' bounds)."""
    params = query.params()
    pairs = sum(_form_bytes(key) + 1 + _form_bytes(str(value)) for key, value in params)
    return len(LIST_PATH) + 1 + pairs + len(params) - 1


def _form_bytes(text: str) -> int:
    # httpx encodes a query as urllib's urlencode does: UTF-8, then each byte but the
    # unreserved ones as %XX, a space as '+'.
    raw = text.encode()
    return len(raw) + 2 * len(raw.translate(None, _FORM_UNENCODED))


_FIXED_PATHS = ("/connect_sessions", "/connect_sessions/authenticate", LIST_PATH)
"""The paths without an id in them, whose URLs are parsed once."""


def _basic_auth(api_key: str) -> str:
    """HTTP Basic credentials with the API key as the user name, as StackOne takes them."""
    return "Basic " + base64.b64encode(f"{api_key}:".encode()).decode("ascii")


def environment_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (`HTTPS_PROXY` and the like, `NO_PROXY`
    honoured), which `httpx.AsyncClient` would have used."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parts.scheme) or proxies.get("all")


class StackOneClient:
    """Calls the StackOne API; raises the errors of `service.stackone.errors`."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: httpx.Timeout | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_retries: int = 2,
        observer: Observer | None = None,
        budget: RateBudget | None = None,
        tracing: Tracing = OFF,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._observer = observer
        self._budget = budget
        self._max_retries = max_retries
        self._tracer = tracing.tracer() if tracing.enabled else None

        def pool(connections: int) -> httpx.AsyncBaseTransport:
            limits = httpx.Limits(
                max_connections=connections, max_keepalive_connections=connections
            )
            own = transport or httpx.AsyncHTTPTransport(
                limits=limits, proxy=environment_proxy(self.base_url)
            )
            return tracing.http_transport(own, limits) or own

        # Callers' requests never queue behind background ones for a connection: the
        # budget orders slots, and separate pools keep that order on the wire too.
        self._http = pool(100)
        self._background_http = pool(BACKGROUND_CONNECTIONS)
        # Requests go straight to the pools: what `httpx.AsyncClient` would do around each
        # (merge headers, base URL, auth and timeout; cookies; redirects; hooks) is the same
        # for every call, or unused, and cost as much as a third of a CreateSession.
        self._headers = httpx.Headers(
            {
                "accept": "application/json",
                "accept-encoding": "gzip, deflate",
                "user-agent": "stackone-connect/0.1",
                "authorization": _basic_auth(api_key),
            }
        )
        self._json_headers = httpx.Headers({**self._headers, "content-type": "application/json"})
        self._timeout = (timeout or DEFAULT_TIMEOUT).as_dict()
        self._urls = {path: httpx.URL(self.base_url + path) for path in _FIXED_PATHS}

    def __repr__(self) -> str:
        return f"StackOneClient(base_url={self.base_url!r})"

    async def __aenter__(self) -> StackOneClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the connection pools."""
        await self._http.aclose()
        if self._background_http is not self._http:  # one given transport serves both
            await self._background_http.aclose()

    async def create_connect_session(
        self,
        request: ConnectSessionCreate,
        *,
        deadline: float | None = None,
        priority: Priority = Priority.CALLER,
    ) -> ConnectSession:
        """Creates a connect session (not retried: each call makes a new session)."""
        data = await self._call(
            "POST /connect_sessions",
            "/connect_sessions",
            json=request.body(),
            deadline=deadline,
            priority=priority,
            idempotent=False,
        )
        return self._parse(ConnectSession, data)

    async def authenticate_connect_session(
        self, token: str, *, deadline: float | None = None, priority: Priority = Priority.CALLER
    ) -> ConnectSession:
        """Returns the connect session a token belongs to."""
        data = await self._call(
            "POST /connect_sessions/authenticate",
            "/connect_sessions/authenticate",
            json={"token": token},
            deadline=deadline,
            priority=priority,
            idempotent=False,
        )
        return self._parse(ConnectSession, data)

    async def get_account(
        self,
        account_id: str,
        *,
        deadline: float | None = None,
        priority: Priority = Priority.CALLER,
    ) -> LinkedAccount:
        """Fetches one linked account."""
        data = await self._call(
            "GET /accounts/{id}",
            self._account_path(account_id),
            deadline=deadline,
            priority=priority,
        )
        return self._parse(LinkedAccount, data)

    async def delete_account(
        self,
        account_id: str,
        *,
        deadline: float | None = None,
        priority: Priority = Priority.CALLER,
    ) -> LinkedAccount:
        """Deletes one linked account and returns it."""
        data = await self._call(
            "DELETE /accounts/{id}",
            self._account_path(account_id),
            deadline=deadline,
            priority=priority,
        )
        return self._parse(LinkedAccount, data)

    async def list_accounts(
        self,
        query: AccountListQuery,
        *,
        deadline: float | None = None,
        priority: Priority = Priority.CALLER,
    ) -> list[LinkedAccount]:
        """Fetches one page of linked accounts (a bare array or `{"data": [...]}`).

        Raises ValueError, before any call, for a query whose `list_target_bytes` is over
        MAX_REQUEST_TARGET_BYTES: callers check their filters against it first.
        """
        if (size := list_target_bytes(query)) > MAX_REQUEST_TARGET_BYTES:
            raise ValueError(f"GET /accounts would take {size} bytes of URL")
        data = await self._call(
            "GET /accounts",
            LIST_PATH,
            params=query.params(),
            deadline=deadline,
            priority=priority,
        )
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise StackOneUnavailable("StackOne answered GET /accounts with something not a list")
        return [self._parse(LinkedAccount, item) for item in data]

    @staticmethod
    def _account_path(account_id: str) -> str:
        # Percent-encode everything, '/' included, so an id can never change the path;
        # ids of dots alone would still be dot segments, so their dots are encoded too.
        encoded = quote(account_id, safe="")
        return "/accounts/" + (
            encoded.replace(".", "%2E") if not account_id.strip(".") else encoded
        )

    @staticmethod
    def _parse(model: type[_ModelT], data: Any) -> _ModelT:
        try:
            return model.model_validate(data)
        except ValidationError as error:
            first = error.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(part) for part in first["loc"]) or "the body"
            raise StackOneUnavailable(
                f"StackOne sent a {model.__name__} this client cannot read "
                f"({error.error_count()} problem(s); {where}: {_bounded(first['msg'])})"
            ) from error

    async def _call(
        self,
        endpoint: str,
        path: str,
        *,
        deadline: float | None,
        priority: Priority,
        idempotent: bool = True,
        json: Any = None,
        params: Any = None,
    ) -> Any:
        loop = asyncio.get_running_loop()
        ends_at = None if deadline is None else loop.time() + deadline
        attempt = 0
        while True:
            try:
                return await self._budgeted(
                    endpoint, path, ends_at, priority, json=json, params=params
                )
            except BudgetExhausted:
                raise  # it already waited as long as the deadline allows
            except _RETRYABLE as error:
                if not idempotent or attempt >= self._max_retries:
                    raise
                delay = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))
                retry_after = getattr(error, "retry_after", None)
                if retry_after is not None:
                    delay = max(delay, retry_after)
                if ends_at is not None and loop.time() + delay >= ends_at:
                    raise  # waiting would pass the caller's deadline
                await asyncio.sleep(delay)
                attempt += 1

    async def _budgeted(
        self,
        endpoint: str,
        path: str,
        ends_at: float | None,
        priority: Priority,
        *,
        json: Any,
        params: Any,
    ) -> Any:
        """One attempt, holding a slot of the budget from its start to its completion."""
        loop = asyncio.get_running_loop()
        remaining = None if ends_at is None else ends_at - loop.time()
        if self._budget is None or (remaining is not None and remaining <= 0):
            # (With no time left the attempt fails before sending: it spends no slot.)
            return await self._observed(
                endpoint, path, remaining, priority, json=json, params=params
            )
        async with self._slot(self._budget, priority, remaining):
            remaining = None if ends_at is None else ends_at - loop.time()
            try:
                return await self._observed(
                    endpoint, path, remaining, priority, json=json, params=params
                )
            except StackOneRateLimited as error:
                self._budget.upstream_rate_limited(error.retry_after)
                raise

    def _slot(
        self, budget: RateBudget, priority: Priority, timeout: float | None
    ) -> AbstractAsyncContextManager[None]:
        """A slot of `budget`; traced, its wait is a span of the call's trace."""
        slot = budget.slot(priority, timeout)
        if self._tracer is None:
            return slot
        return traced_budget_wait(self._tracer, slot, priority.name.lower())

    async def _observed(
        self,
        endpoint: str,
        path: str,
        remaining: float | None,
        priority: Priority,
        *,
        json: Any,
        params: Any,
    ) -> Any:
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await self._attempt(
                endpoint, path, remaining, priority, json=json, params=params
            )
        except StackOneAPIError as error:
            outcome = str(error.status_code)
            raise
        except StackOneError as error:
            outcome = type(error).__name__
            raise
        finally:
            if self._observer is not None:
                self._observer(endpoint, outcome, time.perf_counter() - started)

    async def _attempt(
        self,
        endpoint: str,
        path: str,
        remaining: float | None,
        priority: Priority,
        *,
        json: Any,
        params: Any,
    ) -> Any:
        method = endpoint.partition(" ")[0]
        http = self._http if priority == Priority.CALLER else self._background_http
        if remaining is not None and remaining <= 0:
            raise StackOneTimeout(f"no time left for {method} {path} before the deadline")
        try:
            async with asyncio.timeout(remaining):
                status, reason, headers, content = await self._exchange(
                    http, method, path, json=json, params=params
                )
        except (TimeoutError, httpx.TimeoutException) as error:
            raise StackOneTimeout(
                f"StackOne did not answer {method} {path} in time ({type(error).__name__})"
            ) from error
        except httpx.TransportError as error:
            raise StackOneUnavailable(
                f"could not reach StackOne at {self.base_url}: {type(error).__name__}: {error}"
            ) from error
        if 200 <= status < 300:
            try:
                return orjson.loads(content)
            except orjson.JSONDecodeError as error:  # also past orjson's nesting limit
                raise StackOneUnavailable(
                    f"StackOne answered {method} {path} with a body that is not JSON "
                    f"this client reads ({_bounded(str(error))})"
                ) from error
        message, body = _error_message(status, reason, content)
        raise error_for_status(
            status,
            message,
            body=body,
            retry_after=retry_after_seconds(headers.get("retry-after", "")),
        )

    def _request(self, method: str, path: str, *, json: Any, params: Any) -> httpx.Request:
        """The request, from the headers, URLs and timeout merged once per client."""
        url = self._urls.get(path) or httpx.URL(self.base_url + path)
        return httpx.Request(
            method,
            url.copy_merge_params(params) if params else url,
            content=None if json is None else orjson.dumps(json),
            headers=self._headers if json is None else self._json_headers,
            extensions={"timeout": self._timeout},
        )

    async def _exchange(
        self, http: httpx.AsyncBaseTransport, method: str, path: str, *, json: Any, params: Any
    ) -> tuple[int, str, httpx.Headers, bytes]:
        """One request; the answer's body is read up to MAX_RESPONSE_BYTES and no further."""
        request = self._request(method, path, json=json, params=params)
        response = await http.handle_async_request(request)
        response.request = request
        try:
            content = bytearray()
            async for chunk in response.aiter_bytes():
                content += chunk
                if len(content) > MAX_RESPONSE_BYTES:
                    raise StackOneUnavailable(
                        f"StackOne answered {method} {path} with more than "
                        f"{MAX_RESPONSE_BYTES} bytes; refusing to read on"
                    )
        finally:
            await response.aclose()
        return response.status_code, response.reason_phrase, response.headers, bytes(content)
