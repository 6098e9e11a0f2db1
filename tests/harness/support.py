"""Helpers shared by the tests."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import orjson
from google.protobuf.struct_pb2 import Struct
from grpc_status import rpc_status

from gateway.app import WEBHOOK_PATH
from gateway.signature import sign
from service.config import ENV_PREFIX, Settings
from service.events.backends import open_event_log
from service.events.log import EventLog
from service.events.tail import DEFAULT_TAIL_BYTES
from service.runtime import event_log_options
from stackone_connect.v1 import stackone_connect_pb2 as pb

WEBHOOK_SECRET = "whsec-test-secret"
_numbers = itertools.count()
_T = TypeVar("_T")


@contextmanager
def in_a_thread(
    opened: Callable[[], AbstractAsyncContextManager[_T]], *, what: str, start_within: float
) -> Iterator[tuple[_T, asyncio.AbstractEventLoop]]:
    """Enters `opened()` on an event loop of its own in a thread, so that sync code (the
    hypothesis tests) can use what it gives, with that loop; leaves it after the block."""
    started: list[tuple[_T, asyncio.AbstractEventLoop, asyncio.Event]] = []
    ready = threading.Event()

    async def run() -> None:
        async with opened() as value:
            stop = asyncio.Event()
            started.append((value, asyncio.get_running_loop(), stop))
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
    thread.start()
    assert ready.wait(start_within), f"{what} did not start"
    value, loop, stop = started[0]
    try:
        yield value, loop
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)


@dataclass(frozen=True)
class LogBackend:
    """An event log's URL, and a JetStream stream of its own when it is shared."""

    url: str
    stream: str = ""

    def settings(self, **retention: Any) -> dict[str, Any]:
        """The settings that select this log (plus any retention overrides)."""
        values: dict[str, Any] = {"event_log_url": self.url, **retention}
        if self.stream:
            values |= {"jetstream_stream": self.stream, "jetstream_subject_prefix": self.stream}
        return values

    def env(self) -> dict[str, str]:
        """The same settings as environment variables, for a `serve` process."""
        return {
            f"{ENV_PREFIX}{name.upper()}": str(value) for name, value in self.settings().items()
        }

    async def open(
        self, *, max_count: int | None = None, tail_bytes: int = DEFAULT_TAIL_BYTES
    ) -> EventLog:
        """Opens (or reopens) the log, as `serve` does with these settings."""
        settings = Settings(**self.settings(retention_max_count=max_count))
        options = replace(event_log_options(settings), tail_bytes=tail_bytes)
        return await open_event_log(options)


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a service on free loopback ports with its own event log."""
    values: dict[str, Any] = {
        "grpc_address": "127.0.0.1:0",
        "gateway_address": "127.0.0.1:0",
        "admin_address": "127.0.0.1:0",
        "emulator_address": "127.0.0.1:0",
        "event_log_url": f"sqlite:///{tmp_path / 'events.db'}",
        "webhook_secrets": [WEBHOOK_SECRET],
        "bookmark_interval": 0.2,
        "shutdown_grace": 1.0,
        "verify_quiet": 0.05,  # events a test waits for appear sooner
        # As for `serve_env`: reconciliation lists StackOne (at once while the registry is
        # not complete), so the tests that exercise it ask for it.
        "reconcile_interval": 0,
    }
    values.update(overrides)
    return Settings(**values)


def signed_headers(body: bytes, secret: str = WEBHOOK_SECRET) -> dict[str, str]:
    """Headers of a webhook delivery signed the way StackOne signs it."""
    return {"content-type": "application/json", "x-stackone-signature": sign(secret, body)}


def webhook(event: str = "account.deleted", account_id: str | None = None, **fields: str) -> bytes:
    """A StackOne-shaped webhook body; deleted events need no StackOne round trip."""
    payload = {
        "event": event,
        "account_id": account_id or f"acct-{next(_numbers)}",
        "provider": "hibob",
        "origin_owner_id": "tenant-1",
        "origin_owner_name": "Tenant One",
        "event_date": "2026-11-24T14:06:49.120Z",
        **fields,
    }
    return orjson.dumps(payload)


async def deliver(http: httpx.AsyncClient, body: bytes) -> httpx.Response:
    """Posts one signed webhook to the gateway `http` is based at."""
    return await http.post(WEBHOOK_PATH, content=body, headers=signed_headers(body))


def details_of(error: grpc.aio.AioRpcError, kind: type[object]) -> list[object]:
    """The rich-status details of one kind attached to a failed call."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "the error carries google.rpc details"
    found = []
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):  # type: ignore[attr-defined]
            unpacked = kind()
            detail.Unpack(unpacked)
            found.append(unpacked)
    return found


async def wait_recorded(log: EventLog, event_ids: Iterable[str], timeout: float = 10) -> int:
    """Returns once the verifier has recorded every webhook id (the gateway only puts
    webhooks in the inbox) and the log's latest cursor shows it; returns the cursor of
    the last event covering them. Woken by each append; fails the test after `timeout`."""
    wanted = set(event_ids)
    async with asyncio.timeout(timeout):
        while True:
            covered: set[str] = set()
            cursor = 0
            for event in await log.read(0, 100_000):
                message = pb.AccountEvent.FromString(event.body)
                ids = {event.event_id, *message.covered_event_ids} & wanted
                if ids:
                    covered |= ids
                    cursor = event.cursor
            # (A commit is readable a moment before the log publishes its latest cursor.)
            if covered == wanted and log.latest_cursor >= cursor:
                return cursor
            await log.wait_for_append(log.latest_cursor, 0.2)


async def inbox_is_empty(log: EventLog) -> bool:
    """True once the verifier settled every accepted webhook (recorded or folded)."""
    return (await log.inbox_stats()).depth == 0


async def eventually(condition: Callable[[], bool | Awaitable[bool]], timeout: float = 5) -> None:
    """Returns once `condition()` holds, checking every 10 ms; for state another server
    owns (an emulator's counters, a metrics page), which offers nothing to wait on."""
    async with asyncio.timeout(timeout):
        while True:
            held = condition()
            if held if isinstance(held, bool) else await held:
                return
            await asyncio.sleep(0.01)


def reloads(credential: str, outcome: str) -> str:
    """The metrics sample counting re-reads of a changed `credential` file with `outcome`."""
    return (
        f'stackone_connect_credential_reloads_total{{credential="{credential}",'
        f'outcome="{outcome}"}}'
    )


async def metric(http: httpx.AsyncClient, sample: str) -> float:
    """One sample of the admin listener's /metrics page (`name{labels}` as exposed); 0 if absent."""
    for line in (await http.get("/metrics")).text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return 0.0


async def more_sweeps(
    gateways: Iterable[httpx.AsyncClient], count: int = 2, *, timeout: float = 10
) -> None:
    """Returns once every service behind `gateways` completed `count` reconciliation
    sweeps begun after this call (the sweep in flight now may have begun before it)."""
    sweeps = 'stackone_connect_reconcile_sweeps_total{outcome="ok"}'
    targets = [(http, await metric(http, sweeps) + count + 1) for http in gateways]

    async def all_swept() -> bool:
        return all([await metric(http, sweeps) >= target for http, target in targets])

    await eventually(all_swept, timeout=timeout)


def loop_lag_counts(exposition: str, seconds: float) -> tuple[int, int]:
    """From a /metrics page: how many event-loop lag measurements there were, and how many
    of them exceeded `seconds` (which must be a bucket boundary of the histogram)."""
    total = at_most = None
    for line in exposition.splitlines():
        if line.startswith("stackone_connect_event_loop_lag_seconds_count "):
            total = int(float(line.split()[1]))
        elif line.startswith(f'stackone_connect_event_loop_lag_seconds_bucket{{le="{seconds}"}} '):
            at_most = int(float(line.split()[1]))
    assert total is not None, "the page has no event-loop lag histogram"
    assert at_most is not None, f"{seconds} is not a bucket boundary of the lag histogram"
    return total, total - at_most


def trailer_bytes(details: str | None, trailers: Any) -> int:
    """Bytes an error's trailers take on the wire: its message (`details`) percent-encoded,
    and every trailer, binary ones in base64. `trailers` as a sync or grpc.aio call gives
    them (pairs either way; grpc-stubs type them as objects with key and value)."""
    message = (details or "").encode()
    size = sum(1 if 0x20 <= byte < 0x7F and byte != 0x25 else 3 for byte in message)
    for key, value in trailers or ():
        size += len(key) + ((len(value) * 4 + 2) // 3 if key.endswith("-bin") else len(value))
    return size


def every_field_session(categories: Iterable[str], **metadata: Any) -> pb.CreateSessionRequest:
    """A CreateSession request with every field set (for the contract and SDK suites)."""
    values = Struct()
    values.update(metadata)
    return pb.CreateSessionRequest(
        origin_owner_id="tenant-5521",
        origin_owner_name="Bluefin Logistics",
        origin_username="it-admin@bluefin.example",
        provider="hibob",
        categories=sorted(categories),
        expires_in=3600,
        label="Bluefin HR",
        metadata=values,
        multiple=True,
        type="test",
        provider_version="2",
    )
