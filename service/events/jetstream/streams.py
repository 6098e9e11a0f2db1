"""The streams and buckets of the JetStream event log, created or brought to the options
(at start-up, and again when the server is found to have lost them)."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import nats.js.errors
from nats.js.api import DiscardPolicy, KeyValueConfig, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from service.events.jetstream.options import JetStreamOptions

_log = logging.getLogger(__name__)


async def ensure_all(
    js: JetStreamContext, options: JetStreamOptions, *, events_after: int, inbox_after: int
) -> tuple[list[str], KeyValue, KeyValue]:
    """Creates or updates the streams and buckets; the names of the streams that had to
    be created, and the accounts and ids buckets. A stream created anew starts after the
    sequence given for it (0 at first)."""
    created = [
        name
        for name, missing in [
            (options.stream, await _ensure_stream(js, options, after=events_after)),
            (options.inbox_stream, await _ensure_inbox(js, options, after=inbox_after)),
        ]
        if missing
    ]
    accounts, ids = await _ensure_buckets(js, options)
    return created, accounts, ids


def _stream_config(
    options: JetStreamOptions, name: str, subject_prefix: str, **limits: Any
) -> StreamConfig:
    """A stream of ours: its subjects under `subject_prefix`, on the configured storage and
    replicas, with its own `limits` (StreamConfig's fields)."""
    return StreamConfig(
        name=name,
        subjects=[f"{subject_prefix}.>"],
        storage=_storage(options.storage),
        num_replicas=options.replicas,
        **limits,
    )


async def _ensure_inbox(js: JetStreamContext, options: JetStreamOptions, *, after: int) -> bool:
    """Creates the inbox stream, or updates it to the configured limit; True if created."""
    config = _stream_config(
        options,
        options.inbox_stream,
        options.inbox_prefix,
        max_msgs=options.inbox_limit,
        discard=DiscardPolicy.NEW,
        duplicate_window=options.inbox_duplicate_window,
    )
    return await _create_or_update(js, options.inbox_stream, config, after=after)


async def _create_or_update(
    js: JetStreamContext, name: str, config: StreamConfig, *, after: int
) -> bool:
    """Creates the stream `name` with `config` (its first sequence after `after`), or
    brings an existing one to it; True if it was created."""
    try:
        await js.stream_info(name)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(replace(config, first_seq=after + 1 if after else None))
        except nats.js.errors.BadRequestError:
            return False  # another replica created it just now
        return True
    await js.update_stream(config)
    return False


async def _ensure_buckets(
    js: JetStreamContext, options: JetStreamOptions
) -> tuple[KeyValue, KeyValue]:
    """The accounts and ids buckets, created or bound."""
    accounts = await js.create_key_value(
        KeyValueConfig(
            bucket=f"{options.stream}_ACCOUNTS",
            storage=_storage(options.storage),
            replicas=options.replicas,
        )
    )
    ids = await js.create_key_value(
        KeyValueConfig(
            bucket=f"{options.stream}_IDS",
            ttl=options.retention.dedup_window,
            storage=_storage(options.storage),
            replicas=options.replicas,
        )
    )
    return accounts, ids


def _storage(name: str) -> StorageType:
    return StorageType.MEMORY if name == "memory" else StorageType.FILE


async def _ensure_stream(js: JetStreamContext, options: JetStreamOptions, *, after: int) -> bool:
    """Creates the stream, or updates it to the configured limits; True if created."""
    retention = options.retention
    if retention.dedup_window > retention.max_age:
        _log.warning(
            "JetStream caps the duplicate window at the stream's max age: redeliveries are "
            "recognised for %gs, not %gs",
            retention.max_age,
            retention.dedup_window,
        )
    config = _stream_config(
        options,
        options.stream,
        options.subject_prefix,
        max_age=retention.max_age,
        max_msgs=retention.max_count or -1,
        duplicate_window=min(retention.dedup_window, retention.max_age),
    )
    return await _create_or_update(js, options.stream, config, after=after)
