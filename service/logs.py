"""Structured JSON logs on stderr, one object per line."""

from __future__ import annotations

import logging
import random
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp.http_exceptions import HttpProcessingError
from opentelemetry import trace

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
"""The id of the RPC or webhook being handled; every log line written meanwhile has it."""


MAX_REQUEST_ID = 128
_USABLE_REQUEST_ID = re.compile(rf"[!-~]{{1,{MAX_REQUEST_ID}}}")  # printable ASCII, no spaces


def new_request_id() -> str:
    """A fresh id for a request that brought none (unique enough for logs; not a secret)."""
    return f"{random.getrandbits(64):016x}"


def request_id_from(supplied: object) -> str:
    """The caller's request id when it is a short printable token, else a fresh one: it
    goes into every log line of the request, so it is bounded like any other input."""
    if isinstance(supplied, str) and _USABLE_REQUEST_ID.fullmatch(supplied):
        return supplied
    return new_request_id()


_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as JSON with its `extra` fields as keys."""

    def format(self, record: logging.LogRecord) -> str:
        """One JSON line for `record`."""
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if (request_id := REQUEST_ID.get()) is not None:
            entry["request_id"] = request_id
        span = trace.get_current_span().get_span_context()
        if span.is_valid:  # made inside a span: the line joins its trace
            entry["trace_id"] = f"{span.trace_id:032x}"
            entry["span_id"] = f"{span.span_id:016x}"
        entry.update((k, v) for k, v in record.__dict__.items() if k not in _STANDARD)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


MAX_PEER_REASON = 200


class PeerFaultsQuiet(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server log (give it to the server as `logger`), where a request that is
    not HTTP it can parse (a header line over the limit, a bad chunk, a TLS or HTTP/2
    hello) is one INFO line with no traceback: the sender's fault, which anyone on the
    internet can cause at will, is no error of ours. Anything else passes as it is."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("aiohttp.server"))

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        """Logs as the server asks, but a malformed request as one quiet line."""
        error = kwargs.get("exc_info")
        if level >= logging.ERROR and isinstance(error, HttpProcessingError):
            lines = str(error.message).strip().splitlines() or [""]
            reason = lines[0][:MAX_PEER_REASON]
            kwargs["exc_info"] = None
            level, msg = logging.INFO, "refused a malformed HTTP request (%d): %s"
            args = (error.code, reason)
        super().log(level, msg, *args, **kwargs)


def configure(level: str) -> None:
    """Sends every log record to stderr as JSON at `level` and above."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access log and httpx's per-request lines repeat what our metrics and own
    # lines say, and cost a formatted JSON line per request.
    for chatty in ("aiohttp.access", "httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
