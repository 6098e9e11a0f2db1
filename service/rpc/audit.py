"""The audit trail: who created sessions, who deleted accounts, who was turned away.

Every `CreateSession` and `DeleteAccount`, and every call denied by authentication or
authorization, leaves one record (`AuditRecord`): time, client (null: anonymous), peer,
method, owner ids, account ids, outcome code, what StackOne was asked to change and
answered (`service.stackone.change`), request id (`x-request-id`) and the request's own
`request_id` that makes it retryable (`request_uuid`). Never a token, a session token, a
secret or any other field of the request. A mutating call is recorded whatever happens to
its caller: the code is the one the caller saw (CANCELLED, DEADLINE_EXCEEDED included),
and `upstream` says whether StackOne made the change anyway (see
`service.rpc.interceptor`, which waits for StackOne's answer to a change already sent).

The sink (`STACKONE_CONNECT_AUDIT_SINK`) is a JSON-lines file, `AuditFile`, whose records
are written and fsync'd before the call answers, so a record outlives a crash of the
process once its call has answered; or the service log, `AuditLog`. With
`STACKONE_CONNECT_AUDIT_FAIL_CLOSED`, a mutating call first writes a record of its start
(`"stage": "started"`), as Vault's and Kubernetes' audit logs record a request before it
is served, and is refused with UNAVAILABLE, before anything is done, when that record
cannot be written. Its outcome follows as a second record (`"stage": "ended"`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import grpc
import orjson
from google.protobuf.message import DecodeError, Message

from service.logs import REQUEST_ID
from service.metrics import Metrics
from service.rpc.methods import CONNECT_METHODS
from service.stackone.change import UpstreamChange

_log = logging.getLogger(__name__)

CALLER: ContextVar[str | None] = ContextVar("caller", default=None)
"""The name of the client making the call, once authentication knows it (None: anonymous)."""

MUTATING_METHODS = frozenset(
    {
        "CreateSession",
        "DeleteAccount",
        "CreateSubscription",
        "UpdateSubscription",
        "DeleteSubscription",
        "SeekSubscription",
    }
)
"""Methods audited on every call, whatever their outcome."""
DENIED_CODES = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})
"""Outcomes audited for every method: the calls authentication or authorization refused."""
LOG_SINK = "log"
"""`STACKONE_CONNECT_AUDIT_SINK`'s value that sends records to the service log."""

# A denied request is whatever the caller sent: the ids recorded from it are bounded.
MAX_IDS = 20
MAX_ID_CHARS = 256
_REQUESTS = {method.name: method.request for method in CONNECT_METHODS}


class AuditUnavailable(Exception):
    """An audit record could not be written; the message says why."""


@dataclass(slots=True)
class AuditRecord:
    """What one audited call did, as far as the record may say."""

    method: str
    peer: str
    request_id: str | None
    client: str | None
    owner_ids: list[str] = field(default_factory=list)
    account_ids: list[str] = field(default_factory=list)
    upstream: UpstreamChange = field(default_factory=UpstreamChange)
    request_uuid: str | None = None  # the request's own `request_id` (AIP-155), if set

    def line(self, stage: str, code: grpc.StatusCode | None) -> dict[str, Any]:
        """The record as written, stamped now (a start record says nothing of StackOne yet)."""
        return {
            "time": datetime.now(UTC).isoformat(timespec="microseconds"),
            "stage": stage,
            "client": self.client,
            "peer": self.peer,
            "method": self.method,
            "owner_ids": self.owner_ids,
            "account_ids": self.account_ids,
            "code": None if code is None else code.name,
            "upstream": None if code is None else self.upstream.line(),
            "request_id": self.request_id,
            "request_uuid": self.request_uuid,
        }


def _bounded(values: Iterable[str]) -> list[str]:
    return [value[:MAX_ID_CHARS] for value, _ in zip(values, range(MAX_IDS), strict=False)]


def _ids(message: Message, *names: str) -> list[str]:
    """The values of whichever of the string fields `names` the message has."""
    found: list[str] = []
    fields = message.DESCRIPTOR.fields_by_name
    for name in names:
        if name not in fields:
            continue
        value = getattr(message, name)
        found.extend([value] if isinstance(value, str) else value)
    return _bounded(value for value in found if value)


def new_record(
    method: str, raw_request: bytes, context: grpc.aio.ServicerContext[Any, Any]
) -> AuditRecord:
    """The record of a call: who, from where, and the owners and accounts it names."""
    record = AuditRecord(method, context.peer(), REQUEST_ID.get(), CALLER.get())
    try:
        request = _REQUESTS[method].FromString(raw_request)
    except (DecodeError, KeyError, TypeError):  # TypeError: a client stream's iterator
        return record  # a request that does not parse names nothing
    record.owner_ids = _ids(request, "origin_owner_id", "origin_owner_ids")
    record.account_ids = _ids(request, "account_id", "account_ids")
    record.request_uuid = next(iter(_ids(request, "request_id")), None)
    return record


class AuditSink(Protocol):
    """Where records go."""

    async def write(self, line: dict[str, Any]) -> None:
        """Writes one record durably; raises `AuditUnavailable` when it cannot."""

    async def close(self) -> None:
        """Writes what is pending and stops."""


class AuditLog:
    """Records as lines of the service log (as durable as the log's own collection)."""

    async def write(self, line: dict[str, Any]) -> None:
        """Logs the record under the `audit` key."""
        _log.info(
            "audit: %s %s", line["method"], line["code"] or line["stage"], extra={"audit": line}
        )

    async def close(self) -> None:
        """Nothing to flush."""


class AuditFile:
    """Records appended to a JSON-lines file by a thread of its own: whatever is pending
    goes in one write and one fsync (group commit), so the event loop never waits on the
    disk and concurrent calls share an fsync. A record's `write` returns once it is on disk.

    A file moved or removed (log rotation) is created again at its path. A failed write is
    cut off (the file is truncated back), so the records around it stay whole lines.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd = self._open()  # OSError: the path cannot be written at all
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._wake = threading.Condition()
        self._closing = False
        self.commits = 0  # group commits so far (each one write and one fsync)
        self._thread = threading.Thread(target=self._run, name="audit-file", daemon=True)
        self._thread.start()

    def _open(self) -> int:
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:  # a new file's name must survive a crash too
            directory = os.open(self._path.parent, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return fd  # (a device such as /dev/null has nothing to sync)
        try:
            os.fsync(directory)
        except OSError:
            pass
        finally:
            os.close(directory)
        return fd

    async def write(self, line: dict[str, Any]) -> None:
        """Appends the record; returns once it is fsync'd, or raises `AuditUnavailable`."""
        done = asyncio.get_running_loop().create_future()
        with self._wake:
            if self._closing:
                raise AuditUnavailable("the audit file is closed")
            self._pending.append((orjson.dumps(line) + b"\n", done))
            self._wake.notify()
        await done

    async def close(self) -> None:
        """Lets the thread write what is pending, then closes the file."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        await asyncio.to_thread(self._thread.join)
        os.close(self._fd)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._closing:
                    self._wake.wait()
                batch, self._pending = self._pending, []
            if not batch:
                return  # closing, and nothing left
            error = self._commit(b"".join(data for data, _ in batch))
            self.commits += 1
            futures = [done for _, done in batch]
            futures[0].get_loop().call_soon_threadsafe(_settle, futures, error)

    def _commit(self, data: bytes) -> AuditUnavailable | None:
        size = None
        try:
            self._reopen_if_moved()
            size = os.fstat(self._fd).st_size
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError as error:
            if size is not None:
                with contextlib.suppress(OSError):  # a device, or the disk is gone
                    os.ftruncate(self._fd, size)
            return AuditUnavailable(f"cannot write the audit file {self._path}: {error.strerror}")
        return None

    def _reopen_if_moved(self) -> None:
        try:
            same = os.path.samestat(os.stat(self._path), os.fstat(self._fd))
        except FileNotFoundError:
            same = False
        if not same:
            fd = self._open()
            os.close(self._fd)
            self._fd = fd


def _settle(futures: list[asyncio.Future[None]], error: AuditUnavailable | None) -> None:
    for done in futures:
        if done.done():
            continue  # its call was cancelled meanwhile
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)


class AuditTrail:
    """Decides which calls are recorded and writes their records to a sink."""

    def __init__(self, sink: AuditSink, *, fail_closed: bool, metrics: Metrics) -> None:
        self._sink = sink
        self.fail_closed = fail_closed
        self._written = metrics.audit_records.labels("written")
        self._failed = metrics.audit_records.labels("failed")

    async def started(self, record: AuditRecord) -> None:
        """Fail-closed only: records a mutating call's start, or raises `AuditUnavailable`
        so that it is refused before anything is done."""
        if self.fail_closed:
            await self._write(record.line("started", None))

    async def ended(self, record: AuditRecord, code: grpc.StatusCode) -> None:
        """Records a call's outcome; a record that cannot be written is logged and counted
        (the call has happened)."""
        with contextlib.suppress(AuditUnavailable):  # logged: the call has happened anyway
            await self._write(record.line("ended", code))

    async def _write(self, line: dict[str, Any]) -> None:
        try:
            await self._sink.write(line)
        except AuditUnavailable as error:
            self._failed.inc()
            _log.error("audit record not written: %s", error, extra={"audit": line})
            raise
        self._written.inc()

    async def close(self) -> None:
        """Closes the sink."""
        await self._sink.close()


def open_sink(setting: str) -> AuditSink:
    """The sink `STACKONE_CONNECT_AUDIT_SINK` names; OSError if its file cannot be opened."""
    return AuditLog() if setting == LOG_SINK else AuditFile(Path(setting))
