"""The event log on NATS JetStream, shared by every replica of the service.

- Each event is a message on `<prefix>.<account token>` in one stream; its cursor is the
  stream sequence (`appender`). Nothing in the data can break the connection: the
  account token (also the accounts bucket's key) and `Nats-Msg-Id` are bounded, and a
  message over the server's `max_payload` is refused before the server would close the
  connection for it (`codec`, `connection`).
- Two key-value buckets hold what the stream's retention must not forget: the last state
  of every account, for reconciliation and the registry (`registry`), and the ids
  recorded within the dedup window (`appender`).
- The inbox is a second stream whose entries a verifier settles by recording events that
  name how far they cover it (`inbox`).
- Each replica follows the stream into an in-memory tail that all its subscribers share,
  folding each event into the registry first (`follower`).
- One connection at a time, replaced whole when nats-py closes it for good; streams and
  buckets lost by the server are created again (`connection`, `streams`), and a stream
  created again is a new incarnation of the log (`incarnation`).

`JetStreamEventLog` (`event_log`) composes these parts and answers every role of the log.
"""

from service.events.jetstream.connection import NATS_ERRORS
from service.events.jetstream.event_log import JetStreamEventLog
from service.events.jetstream.options import JetStreamOptions
from service.events.log import Backend

BACKEND = Backend(
    example="nats://host:port",
    accepts=lambda url: bool(url.hostname),
)

__all__ = ["BACKEND", "NATS_ERRORS", "JetStreamEventLog", "JetStreamOptions"]
