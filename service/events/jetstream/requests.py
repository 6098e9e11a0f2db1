"""Retryable calls' request records in a JetStream key-value bucket (`RequestRecords`),
shared by every replica on the stream.

A claim is the bucket's create-only write (compare-and-set on "no value yet"): of two
replicas racing on one key, one writes the pending claim and makes the StackOne call; the
other reads the claim and waits for its answer (see `service.rpc.retryable`). The bucket
keeps each record for the window (its max age); a pending claim older than the lease is
taken over by a revision-checked update, so one replica at most takes it.

The records have a NATS connection of their own, beside the log's, so that they depend
on nothing of the log but its options.
"""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Iterator

import nats.js.errors
import orjson
from nats.aio.client import Client as NatsClient
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from service.events.jetstream import NATS_ERRORS, JetStreamOptions
from service.events.log import RequestClaim
from service.events.model import EventLogUnavailable


class JetStreamRequestRecords:
    """`RequestRecords` in the `<stream>_REQUESTS` bucket. Create with `open`."""

    def __init__(
        self, connection: NatsClient, bucket: KeyValue, *, window: float, lease: float
    ) -> None:
        self._connection = connection
        self._bucket = bucket
        self._window = window
        self._lease = lease

    @classmethod
    async def open(
        cls, options: JetStreamOptions, *, window: float, lease: float
    ) -> JetStreamRequestRecords:
        """Connects and creates the bucket (or binds to it); `EventLogUnavailable` if not."""
        connection = NatsClient()
        try:
            await connection.connect(
                options.url,
                connect_timeout=options.request_timeout,  # type: ignore[arg-type]
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                name="stackone-connect-requests",
            )
            js = connection.jetstream(timeout=options.request_timeout)
            config = KeyValueConfig(
                bucket=f"{options.stream}_REQUESTS",
                ttl=window,
                storage=StorageType.MEMORY if options.storage == "memory" else StorageType.FILE,
                replicas=options.replicas,
            )
            try:
                bucket = await js.create_key_value(config)
            except nats.js.errors.BadRequestError:  # made with another window: keep it
                bucket = await js.key_value(config.bucket)
        except BaseException as error:
            with contextlib.suppress(*NATS_ERRORS):
                await connection.close()
            if isinstance(error, NATS_ERRORS):
                raise EventLogUnavailable(
                    f"cannot open the request records at {options.url}: {error!r}"
                ) from error
            raise
        return cls(connection, bucket, window=window, lease=lease)

    async def claim(self, key: str, fingerprint: str) -> RequestClaim:
        """Claims `key` (create-only), or returns the live claim another call holds."""
        mine = _value(fingerprint, time.time(), None)
        while True:
            with _unavailable("claim a request id"):
                try:
                    await self._bucket.create(key, mine)
                    return RequestClaim(fingerprint, mine=True)
                except nats.js.errors.KeyWrongLastSequenceError:
                    pass  # held: read it
                try:
                    entry = await self._bucket.get(key)
                except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                    continue  # released or expired meanwhile: create again
                held = orjson.loads(entry.value or b"{}")
                answer = None if held["answer"] is None else base64.b64decode(held["answer"])
                now = time.time()
                stale = answer is None and held["claimed_at"] < now - self._lease
                if not stale and held["claimed_at"] >= now - self._window:
                    return RequestClaim(held["fingerprint"], answer=answer)
                try:  # its replica died mid-call, or it outlived the window: take it over
                    await self._bucket.update(key, mine, last=entry.revision)
                    return RequestClaim(fingerprint, mine=True)
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue  # another call took it first: read it again

    async def answer(self, key: str, fingerprint: str, answer: bytes) -> None:
        """Records the answer under this call's claim."""
        with _unavailable("record a request's answer"):
            await self._bucket.put(key, _value(fingerprint, time.time(), answer))

    async def release(self, key: str) -> None:
        """Drops this call's claim, so that a retry asks StackOne."""
        with _unavailable("release a request id"):
            await self._bucket.delete(key)

    async def close(self) -> None:
        """Closes the connection."""
        with contextlib.suppress(*NATS_ERRORS):
            await self._connection.close()


def _value(fingerprint: str, claimed_at: float, answer: bytes | None) -> bytes:
    return orjson.dumps(
        {
            "fingerprint": fingerprint,
            "claimed_at": claimed_at,
            "answer": None if answer is None else base64.b64encode(answer).decode(),
        }
    )


@contextlib.contextmanager
def _unavailable(doing: str) -> Iterator[None]:
    try:
        yield
    except NATS_ERRORS as error:
        raise EventLogUnavailable(f"JetStream could not {doing}: {error!r}") from error
