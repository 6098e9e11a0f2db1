"""Async client of the StackOne endpoints used here: connect sessions and accounts.

One pooled `httpx.AsyncClient` per instance, HTTP Basic auth with the API key as the
user name, explicit timeouts, and a `deadline` on every call (the seconds the caller has
left) that bounds the whole call, retries included. Idempotent calls are retried on
outages, 5xx, 408 and 429 with jittered exponential backoff, honouring `Retry-After`
but never waiting past the deadline.

With a `RateBudget`, every HTTP attempt (retries included) first takes a slot of it at
the call's `priority`, waiting at most the time left before the deadline, and a 429 from
StackOne pauses the budget's background classes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
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

DEFAULT_TIMEOUT = httpx.Timeout(connect=3.0, read=10.0, write=10.0, pool=3.0)
BACKOFF_BASE = 0.1
BACKOFF_CAP = 2.0
BACKGROUND_CONNECTIONS = 16  # verification and reconciliation share these
_RETRYABLE = (StackOneUnavailable, StackOneServerError, StackOneRateLimited)
_ModelT = TypeVar("_ModelT", bound=BaseModel)
Observer = Callable[[str, str, float], None]
"""Called after each HTTP attempt with (endpoint, HTTP status or error name, seconds)."""


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _error_message(response: httpx.Response) -> tuple[str, dict[str, Any] | None]:
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase or f"HTTP {response.status_code}", None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"], body
    return response.reason_phrase or f"HTTP {response.status_code}", None


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
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._observer = observer
        self._budget = budget
        self._max_retries = max_retries

        def pool(connections: int) -> httpx.AsyncClient:
            return httpx.AsyncClient(
                base_url=self.base_url,
                auth=httpx.BasicAuth(api_key, ""),
                timeout=timeout or DEFAULT_TIMEOUT,
                transport=transport,
                headers={"accept": "application/json", "user-agent": "stackone-connect/0.1"},
                limits=httpx.Limits(
                    max_connections=connections, max_keepalive_connections=connections
                ),
            )

        # Callers' requests never queue behind background ones for a connection: the
        # budget orders slots, and separate pools keep that order on the wire too.
        self._http = pool(100)
        self._background_http = pool(BACKGROUND_CONNECTIONS)

    def __repr__(self) -> str:
        return f"StackOneClient(base_url={self.base_url!r})"

    async def __aenter__(self) -> StackOneClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the connection pools."""
        await self._http.aclose()
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
        """Fetches one page of linked accounts (a bare array or `{"data": [...]}`)."""
        data = await self._call(
            "GET /accounts",
            "/accounts",
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
        # Percent-encode everything, '/' included, so an id can never change the path.
        return "/accounts/" + quote(account_id, safe="")

    @staticmethod
    def _parse(model: type[_ModelT], data: Any) -> _ModelT:
        try:
            return model.model_validate(data)
        except ValidationError as error:
            raise StackOneUnavailable(
                f"StackOne sent a {model.__name__} this client cannot read: {error}"
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
        async with self._budget.slot(priority, remaining):
            remaining = None if ends_at is None else ends_at - loop.time()
            try:
                return await self._observed(
                    endpoint, path, remaining, priority, json=json, params=params
                )
            except StackOneRateLimited as error:
                self._budget.upstream_rate_limited(error.retry_after)
                raise

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
                response = await http.request(method, path, json=json, params=params)
        except (TimeoutError, httpx.TimeoutException) as error:
            raise StackOneTimeout(
                f"StackOne did not answer {method} {path} in time ({type(error).__name__})"
            ) from error
        except httpx.TransportError as error:
            raise StackOneUnavailable(
                f"could not reach StackOne at {self.base_url}: {type(error).__name__}: {error}"
            ) from error
        if response.is_success:
            try:
                return response.json()
            except ValueError as error:
                raise StackOneUnavailable(
                    f"StackOne answered {method} {path} with a body that is not JSON"
                ) from error
        message, body = _error_message(response)
        raise error_for_status(
            response.status_code, message, body=body, retry_after=_retry_after(response)
        )
