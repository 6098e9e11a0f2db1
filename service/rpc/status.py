"""How domain errors become gRPC statuses.

Servicers raise domain exceptions; `service.rpc.interceptor.CallInterceptor` turns each into
a canonical code, a message a person can act on, and `google.rpc` details where they help:

| raised                        | gRPC code           | details           |
|-------------------------------|---------------------|-------------------|
| InvalidRequest                | INVALID_ARGUMENT    | BadRequest        |
| StackOneBadRequest (400/422)  | INVALID_ARGUMENT    |                   |
| StackOneAuthError (401/403)   | FAILED_PRECONDITION | ErrorInfo         |
| StackOneNotFound (404)        | NOT_FOUND           |                   |
| StackOneConflict (409)        | ABORTED             |                   |
| StackOneRateLimited (429)     | RESOURCE_EXHAUSTED  | RetryInfo         |
| StackOneUnavailable, 5xx, 408 | UNAVAILABLE         | RetryInfo if sent |
| CursorOutOfRange              | OUT_OF_RANGE        | ErrorInfo         |
| NotInRegistry                 | NOT_FOUND           |                   |
| RegistryIncomplete            | UNAVAILABLE         |                   |
| ServerDraining (shutdown)     | UNAVAILABLE         | ErrorInfo         |
| TooManyStreams                | RESOURCE_EXHAUSTED  | ErrorInfo         |
| EventLogUnavailable           | UNAVAILABLE         |                   |
| AuditUnavailable (fail-closed)| UNAVAILABLE         | ErrorInfo         |
| RequestInProgress             | UNAVAILABLE         | ErrorInfo, RetryInfo |
| OwnerNotAllowed               | PERMISSION_DENIED   |                   |
| AccountNotAllowed             | PERMISSION_DENIED   |                   |
| anything else                 | INTERNAL            |                   |

Every status is bounded (`service.rpc.limits`): its message is cut to
`MAX_ERROR_MESSAGE_BYTES` here, and its details are bounded where they are built (at most
eleven field violations of bounded size), so the whole stays under `MAX_ERROR_STATUS_BYTES`
and clients' trailer limits never turn an error into another one.
"""

from __future__ import annotations

import logging
from typing import Any

from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from service.events.model import (
    CursorOutOfRange,
    EventLogUnavailable,
    NotInRegistry,
    RegistryIncomplete,
    ServerDraining,
    TooManyStreams,
)
from service.owners import AccountNotAllowed, OwnerNotAllowed
from service.rpc.audit import AuditUnavailable
from service.rpc.limits import MAX_ERROR_MESSAGE_BYTES, clip
from service.rpc.retryable import RequestInProgress
from service.rpc.validation import InvalidRequest
from service.stackone import errors as upstream

_log = logging.getLogger(__name__)
_DOMAIN = "stackone-connect"


def _packed(*details: Any) -> list[any_pb2.Any]:
    packed = []
    for detail in details:
        wrapper = any_pb2.Any()
        wrapper.Pack(detail)
        packed.append(wrapper)
    return packed


def _retry_info(seconds: float | None) -> list[any_pb2.Any]:
    if seconds is None:
        return []
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(seconds * 1e9))
    return _packed(error_details_pb2.RetryInfo(retry_delay=delay))


def status_for(error: Exception) -> status_pb2.Status:
    """The `google.rpc.Status` that reports `error` to a gRPC caller."""
    match error:
        case InvalidRequest(violations=violations):
            bad_request = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in violations
                ]
            )
            return _status(code_pb2.INVALID_ARGUMENT, f"invalid request: {error}", bad_request)
        case upstream.StackOneBadRequest():
            return _status(code_pb2.INVALID_ARGUMENT, f"StackOne rejected the request: {error}")
        case upstream.StackOneAuthError(status_code=status_code):
            info = error_details_pb2.ErrorInfo(
                reason="UPSTREAM_AUTH", domain=_DOMAIN, metadata={"status": str(status_code)}
            )
            return _status(code_pb2.FAILED_PRECONDITION, str(error), info)
        case upstream.StackOneNotFound():
            return _status(code_pb2.NOT_FOUND, str(error))
        case upstream.StackOneConflict():
            return _status(code_pb2.ABORTED, f"StackOne reported a conflict: {error}")
        case upstream.StackOneRateLimited(retry_after=retry_after):
            return _status(
                code_pb2.RESOURCE_EXHAUSTED,
                f"StackOne's rate limit was reached; retry later: {error}",
                *_retry_info(retry_after),
            )
        case upstream.StackOneAPIError(retry_after=retry_after):
            return _status(
                code_pb2.UNAVAILABLE,
                f"StackOne is unavailable; retry with backoff: {error}",
                *_retry_info(retry_after),
            )
        case upstream.StackOneError():
            return _status(
                code_pb2.UNAVAILABLE, f"StackOne is unreachable; retry with backoff: {error}"
            )
        case CursorOutOfRange(earliest=earliest, latest=latest):
            info = error_details_pb2.ErrorInfo(
                reason="CURSOR_OUT_OF_RANGE",
                domain=_DOMAIN,
                metadata={"earliest_cursor": earliest, "latest_cursor": latest},
            )
            return _status(code_pb2.OUT_OF_RANGE, str(error), info)
        case ServerDraining(cursor=cursor):
            info = error_details_pb2.ErrorInfo(
                reason="SERVER_DRAINING",
                domain=_DOMAIN,
                metadata={"resume_after_cursor": str(cursor)},
            )
            return _status(code_pb2.UNAVAILABLE, str(error), info)
        case TooManyStreams(limit=limit, setting=setting):
            info = error_details_pb2.ErrorInfo(
                reason="TOO_MANY_STREAMS",
                domain=_DOMAIN,
                metadata={"limit": str(limit), "setting": setting},
            )
            return _status(code_pb2.RESOURCE_EXHAUSTED, str(error), info)
        case NotInRegistry():
            return _status(code_pb2.NOT_FOUND, str(error))
        case RegistryIncomplete():
            return _status(code_pb2.UNAVAILABLE, str(error))
        case EventLogUnavailable():
            return _status(code_pb2.UNAVAILABLE, f"the event log is unavailable: {error}")
        case RequestInProgress():
            info = error_details_pb2.ErrorInfo(reason="REQUEST_IN_PROGRESS", domain=_DOMAIN)
            return _status(code_pb2.UNAVAILABLE, str(error), info, *_retry_info(1.0))
        case AuditUnavailable():
            info = error_details_pb2.ErrorInfo(reason="AUDIT_UNAVAILABLE", domain=_DOMAIN)
            message = "refused: its audit record cannot be written; retry later"
            return _status(code_pb2.UNAVAILABLE, message, info)
        case OwnerNotAllowed() | AccountNotAllowed():
            return _status(code_pb2.PERMISSION_DENIED, str(error))
    _log.error("unexpected error in an RPC", exc_info=error)
    return _status(code_pb2.INTERNAL, "internal error; the server log has the details")


def _status(code: int, message: str, *details: Any) -> status_pb2.Status:
    packed = [d if isinstance(d, any_pb2.Any) else _packed(d)[0] for d in details]
    return status_pb2.Status(
        code=code, message=clip(message, MAX_ERROR_MESSAGE_BYTES), details=packed
    )
