"""Stream responses built as bytes from the stored events, without re-serializing them.

An event is stored as its serialized `AccountEvent`. Appending the `cursor` field to
those bytes, and wrapping the result as a length-delimited field of the response (or of
an `EventBatch`), is valid protobuf encoding: every subscriber gets the event without it
being parsed and serialized again, once per subscriber. A batch holds at most
`MAX_BATCH_BYTES` of events, so it stays under any default client's receive limit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from google.protobuf.descriptor import Descriptor

from service.api.v1 import stackone_connect_pb2 as pb
from service.events.model import StoredEvent
from service.rpc.limits import MAX_BATCH_BYTES


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(message: Descriptor, field: str) -> bytes:
    """The wire key of a length-delimited field (wire type 2)."""
    return _varint(message.fields_by_name[field].number << 3 | 2)


_CURSOR_KEY = _key(pb.AccountEvent.DESCRIPTOR, "cursor")
_BATCH_EVENT_KEY = _key(pb.EventBatch.DESCRIPTOR, "events")
_RESPONSE_EVENT_KEY = _key(pb.StreamAccountEventsResponse.DESCRIPTOR, "event")
_RESPONSE_BATCH_KEY = _key(pb.StreamAccountEventsResponse.DESCRIPTOR, "events")


def _field(key: bytes, payload: bytes) -> bytes:
    return key + _varint(len(payload)) + payload


def _event_bytes(event: StoredEvent) -> bytes:
    cursor = str(event.cursor).encode()
    return event.body + _field(_CURSOR_KEY, cursor)


def event_frames(
    events: Sequence[StoredEvent], per_message: int, max_bytes: int = MAX_BATCH_BYTES
) -> Iterator[bytes]:
    """Serialized responses for `events`: one per event, or batches of up to `per_message`
    events and `max_bytes` of them (an event larger than that goes alone)."""
    if per_message <= 1:
        for event in events:
            yield _field(_RESPONSE_EVENT_KEY, _event_bytes(event))
        return
    batch: list[bytes] = []
    size = 0
    for event in events:
        item = _field(_BATCH_EVENT_KEY, _event_bytes(event))
        if batch and (len(batch) == per_message or size + len(item) > max_bytes):
            yield _field(_RESPONSE_BATCH_KEY, b"".join(batch))
            batch, size = [], 0
        batch.append(item)
        size += len(item)
    if batch:
        yield _field(_RESPONSE_BATCH_KEY, b"".join(batch))


def bookmark_frame(cursor: int) -> bytes:
    """The serialized response carrying a bookmark at `cursor`, stamped now."""
    bookmark = pb.Bookmark(cursor=str(cursor))
    bookmark.sent_at.GetCurrentTime()
    return pb.StreamAccountEventsResponse(bookmark=bookmark).SerializeToString()
