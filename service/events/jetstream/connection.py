"""The JetStream event log's binding to NATS: one connection and the streams, buckets and
subscriptions on it, replaced whole when nats-py closes it for good, and the streams
created again when the server is found to have lost them.

nats-py reconnects by itself after a drop (and subscribes again). When it closes the
connection for good (an `-ERR` from the server, or its attempts exhausted), a fresh one
is opened, with backoff; meanwhile `check_writable` reports the log unavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, PubAck, StreamInfo
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from service.events.jetstream.options import JetStreamOptions
from service.events.jetstream.streams import ensure_all
from service.events.log import ReportFailure
from service.events.model import EventLogUnavailable
from service.nats_servers import nats_servers
from service.retry import RetryPolicy

_log = logging.getLogger(__name__)

_RECONNECT_WAIT = 0.5  # between nats-py's own attempts after a drop
_RECONNECT_ATTEMPTS = 10  # then it closes for good and the log opens a fresh connection
# The log's waits between fresh connections.
_REOPENING = RetryPolicy(attempts=None, first_wait=0.1, longest_wait=5.0)
NATS_ERRORS: tuple[type[Exception], ...] = (
    nats.errors.Error,
    nats.js.errors.Error,
    asyncio.TimeoutError,
    OSError,
)


@dataclass(frozen=True, slots=True)
class Binding:
    """One NATS connection and what the log uses on it, replaced whole when it closes."""

    connection: NatsClient
    js: JetStreamContext
    accounts: KeyValue
    ids: KeyValue


@dataclass(frozen=True, slots=True)
class Listeners:
    """What the connection tells the parts of the log that share it.

    Attributes:
        event_published: a message on the events' subjects (of any replica).
        inbox_published: a message on the inbox's subjects (of any replica).
        connected_again: notifications sent meanwhile were lost; look at the streams.
        streams_recreated: the events' stream was created again (a new incarnation).
        seen: the latest event and inbox sequences this replica has seen, past which
            a stream created again starts, so no cursor or inbox position is reused.
    """

    event_published: Callable[[Msg], None]
    inbox_published: Callable[[], None]
    connected_again: Callable[[], None]
    streams_recreated: Callable[[], Awaitable[None]]
    seen: Callable[[], tuple[int, int]]


class BackgroundFailures:
    """Failures the log's background tasks survived (each retried), by task."""

    def __init__(self, report: ReportFailure) -> None:
        self.counts: Counter[str] = Counter()
        self._report = report

    def failed(self, task: str, error: Exception) -> None:
        """Counts, reports and logs a failure of `task`, which is retried."""
        self.counts[task] += 1
        self._report(task)
        expected = isinstance(error, (EventLogUnavailable, *NATS_ERRORS))  # NATS is away
        _log.error(
            "JetStream %s failed, retrying: %r", task, error, exc_info=None if expected else error
        )


class Connection:
    """The current binding to NATS, kept open while the log is."""

    def __init__(
        self, options: JetStreamOptions, listeners: Listeners, failures: BackgroundFailures
    ) -> None:
        self.options = options
        self._listeners = listeners
        self._failures = failures
        self._binding: Binding | None = None
        self._lost = asyncio.Event()
        self._restoring = asyncio.Lock()
        self.closed = False
        self.reconnects = 0  # nats-py's own, after a drop
        self.reopens = 0  # fresh connections after nats-py closed one for good
        self.restores = 0  # streams or buckets found missing and created again

    @property
    def current(self) -> Binding:
        """The binding in use; `EventLogUnavailable` before the first one opened."""
        if self._binding is None:
            raise EventLogUnavailable(f"not connected to NATS at {self.options.url}")
        return self._binding

    async def open(self) -> StreamInfo:
        """Binds for the first time; the events' stream as found."""
        self._binding, info = await self._bind()
        return info

    async def _bind(self) -> tuple[Binding, StreamInfo]:
        """A fresh connection with the stream, inbox and buckets created or brought to
        the options, and the notifications subscribed; `EventLogUnavailable` if not."""
        options = self.options
        connection = NatsClient()
        try:
            await connection.connect(
                nats_servers(options.url),
                connect_timeout=options.request_timeout,  # type: ignore[arg-type]
                allow_reconnect=True,
                max_reconnect_attempts=_RECONNECT_ATTEMPTS,
                reconnect_time_wait=_RECONNECT_WAIT,  # type: ignore[arg-type]
                name="stackone-connect",
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
                closed_cb=self._on_closed,
            )
            js = connection.jetstream(timeout=options.request_timeout)
            events_seen, inbox_seen = self._listeners.seen()
            _, accounts, ids = await ensure_all(
                js, options, events_after=events_seen, inbox_after=inbox_seen
            )
            info = await js.stream_info(options.stream)
            await connection.subscribe(options.events_wildcard, cb=self._on_event)
            await connection.subscribe(options.inbox_wildcard, cb=self._on_inbox)
            await connection.flush()  # the server has the subscriptions before we rely on them
        except BaseException as error:  # a cancelled open must not leave a client running
            with contextlib.suppress(*NATS_ERRORS):
                await connection.close()
            if isinstance(error, NATS_ERRORS):
                raise EventLogUnavailable(
                    f"cannot reach NATS JetStream at {options.url}: {error!r}"
                ) from error
            raise
        return Binding(connection, js, accounts, ids), info

    async def keep_connected(self) -> None:
        """Opens a fresh connection whenever nats-py has closed the current one for good,
        retried under the retry policy; every failed attempt is logged and counted."""

        def failed(error: Exception) -> bool:
            self._failures.failed("event_log_connection", error)
            return True  # until it opens: `close` cancels this task

        while not self.closed:
            self._lost.clear()
            if not self.current.connection.is_closed:
                # closed_cb wakes this; the timer covers a close that ran no callbacks.
                await wait_at_most(self._lost, 1.0)
                continue
            async for attempt in _REOPENING.attempts_of(failed):
                with attempt:
                    self._binding, _ = await self._bind()
            _log.warning("opened a fresh connection to NATS at %s", self.options.url)
            self._listeners.connected_again()
            self.reopens += 1

    async def check_writable(self) -> None:
        """Raises `EventLogUnavailable` unless NATS is connected and the streams answer;
        streams or buckets found missing (a NATS server back with memory storage, or a
        replaced store) are created again first, as at start-up."""
        if self.closed or not self.current.connection.is_connected:
            raise EventLogUnavailable(f"not connected to NATS at {self.options.url}")
        try:
            await self.current.js.stream_info(self.options.stream)
            await self.current.js.stream_info(self.options.inbox_stream)
        except nats.js.errors.NotFoundError:
            await self._restore()
        except NATS_ERRORS as error:
            raise EventLogUnavailable(f"JetStream stream unavailable: {error!r}") from error

    async def _restore(self) -> None:
        """Creates whatever of the streams and buckets is missing. A stream created again
        starts past the last sequence this replica saw, so no cursor (nor inbox position
        named by a recorded event) is ever reused: subscribers behind it get OUT_OF_RANGE
        for the events that were lost with the old stream."""
        async with self._restoring:
            events_seen, inbox_seen = self._listeners.seen()
            try:
                created, _, _ = await ensure_all(
                    self.current.js,
                    self.options,
                    events_after=events_seen,
                    inbox_after=inbox_seen,
                )
            except NATS_ERRORS as error:
                raise EventLogUnavailable(
                    f"JetStream streams cannot be created: {error!r}"
                ) from error
        if created:
            _log.warning(
                "NATS at %s had lost %s: created again as at start-up (events before "
                "cursor %d are gone)",
                self.options.url,
                ", ".join(created),
                events_seen + 1,
            )
            self.restores += 1
            await self._listeners.streams_recreated()
            self._listeners.connected_again()

    async def close(self) -> None:
        """Closes the connection; the log's tasks end with it."""
        self.closed = True
        if self._binding is not None:
            with contextlib.suppress(*NATS_ERRORS):
                await self._binding.connection.close()

    async def publish(
        self, subject: str, body: bytes, headers: dict[str, str], stream: str
    ) -> PubAck:
        """Publishes to `stream`, refusing here what the server would refuse by closing
        the connection: a message (headers included) over its `max_payload`."""
        size = len(body) + sum(len(k) + len(v.encode()) + 4 for k, v in headers.items()) + 14
        binding = self.current
        if size > (most := binding.connection.max_payload):
            raise EventLogUnavailable(
                f"a message of {size} bytes is over NATS's max_payload ({most})"
            )
        return await binding.js.publish(subject, body, headers=headers, stream=stream)

    async def fetch_from(self, stream: str, subjects: str, start: int, limit: int) -> list[Msg]:
        """Up to `limit` messages of `stream` from sequence `start`, through a short-lived
        pull consumer that hands over whatever is stored, without waiting for more."""
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_policy=AckPolicy.NONE,
            mem_storage=True,
            inactive_threshold=5.0,
        )
        subscription = await self.current.js.pull_subscribe(
            subjects, durable=None, stream=stream, config=config
        )
        try:
            return await subscription.fetch(limit, timeout=self.options.request_timeout)
        finally:
            with contextlib.suppress(*NATS_ERRORS):
                await subscription.unsubscribe()

    async def _on_event(self, message: Msg) -> None:
        self._listeners.event_published(message)

    async def _on_inbox(self, message: Msg) -> None:
        self._listeners.inbox_published()

    async def _on_error(self, error: Exception) -> None:
        _log.warning("NATS at %s: %r", self.options.url, error)

    async def _on_disconnected(self) -> None:
        if not self.closed:
            _log.warning("disconnected from NATS at %s", self.options.url)

    async def _on_reconnected(self) -> None:
        _log.warning("reconnected to NATS at %s", self.options.url)
        self._listeners.connected_again()
        self.reconnects += 1
        # The server may be back without the streams (memory storage, a new store).
        with contextlib.suppress(EventLogUnavailable):
            await self._restore()

    async def _on_closed(self) -> None:
        self._lost.set()


async def wait_at_most(event: asyncio.Event, timeout: float) -> None:
    """Waits for `event` at most `timeout` seconds. A timer rather than asyncio.timeout:
    on Python 3.11 a cancel arriving as the timeout expires can be swallowed, and
    close() would wait for the task forever."""
    timer = asyncio.get_running_loop().call_later(timeout, event.set)
    try:
        await event.wait()
    finally:
        timer.cancel()
