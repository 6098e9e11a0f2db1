"""Async client of the StackOne endpoints used here: connect sessions, accounts and
connector profiles.

Two layers: each public method builds one `StackOneRequest` for `_send`, which runs its
attempts under the service's retry policy (`service.retry`); an attempt takes a slot of
the `RateBudget` at the call's priority, is observed (metrics), and sends one request over
pooled httpx transports (callers' and background), the API key as Basic auth user name.

Idempotent calls are retried on outages, timeouts, 5xx, 408 and 429 (not on our budget's
refusal: it already waited as long as the deadline allows), after the policy's jittered
exponential wait (0.1 s, 0.2 s, … at most BACKOFF_CAP, plus up to 0.1 s) or StackOne's
`Retry-After` if longer; a 429 also pauses the budget's background classes. Worst case:

- HTTP requests per call: `max_retries + 1` (3 by default), or the attempts of the policy
  a call brings (a verifier look-up: 8, `service.events.verify.LOOKUP_ATTEMPTS`); creating
  or authenticating a connect session sends one.
- Time: the call's `deadline`, waits included: a wait that would pass it ends the call at
  once with the last error, so the longest wait is min(MAX_RETRY_AFTER = 300 s, deadline);
  `attempt_timeout` bounds each attempt within it. Without a deadline: each attempt's
  DEFAULT_TIMEOUT and waits of at most MAX_RETRY_AFTER.
"""

from __future__ import annotations

import asyncio
import base64
import math
import string
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import orjson
from pydantic import BaseModel, ValidationError

from service.retry import RetryPolicy
from service.stackone.budget import Priority, RateBudget
from service.stackone.change import UPSTREAM_CHANGE, NoAnswer
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
    ConnectorProfileQuery,
    ConnectorProfilesPage,
    ConnectSession,
    ConnectSessionCreate,
    LinkedAccount,
)
from service.tracing import OFF, Tracing, traced_budget_wait

DEFAULT_TIMEOUT = httpx.Timeout(connect=3.0, read=10.0, write=10.0, pool=3.0)
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
CONNECTOR_PROFILES_PATH = "/connector_profiles"
_FORM_UNENCODED = (string.ascii_letters + string.digits + "_.-~ ").encode()
_RETRYABLE = (StackOneUnavailable, StackOneServerError, StackOneRateLimited)
_ModelT = TypeVar("_ModelT", bound=BaseModel)
Observer = Callable[[str, str, float], None]
"""Called after each HTTP attempt with (endpoint, HTTP status or error name, seconds)."""


@dataclass(frozen=True, slots=True)
class StackOneRequest:
    """One call, as the layers below the public methods see it."""

    operation: str  # its name in metrics, "GET /accounts/{id}": the path without ids
    method: str
    path: str
    priority: Priority
    deadline: float | None  # seconds for the whole call, waits included (None: no bound)
    attempt_timeout: float | None = None  # seconds for one attempt (None: the deadline's)
    retry: RetryPolicy | None = None  # the call's own attempts and waits (None: the client's)
    idempotent: bool = True  # retried; a call that creates something is sent once
    json: Any = None
    params: tuple[tuple[str, str | int], ...] = ()


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


_FIXED_PATHS = (
    "/connect_sessions",
    "/connect_sessions/authenticate",
    LIST_PATH,
    CONNECTOR_PROFILES_PATH,
)
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
        self._policy = RetryPolicy(attempts=max_retries + 1, longest_wait=BACKOFF_CAP)
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
        data = await self._send(
            StackOneRequest(
                "POST /connect_sessions", "POST", "/connect_sessions", priority, deadline,
                idempotent=False, json=request.body(),
            )
        )  # fmt: skip
        return self._parse(ConnectSession, data)

    async def authenticate_connect_session(
        self, token: str, *, deadline: float | None = None, priority: Priority = Priority.CALLER
    ) -> ConnectSession:
        """Returns the connect session a token belongs to (no RPC needs it; the contract
        tests check that the client speaks StackOne's form of it)."""
        path = "/connect_sessions/authenticate"
        data = await self._send(
            StackOneRequest(
                f"POST {path}", "POST", path, priority, deadline,
                idempotent=False, json={"token": token},
            )
        )  # fmt: skip
        return self._parse(ConnectSession, data)

    async def get_connect_session(
        self,
        session_id: int,
        *,
        deadline: float | None = None,
        priority: Priority = Priority.CALLER,
    ) -> ConnectSession:
        """Fetches a connect session with its `latest_connection_attempt` (StackOne's ids
        are numbers, so the path needs no encoding)."""
        data = await self._send(
            StackOneRequest(
                "GET /connect_sessions/{id}", "GET", f"/connect_sessions/{session_id}", priority,
                deadline,
            )
        )  # fmt: skip
        return self._parse(ConnectSession, data)

    async def list_connector_profiles(
        self,
        query: ConnectorProfileQuery,
        *,
        deadline: float | None = None,
        priority: Priority = Priority.CALLER,
    ) -> ConnectorProfilesPage:
        """Fetches one page of the project's connector profiles."""
        data = await self._send(
            StackOneRequest(
                f"GET {CONNECTOR_PROFILES_PATH}", "GET", CONNECTOR_PROFILES_PATH, priority,
                deadline, params=tuple(query.params()),
            )
        )  # fmt: skip
        return self._parse(ConnectorProfilesPage, data)

    async def get_account(
        self,
        account_id: str,
        *,
        deadline: float | None = None,
        priority: Priority = Priority.CALLER,
        attempt_timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> LinkedAccount:
        """Fetches one linked account (`retry`: its attempts and waits, None: the
        client's; `attempt_timeout`: seconds each attempt may take, within `deadline`)."""
        data = await self._send(
            StackOneRequest(
                "GET /accounts/{id}", "GET", self._account_path(account_id), priority, deadline,
                attempt_timeout=attempt_timeout, retry=retry,
            )
        )  # fmt: skip
        return self._parse(LinkedAccount, data)

    async def delete_account(
        self,
        account_id: str,
        *,
        deadline: float | None = None,
        priority: Priority = Priority.CALLER,
    ) -> LinkedAccount:
        """Deletes one linked account and returns it."""
        path = self._account_path(account_id)
        data = await self._send(
            StackOneRequest("DELETE /accounts/{id}", "DELETE", path, priority, deadline)
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
        data = await self._send(
            StackOneRequest(
                "GET /accounts", "GET", LIST_PATH, priority, deadline, params=tuple(query.params())
            )
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

    async def _send(self, request: StackOneRequest) -> Any:
        """The call: its attempts under the retry policy, within its deadline (the first
        outside stamina's loop, which costs 60 µs to enter: `RetryPolicy.call`)."""
        loop = asyncio.get_running_loop()
        ends_at = None if request.deadline is None else loop.time() + request.deadline
        policy = request.retry or self._policy
        sent = 0

        async def attempt() -> Any:
            nonlocal sent
            sent += 1
            return await self._attempt(request, ends_at)

        def retry_wait(error: Exception) -> bool | float:
            if not request.idempotent or not isinstance(error, _RETRYABLE):
                return False  # a call that creates something, or a final answer
            if isinstance(error, BudgetExhausted):
                return False  # the budget already waited as long as it could
            wait = policy.wait(sent)
            if error.retry_after is not None:
                wait = max(wait, error.retry_after)
            if ends_at is not None and loop.time() + wait >= ends_at:
                return False  # waiting would pass the caller's deadline
            return wait

        try:
            return await policy.call(attempt, retry_wait)
        except StackOneError as error:
            error.attempts = sent
            raise

    async def _attempt(self, request: StackOneRequest, ends_at: float | None) -> Any:
        """One HTTP attempt, holding a slot of the budget from its start to its completion
        (a traced slot's wait is a span of the call's trace)."""
        budget = self._budget
        if budget is None or (ends_at is not None and _left(ends_at) <= 0):
            # (With no time left the attempt fails before sending: it spends no slot.)
            return await self._observed(request, ends_at)
        slot = budget.slot(request.priority, None if ends_at is None else _left(ends_at))
        if self._tracer is not None:
            slot = traced_budget_wait(self._tracer, slot, request.priority.name.lower())
        async with slot:
            try:
                return await self._observed(request, ends_at)
            except StackOneRateLimited as error:
                budget.upstream_rate_limited(error.retry_after)
                raise

    async def _observed(self, request: StackOneRequest, ends_at: float | None) -> Any:
        """The exchange, told to the observer as (operation, status or error, seconds)."""
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await self._exchange(request, ends_at)
        except StackOneError as error:
            status = error.status_code if isinstance(error, StackOneAPIError) else None
            outcome = type(error).__name__ if status is None else str(status)
            raise
        finally:
            if self._observer is not None:
                self._observer(request.operation, outcome, time.perf_counter() - started)

    async def _exchange(self, request: StackOneRequest, ends_at: float | None) -> Any:
        """Sends the request and reads its answer (up to MAX_RESPONSE_BYTES) as JSON, or
        raises the error it means; a request that changes something is marked sent, with
        its answer, in the call's `UPSTREAM_CHANGE` (for the audit trail)."""
        method, path = request.method, request.path
        left = math.inf if ends_at is None else _left(ends_at)
        if left <= 0:
            raise StackOneTimeout(f"no time left for {method} {path} before the deadline")
        timeout = min(left, request.attempt_timeout or math.inf)
        change = UPSTREAM_CHANGE.get() if method != "GET" else None
        if change is not None:
            change.asked = True
        answer: str = NoAnswer.CANCELLED.value
        try:
            async with asyncio.timeout(None if timeout == math.inf else timeout):
                response, content = await self._read(request)
            answer = str(response.status_code)
        except (TimeoutError, httpx.TimeoutException) as error:
            answer = NoAnswer.TIMEOUT.value
            raise StackOneTimeout(
                f"StackOne did not answer {method} {path} in time ({type(error).__name__})"
            ) from error
        except httpx.TransportError as error:
            answer = NoAnswer.UNREACHABLE.value
            raise StackOneUnavailable(
                f"could not reach StackOne at {self.base_url}: {type(error).__name__}: {error}"
            ) from error
        except StackOneUnavailable:
            answer = NoAnswer.UNREADABLE.value
            raise
        finally:
            if change is not None:
                change.answers.append(answer)
        if response.is_success:
            try:
                return orjson.loads(content)
            except orjson.JSONDecodeError as error:  # also past orjson's nesting limit
                raise StackOneUnavailable(
                    f"StackOne answered {method} {path} with a body that is not JSON "
                    f"this client reads ({_bounded(str(error))})"
                ) from error
        message, body = _error_message(response.status_code, response.reason_phrase, content)
        raise error_for_status(
            response.status_code,
            message,
            body=body,
            retry_after=retry_after_seconds(response.headers.get("retry-after", "")),
        )

    async def _read(self, request: StackOneRequest) -> tuple[httpx.Response, bytes]:
        """One exchange, from the headers, URLs and timeout merged once per client; the
        answer's body is read up to MAX_RESPONSE_BYTES and no further."""
        url = self._urls.get(request.path) or httpx.URL(self.base_url + request.path)
        sent = httpx.Request(
            request.method,
            url.copy_merge_params(request.params) if request.params else url,
            content=None if request.json is None else orjson.dumps(request.json),
            headers=self._headers if request.json is None else self._json_headers,
            extensions={"timeout": self._timeout},
        )
        http = self._http if request.priority == Priority.CALLER else self._background_http
        response = await http.handle_async_request(sent)
        response.request = sent
        try:
            content = bytearray()
            async for chunk in response.aiter_bytes():
                content += chunk
                if len(content) > MAX_RESPONSE_BYTES:
                    raise StackOneUnavailable(
                        f"StackOne answered {request.method} {request.path} with more than "
                        f"{MAX_RESPONSE_BYTES} bytes; refusing to read on"
                    )
        finally:
            await response.aclose()
        return response, bytes(content)


def _left(ends_at: float) -> float:
    """Seconds until `ends_at` on the loop's clock."""
    return ends_at - asyncio.get_running_loop().time()
