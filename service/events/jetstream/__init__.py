"""The event log on NATS JetStream, shared by every replica of the service (see
`event_log` for how it keeps events, the inbox and the registry)."""

from service.events.jetstream.event_log import (
    BACKEND,
    NATS_ERRORS,
    JetStreamEventLog,
    JetStreamOptions,
)

__all__ = ["BACKEND", "NATS_ERRORS", "JetStreamEventLog", "JetStreamOptions"]
