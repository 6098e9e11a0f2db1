"""Retryable calls' request records in a JetStream key-value bucket (`RequestRecords`),
shared by every replica on the stream.

A claim is the bucket's create-only write (compare-and-set on "no value yet"): of two
replicas racing on one key, one writes the pending claim and makes the StackOne call; the
other reads the claim and waits for its answer (see `service.rpc.retryable`). The bucket
keeps each record for the window (its max age); a pending claim older than the lease is
taken over by a revision-checked update, so one replica at most takes it.

The records have a NATS connection of their own, beside the log's, so that they depend
on nothing of the log but its options; a bucket the server lost (memory storage
restarted) is created again at its next use, as the log does its streams and buckets.
"""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client as NatsClient
from nats.js.api import KeyValueConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from service.events.jetstream import NATS_ERRORS, JetStreamOptions
from service.events.log import RequestClaim
from service.events.model import EventLogUnavailable
from service.nats_servers import nats_servers

_T = TypeVar("_T")
# What a write or read answers once the server lost the bucket's stream.
_BUCKET_GONE = (
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.NotFoundError,
    nats.js.errors.ServiceUnavailableError,
)


class JetStreamRequestRecords:
    """`RequestRecords` in the `<stream>_REQUESTS` bucket. Create with `open`."""

    def __init__(
        self,
        connection: NatsClient,
        js: JetStreamContext,
        config: KeyValueConfig,
        bucket: KeyValue,
        *,
        lease: float,
    ) -> None:
        self._connection = connection
        self._js = js
        self._config = config
        self._bucket = bucket
        self._window = float(config.ttl or 0)
        self._lease = lease

    @classmethod
    async def open(
        cls, options: JetStreamOptions, *, window: float, lease: float
    ) -> JetStreamRequestRecords:
        """Connects and creates the bucket (or binds to it); `EventLogUnavailable` if not."""
        connection = NatsClient()
        try:
            await connection.connect(
                nats_servers(options.url),
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
            bucket = await _bound(js, config)
        except BaseException as error:
            with contextlib.suppress(*NATS_ERRORS):
                await connection.close()
            if isinstance(error, NATS_ERRORS):
                raise EventLogUnavailable(
                    f"cannot open the request records at {options.url}: {error!r}"
                ) from error
            raise
        return cls(connection, js, config, bucket, lease=lease)

    async def _on_bucket(self, op: Callable[[], Awaitable[_T]], doing: str) -> _T:
        """`op` on the bucket; a bucket the server lost (memory storage restarted, a
        store replaced) is created again, as the log does its own, and `op` run again."""
        try:
            try:
                return await op()
            except _BUCKET_GONE:
                self._bucket = await _bound(self._js, self._config)
                return await op()
        except NATS_ERRORS as error:
            raise EventLogUnavailable(f"JetStream could not {doing}: {error!r}") from error

    async def claim(self, key: str, fingerprint: str) -> RequestClaim:
        """Claims `key` (create-only), or returns the live claim another call holds."""
        return await self._on_bucket(lambda: self._claim(key, fingerprint), "claim a request id")

    async def _claim(self, key: str, fingerprint: str) -> RequestClaim:
        mine = _value(fingerprint, time.time(), None)
        while True:
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
        value = _value(fingerprint, time.time(), answer)
        await self._on_bucket(lambda: self._bucket.put(key, value), "record a request's answer")

    async def release(self, key: str) -> None:
        """Drops this call's claim, so that a retry asks StackOne."""
        await self._on_bucket(lambda: self._bucket.delete(key), "release a request id")

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


async def _bound(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    """The bucket, created if missing; one made with another window is kept as it is."""
    try:
        return await js.create_key_value(config)
    except nats.js.errors.BadRequestError:
        return await js.key_value(config.bucket)
