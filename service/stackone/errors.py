"""Errors raised by the StackOne client, one tree so callers catch at the right depth.

```
StackOneError
├── StackOneUnavailable        no usable answer: connection failed, timed out, unreadable
│   └── StackOneTimeout        the call would outlive its deadline
└── StackOneAPIError           StackOne answered with an error status
    ├── StackOneBadRequest     400, 422
    ├── StackOneAuthError      401, 403
    ├── StackOneNotFound       404
    ├── StackOneConflict       409
    ├── StackOneRateLimited    429
    │   └── BudgetExhausted    429 of our own: this service's StackOne budget is spent
    │       └── ClientBudgetExhausted   … or the calling client's own share of it
    └── StackOneServerError    408, 5xx and any other unexpected status
```
"""

from __future__ import annotations

from typing import Any

API_KEY_VARIABLE = "STACKONE_CONNECT_API_KEY"
RATE_LIMIT_VARIABLE = "STACKONE_CONNECT_RATE_LIMIT"


class StackOneError(Exception):
    """Any failure of a StackOne call.

    Attributes:
        retry_after: seconds StackOne (or our own budget) asked us to wait before the
            next attempt (Retry-After); None when it said nothing.
        attempts: tries the failed call made, set by the client (a try our own budget
            refused sent nothing).
    """

    retry_after: float | None = None
    attempts: int = 0


class StackOneUnavailable(StackOneError):
    """StackOne could not be reached or its answer could not be used."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class StackOneTimeout(StackOneUnavailable):
    """The call did not finish within its deadline."""


class StackOneAPIError(StackOneError):
    """StackOne answered with an error status.

    Attributes:
        status_code: the HTTP status.
        message: StackOne's own message, or the HTTP reason.
        body: the parsed error body, when it was JSON.
    """

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        body: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status_code = status_code
        self.message = message
        self.body = body
        self.retry_after = retry_after
        super().__init__(self._describe())

    def _describe(self) -> str:
        return f"StackOne answered {self.status_code}: {self.message}"


class StackOneBadRequest(StackOneAPIError):
    """StackOne refused the request's content (400, 422)."""


class StackOneAuthError(StackOneAPIError):
    """StackOne refused the API key (401) or its permissions (403)."""

    def _describe(self) -> str:
        if self.status_code == 403:
            return (
                f"StackOne refused access with this API key (403 {self.message}): check the "
                f"key's project and permissions in {API_KEY_VARIABLE}"
            )
        return (
            f"StackOne rejected the API key ({self.status_code} {self.message}): "
            f"check {API_KEY_VARIABLE}"
        )


class StackOneNotFound(StackOneAPIError):
    """The resource does not exist in StackOne (404)."""

    def _describe(self) -> str:
        return f"not found in StackOne: {self.message}"


class StackOneConflict(StackOneAPIError):
    """StackOne reported a conflict (409)."""


class StackOneRateLimited(StackOneAPIError):
    """StackOne's rate limit was reached (429); see `retry_after`."""


class BudgetExhausted(StackOneRateLimited):
    """This service's own StackOne budget has no slot for the call within its deadline.

    No request was sent; StackOne would have refused it. `retry_after` is the seconds
    until a slot frees.
    """

    def __init__(self, retry_after: float) -> None:
        super().__init__(
            429,
            f"this service's StackOne call budget ({RATE_LIMIT_VARIABLE}) is spent; a slot "
            f"frees in {retry_after:.1f}s",
            retry_after=retry_after,
        )

    def _describe(self) -> str:
        return self.message


class ClientBudgetExhausted(BudgetExhausted):
    """The calling client has made its own calls per minute (its clients-file entry's
    `calls_per_minute`); other clients go on. No request was sent."""

    def __init__(self, client: str, calls_per_minute: int, retry_after: float) -> None:
        super().__init__(retry_after)
        self.client = client
        self.message = (
            f"client '{client}' has made its {calls_per_minute} StackOne calls per minute "
            f"(calls_per_minute in the clients file); one frees in {retry_after:.1f}s"
        )
        self.args = (self.message,)


class StackOneServerError(StackOneAPIError):
    """StackOne failed (5xx), timed out on its side (408), or sent an unexpected status."""


_BY_STATUS: dict[int, type[StackOneAPIError]] = {
    400: StackOneBadRequest,
    422: StackOneBadRequest,
    401: StackOneAuthError,
    403: StackOneAuthError,
    404: StackOneNotFound,
    409: StackOneConflict,
    429: StackOneRateLimited,
}


def error_for_status(
    status_code: int,
    message: str,
    *,
    body: dict[str, Any] | None = None,
    retry_after: float | None = None,
) -> StackOneAPIError:
    """The typed error of an HTTP error status."""
    kind = _BY_STATUS.get(status_code, StackOneServerError)
    return kind(status_code, message, body=body, retry_after=retry_after)
