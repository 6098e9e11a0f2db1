"""What opening the JetStream event log takes, and the subjects its options name."""

from __future__ import annotations

from dataclasses import dataclass, field

from service.events.jetstream.codec import token
from service.events.model import Retention
from service.events.tail import DEFAULT_TAIL_BYTES


@dataclass(frozen=True, slots=True)
class JetStreamOptions:
    """What opening the JetStream event log takes: the NATS server, and the stream and
    buckets a replica uses (all replicas must agree on them).

    Attributes:
        url: the NATS server (`nats://` or `tls://`), or several separated by commas
            (the servers of a cluster to try first; the others are learnt from them).
        stream: the events' stream; its buckets and inbox stream are named after it.
        subject_prefix: subjects of the stream are `<prefix>.<account token>`.
        storage: "file" or "memory", for the streams and buckets.
        replicas: copies JetStream keeps of each (a NATS cluster's size).
        retention: the stream's max age and count and the dedup window, which JetStream
            enforces itself (no sweep runs).
        request_timeout: seconds a request to the server may take.
        inbox_limit: most webhooks waiting for verification (`InboxFull` past it).
        inbox_duplicate_window: seconds JetStream drops the redeliveries of a pending
            webhook itself; later ones are recognised by the ids bucket or by
            `inbox_through`. Cover the time a webhook may stay pending.
        tail_bytes: memory the newest events may take, shared by every stream.
    """

    url: str
    stream: str = "STACKONE_CONNECT_EVENTS"
    subject_prefix: str = "stackone_connect.events"
    storage: str = "file"
    replicas: int = 1
    retention: Retention = field(default_factory=Retention)
    request_timeout: float = 2.0
    inbox_limit: int = 100_000
    inbox_duplicate_window: float = 120.0
    tail_bytes: int = DEFAULT_TAIL_BYTES

    @property
    def inbox_stream(self) -> str:
        """The inbox stream's name."""
        return f"{self.stream}_INBOX"

    @property
    def inbox_prefix(self) -> str:
        """The inbox's subject prefix (never overlapping the events' subjects)."""
        return f"{self.subject_prefix}_inbox"

    @property
    def events_wildcard(self) -> str:
        """Every subject of the events' stream."""
        return f"{self.subject_prefix}.>"

    @property
    def inbox_wildcard(self) -> str:
        """Every subject of the inbox stream."""
        return f"{self.inbox_prefix}.>"

    def subject(self, account_id: str) -> str:
        """The subject of an account's events."""
        return f"{self.subject_prefix}.{token(account_id)}"

    def inbox_subject(self, account_id: str) -> str:
        """The subject of an account's inbox entries."""
        return f"{self.inbox_prefix}.{token(account_id)}"
