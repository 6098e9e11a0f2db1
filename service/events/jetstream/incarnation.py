"""The incarnation of the JetStream events' stream, which the cursors carry: named by the
stream's creation time and recorded in the accounts bucket, so that a stream created
again (by a replica after NATS lost it, or by hand) is another."""

from __future__ import annotations

from datetime import datetime

from nats.js.api import StreamInfo

from service.events import cursors
from service.events.cursors import UNTAGGED, Incarnation
from service.events.jetstream.connection import NATS_ERRORS
from service.events.jetstream.registry import INCARNATION_KEY, JetStreamRegistry
from service.events.model import EventLogUnavailable


class StreamIncarnation:
    """The incarnation of the stream this replica reads, and the stream it was read from."""

    def __init__(self, stream: str, registry: JetStreamRegistry) -> None:
        self._stream = stream
        self._registry = registry
        self.current = UNTAGGED  # until `establish` reads the stream's
        self._created: datetime | None = None  # the stream's creation time, which names it

    async def establish(self, info: StreamInfo) -> None:
        """Takes the incarnation of the stream `info` describes, unless it is the one
        known. The first replica of this release to see a stream lets bare cursors (of
        the previous release, which had no tag) name its events; a stream that replaced
        one known before takes none, since they named the old stream's events."""
        if self._created is not None and info.created == self._created:
            return
        created = info.created.isoformat() if info.created is not None else ""
        tag = cursors.tag_of(f"{self._stream}@{created}")

        def taken(current: bytes | None) -> bytes | None:
            held = (current or b"").split()
            if held and int(held[0]) == tag:
                return None
            return f"{tag} {-1 if held else cursors.MAX_SEQUENCE}".encode()

        try:
            held = (await self._registry.compare_and_set(INCARNATION_KEY, taken)).split()
        except NATS_ERRORS as error:
            raise EventLogUnavailable(f"JetStream is unavailable: {error!r}") from error
        self.current = Incarnation(tag, bare_through=int(held[1]))
        self._created = info.created
