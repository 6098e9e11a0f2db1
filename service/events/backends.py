"""Which backend an event log URL names: the one place a URL scheme picks a backend.

A new backend is a module that builds a `Backend` (see `service.events.log`) and one line
here; nothing else asks which backend is in use.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Final
from urllib.parse import urlparse

from service.events import jetstream, sqlite
from service.events.log import Backend, EventLog
from service.events.tail import DEFAULT_TAIL_BYTES

if TYPE_CHECKING:
    from service.config import Settings

_BY_SCHEME: Final[Mapping[str, Backend]] = MappingProxyType(
    {
        "sqlite": sqlite.BACKEND,
        "nats": jetstream.BACKEND,
        "tls": jetstream.BACKEND,  # NATS over TLS
    }
)


def backend_for(url: str) -> Backend:
    """The backend `url` names; a ValueError, listing what would do, when none does."""
    parsed = urlparse(url)
    backend = _BY_SCHEME.get(parsed.scheme)
    if backend is None or not backend.accepts(parsed):
        examples = dict.fromkeys(backend.example for backend in _BY_SCHEME.values())
        raise ValueError(f"'{url}' is not a supported event log URL ({' or '.join(examples)})")
    return backend


async def open_event_log(settings: Settings, *, tail_bytes: int = DEFAULT_TAIL_BYTES) -> EventLog:
    """Opens the log `settings.event_log_url` names, its background work started;
    `EventLog.close` stops it. Raises `EventLogUnavailable` when the storage cannot be
    reached."""
    return await backend_for(settings.event_log_url).open(settings, tail_bytes)
