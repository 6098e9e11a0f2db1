"""Every bound on what a gRPC caller sends and on what an error or an event batch carries.

Each input bound is checked before any work proportional to the value it bounds (a
repeated field's count before its values, a string's length before its contents, a
request's byte size before it is parsed), so no request can stall the event loop or grow
the process; past a bound the caller gets `INVALID_ARGUMENT` naming the field. The README's
security section lists them.
"""

from __future__ import annotations

# Requests.
GRPC_MAX_RECEIVE_BYTES = 4 << 20
"""Bytes of any message grpc accepts (its default, made explicit): past it grpc itself
answers `RESOURCE_EXHAUSTED`, before our code runs."""
MAX_REQUEST_BYTES = 64 << 10
"""Bytes of a request, checked before it is parsed: parsing costs the event loop ~25 ms a
MiB of small fields (a million empty strings in 2 MB), more for maps such as metadata."""
MAX_REQUEST_BYTES_BY_METHOD = {"ListAccounts": 512 << 10, "StreamAccountEvents": 512 << 10}
"""Room for every filter at its bounds: 4 filters of 100 values of 255 characters (4 bytes
each at most)."""
MAX_TEXT_CHARS = 255
"""Characters of every string field: ids, names, labels, filter values, metadata keys."""
MAX_FILTER_VALUES = 100
"""Values of one repeated filter (account ids, owner ids, providers, statuses, types)."""
MAX_CATEGORIES = 32
"""Categories of one connect session."""
MAX_METADATA_BYTES = 16 << 10
"""Serialized size of `CreateSession.metadata`."""
MAX_METADATA_DEPTH = 8
"""Nesting of `CreateSession.metadata` (the top-level keys are depth 1)."""
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 25
MAX_PAGE_TOKEN_CHARS = 64
# A registry listing's token names its cursor and the last account id (255 characters,
# up to 1,020 bytes): base64 of both.
MAX_REGISTRY_TOKEN_CHARS = 1400
"""Characters of a `page_token` (the ones this service returns are under 20)."""
MAX_PAGE_NUMBER = 10**9
MAX_CURSOR = 2**63 - 1
"""The largest cursor; cursors and page numbers are ASCII digits only."""
MAX_EVENTS_PER_MESSAGE = 1000
MAX_EXPIRES_IN = 30 * 24 * 3600
"""Seconds a connect session may stay valid."""

# Errors. grpc sends a status as trailers (the message percent-encoded, the details
# base64-encoded) and clients refuse trailers over 8-16 KiB, so an error stays far under.
MAX_REPORTED_VIOLATIONS = 10
"""Field violations reported one by one; the rest are counted in one 'and N more'."""
MAX_VIOLATION_FIELD_BYTES = 64
MAX_VIOLATION_DESCRIPTION_BYTES = 160
MAX_QUOTED_VALUE_CHARS = 40
"""Characters of a caller's value quoted back in a violation."""
MAX_ERROR_MESSAGE_BYTES = 1024
MAX_ERROR_STATUS_BYTES = 4096
"""The serialized `google.rpc.Status` of any error, which the bounds above keep it under:
1 KiB of message and 11 violations of at most ~240 bytes (checked by a test)."""

# Responses.
MAX_BATCH_BYTES = 1 << 20
"""Bytes of the events of one `events` batch, far under grpc's default 4 MiB receive
limit, so every default client makes progress; a larger single event goes alone."""


def clip(text: str, max_bytes: int) -> str:
    """`text` as at most `max_bytes` of valid UTF-8, cut on a character boundary and marked
    '…'; only its first `max_bytes` characters are looked at, however long it is."""
    encoded = text[: max_bytes + 1].encode(errors="replace")  # a lone surrogate becomes '?'
    if len(encoded) <= max_bytes and len(text) <= max_bytes:
        return encoded.decode()
    return encoded[: max_bytes - 3].decode(errors="ignore") + "…"
