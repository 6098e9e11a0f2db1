"""Which backend an event log URL names, and opening a log from its backend's options.

A new backend is a module with its options, its log and a `Backend` (see
`service.events.log`), a line in the scheme table here, a case in `open_event_log`, and
the composition root's case building its options from the settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, TypeAlias, assert_never
from urllib.parse import urlparse

from service.events import jetstream, sqlite
from service.events.jetstream.requests import JetStreamRequestRecords
from service.events.log import Backend, EventLog, ReportFailure, RequestRecords, ignore_failure

_BY_SCHEME: Final[Mapping[str, Backend]] = MappingProxyType(
    {
        "sqlite": sqlite.BACKEND,
        "nats": jetstream.BACKEND,
        "tls": jetstream.BACKEND,  # NATS over TLS
    }
)
EventLogOptions: TypeAlias = sqlite.SqliteOptions | jetstream.JetStreamOptions


class UnsupportedEventLogUrl(ValueError):
    """No backend opens the URL; the message lists URLs that would do."""


def backend_for(url: str) -> Backend:
    """The backend `url` names; `UnsupportedEventLogUrl` when none does."""
    parsed = urlparse(url)
    backend = _BY_SCHEME.get(parsed.scheme)
    if backend is None or not backend.accepts(parsed):
        examples = dict.fromkeys(backend.example for backend in _BY_SCHEME.values())
        raise UnsupportedEventLogUrl(
            f"'{url}' is not a supported event log URL ({' or '.join(examples)})"
        )
    return backend


async def open_event_log(
    options: EventLogOptions, *, report_failure: ReportFailure = ignore_failure
) -> EventLog:
    """Opens the log `options` describe, its background work (group commit, retention,
    following) started; `EventLog.close` stops it. `report_failure` hears of each failure
    of that work the log survives. Raises `EventLogUnavailable` when the storage cannot be
    reached."""
    match options:
        case sqlite.SqliteOptions():
            return await sqlite.SqliteEventLog.open(options, report_failure=report_failure)
        case jetstream.JetStreamOptions():
            return await jetstream.JetStreamEventLog.open(options, report_failure=report_failure)
        case _:
            assert_never(options)


async def open_request_records(
    options: EventLogOptions, log: EventLog, *, window: float, lease: float
) -> RequestRecords:
    """The retryable calls' records in the storage of `log` (opened from `options`): a
    table written by a SQLite log's writer, a bucket beside a JetStream log's stream.
    `RequestRecords.close` releases them (before the log is closed)."""
    match options:
        case sqlite.SqliteOptions():
            if not isinstance(log, sqlite.SqliteEventLog):
                raise TypeError(f"a SQLite log's options with {type(log).__name__}")
            return log.request_records(window=window, lease=lease)
        case jetstream.JetStreamOptions():
            return await JetStreamRequestRecords.open(options, window=window, lease=lease)
        case _:
            assert_never(options)
