"""Stream responses built as bytes from the stored events, without re-serializing them.

An event is stored as its serialized `AccountEvent`. Appending the `cursor` field to
those bytes, and wrapping the result as a length-delimited field of the response (or of
an `EventBatch`), is valid protobuf encoding: every subscriber gets the event without it
being parsed and serialized again. `FrameCache` goes further: each event is encoded once
per server, and every stream that sends it sends the same bytes object. A batch holds at
most `MAX_BATCH_BYTES` of events, so it stays under any default client's receive limit.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

from google.protobuf.descriptor import Descriptor

from service.events.cursors import UNTAGGED, Incarnation
from service.events.feed import Restated
from service.events.model import StoredEvent
from service.events.registry import RegisteredAccount
from service.rpc.limits import MAX_BATCH_BYTES
from stackone_connect.v1 import stackone_connect_pb2 as pb

FRAME_CACHE_BYTES = 8 << 20
"""Bytes of encoded events kept for reuse: the newest ones, which the streams that keep up
all send (about what the log's shared tail holds, with the frames' second copy)."""


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


# Both fields are number 1 in today's proto, so one copy of an event serves both.
_SAME_KEY = _RESPONSE_EVENT_KEY == _BATCH_EVENT_KEY
CATCH_UP_READ = 64
"""Events in one read past which a stream is catching up: its events are encoded for it
alone (streams catching up from the same place share whole batches instead), so a
replay does not pay for remembering each event, nor push the live ones out."""


def _field(key: bytes, payload: bytes) -> bytes:
    return key + _varint(len(payload)) + payload


def event_payload(event: StoredEvent, incarnation: Incarnation = UNTAGGED) -> bytes:
    """The serialized `AccountEvent` of a stored event, its cursor (of `incarnation`)
    included."""
    return event.body + _field(_CURSOR_KEY, incarnation.public(event.cursor).encode())


class EncodedEvent:
    """One event's bytes in each form a stream sends it: `single` (a response carrying
    just the event) and `item` (the event as one entry of an `EventBatch`)."""

    __slots__ = ("item", "single")

    def __init__(self, payload: bytes) -> None:
        self.item = _field(_BATCH_EVENT_KEY, payload)
        self.single = self.item if _SAME_KEY else _field(_RESPONSE_EVENT_KEY, payload)


def batch_frame(items: Sequence[bytes]) -> bytes:
    """A response carrying the batch of the given `EncodedEvent.item`s."""
    return _field(_RESPONSE_BATCH_KEY, b"".join(items))


_REGISTRY_CURSOR_KEY = _key(pb.Account.DESCRIPTOR, "registry_cursor")
_RESPONSE_ACCOUNT_KEY = _key(pb.StreamAccountEventsResponse.DESCRIPTOR, "account")
_RESPONSE_ACCOUNTS_KEY = _key(pb.StreamAccountEventsResponse.DESCRIPTOR, "accounts")
_BATCH_ACCOUNT_KEY = _key(pb.AccountBatch.DESCRIPTOR, "accounts")


def account_frames(
    accounts: Sequence[RegisteredAccount],
    per_message: int,
    incarnation: Incarnation = UNTAGGED,
) -> list[bytes]:
    """Responses carrying a snapshot's accounts (each with its `registry_cursor`, appended
    to its stored bytes as events get their cursor): one a message, or batches of up to
    `per_message` and `MAX_BATCH_BYTES`."""
    payloads = [
        entry.account + _field(_REGISTRY_CURSOR_KEY, incarnation.public(entry.cursor).encode())
        for entry in accounts
    ]
    if per_message <= 1:
        return [_field(_RESPONSE_ACCOUNT_KEY, payload) for payload in payloads]
    frames: list[bytes] = []
    items: list[bytes] = []
    size = 0
    for payload in payloads:
        item = _field(_BATCH_ACCOUNT_KEY, payload)
        if items and (len(items) >= per_message or size + len(item) > MAX_BATCH_BYTES):
            frames.append(_field(_RESPONSE_ACCOUNTS_KEY, b"".join(items)))
            items, size = [], 0
        items.append(item)
        size += len(item)
    if items:
        frames.append(_field(_RESPONSE_ACCOUNTS_KEY, b"".join(items)))
    return frames


_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class _Recent(Generic[_K, _V]):
    """A map that forgets its oldest entries past a byte budget, in two generations: when
    the newer one is full it becomes the older and the older goes, so forgetting costs
    dropping one dict, never a scan."""

    def __init__(self, budget_bytes: int) -> None:
        self._newer: dict[_K, _V] = {}
        self._older: dict[_K, _V] = {}
        self._newer_bytes = 0
        self._generation_bytes = budget_bytes // 2

    def get(self, key: _K) -> _V | None:
        found = self._newer.get(key)
        if found is None and (found := self._older.get(key)) is not None:
            self.put(key, found, 0)  # counted when first put
        return found

    def put(self, key: _K, value: _V, size: int) -> None:
        self._newer[key] = value
        self._newer_bytes += size
        if self._newer_bytes > self._generation_bytes:
            self._older, self._newer, self._newer_bytes = self._newer, {}, 0


class FrameCache:
    """The responses sent for the newest events, shared by every stream of one server.

    Streams that keep up wake together when events are recorded and read the same events:
    the first to send them encodes them (each event once, whatever the batches), and the
    others send the very same bytes. What a stream sends depends only on which events it
    sends and how many it takes per message, which is the key. Bounded by bytes. Cursors
    are written as `incarnation()` says when the event is first encoded (the log's, which
    changes only with a log that numbers its events past the old one's: no cursor is
    encoded twice).
    """

    def __init__(
        self,
        budget_bytes: int = FRAME_CACHE_BYTES,
        incarnation: Callable[[], Incarnation] = lambda: UNTAGGED,
    ) -> None:
        self.incarnation = incarnation
        self._events: _Recent[int, EncodedEvent] = _Recent(budget_bytes // 2)
        self.encodes = 0  # events encoded so far: what the cache saves shows against sends
        self._frames: _Recent[tuple[int, Hashable, int, int], list[bytes]] = _Recent(
            budget_bytes // 2
        )

    def encoded(self, event: StoredEvent) -> EncodedEvent:
        """The encoded forms of `event` (a cursor always names the same event)."""
        if isinstance(event, Restated):  # one stream's form: never another stream's
            return EncodedEvent(event_payload(event, self.incarnation()))
        found = self._events.get(event.cursor)
        if found is None:
            self.encodes += 1
            found = EncodedEvent(event_payload(event, self.incarnation()))
            self._events.put(event.cursor, found, len(found.item))
        return found

    def frames(
        self, events: Sequence[StoredEvent], per_message: int, chosen_by: Hashable
    ) -> list[bytes]:
        """`event_frames` of `events`, made once for every stream that sends them.

        `events` are every event from the first to the last of them that `chosen_by` (a
        stream's filter) selects, so that the two cursors and it name them: streams that
        read from the same position with equal filters share frames, and no stream pays
        for a key as long as its batch.
        """
        key = (per_message, chosen_by, events[0].cursor, events[-1].cursor)
        found = self._frames.get(key)
        if found is None:
            found = event_frames(events, per_message, self)
            self._frames.put(key, found, sum(map(len, found)))
        return found


def event_frames(
    events: Sequence[StoredEvent],
    per_message: int,
    cache: FrameCache,
    max_bytes: int = MAX_BATCH_BYTES,
) -> list[bytes]:
    """Serialized responses for `events`: one per event, or batches of up to `per_message`
    events and `max_bytes` of them (an event larger than that goes alone)."""
    if len(events) > CATCH_UP_READ:
        incarnation = cache.incarnation()
        encoded = [EncodedEvent(event_payload(event, incarnation)) for event in events]
    else:
        encoded = [cache.encoded(event) for event in events]
    if per_message <= 1:
        return [event.single for event in encoded]
    frames: list[bytes] = []
    batch: list[EncodedEvent] = []
    size = 0
    for event in encoded:
        if batch and (len(batch) == per_message or size + len(event.item) > max_bytes):
            frames.append(batch_frame([queued.item for queued in batch]))
            batch, size = [], 0
        batch.append(event)
        size += len(event.item)
    if batch:
        frames.append(batch_frame([queued.item for queued in batch]))
    return frames


def bookmark_frame(cursor: str, *, initial_state_end: bool = False) -> bytes:
    """The serialized response carrying a bookmark at `cursor` (as clients see it), stamped
    now (`initial_state_end`: the one ending a snapshot)."""
    bookmark = pb.Bookmark(cursor=cursor, initial_state_end=initial_state_end)
    bookmark.sent_at.GetCurrentTime()
    return pb.StreamAccountEventsResponse(bookmark=bookmark).SerializeToString()
