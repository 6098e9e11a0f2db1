"""Calls a caller can retry: `CreateSession` and `DeleteAccount` with a `request_id`
(AIP-155).

The first call with a request id claims it in the log's storage (`RequestRecords`), asks
StackOne and records the answer; a later call with the same id from the same client,
within the window, is answered from that record on any replica. A call that finds the id
claimed by one still in flight (a retry that overtook the call it repeats, perhaps on
another replica) waits for that call's answer for as long as it may wait on StackOne,
then gets UNAVAILABLE (`RequestInProgress`), which the clients retry. A failed call
releases its claim, so that its retry asks StackOne again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeAlias, TypeVar

from google.protobuf.message import Message

from service.events.log import RequestRecords
from service.rpc.audit import CALLER
from service.rpc.validation import FieldViolation, InvalidRequest
from stackone_connect.v1 import stackone_connect_pb2 as pb

_log = logging.getLogger(__name__)
_FIRST_LOOK = 0.02  # seconds between looks at a claim in flight, doubling
_LONGEST_LOOK = 0.5
_UUID_CHARS = 45  # the longest form uuid.UUID reads ("urn:uuid:" and 36)


_Retryable: TypeAlias = pb.CreateSessionRequest | pb.DeleteAccountRequest
_Answer = TypeVar("_Answer", bound=Message)


class RequestInProgress(Exception):
    """A call with the same request id is still in flight; retry with the same id."""


def _key(method: str, request_id: str) -> str:
    """The record's key: the client, the method and the id, hashed (bounded, and safe
    as a bucket key)."""
    try:
        parsed = uuid.UUID(request_id) if len(request_id) <= _UUID_CHARS else None
    except ValueError:
        parsed = None
    if parsed is None:
        quoted = request_id[:40] + ("…" if len(request_id) > 40 else "")
        example = uuid.uuid4()
        raise InvalidRequest(
            [FieldViolation("request_id", f"must be a UUID such as {example} (got {quoted!r})")]
        )
    named = f"{CALLER.get() or ''}\n{method}\n{parsed}"
    return hashlib.sha256(named.encode()).hexdigest()


def _fingerprint(request: _Retryable) -> str:
    """The request without its id: what a retry must repeat exactly."""
    bare = type(request)()
    bare.CopyFrom(request)  # type: ignore[arg-type]  # (the same type)
    bare.request_id = ""
    return hashlib.sha256(bare.SerializeToString(deterministic=True)).hexdigest()


class RetryableCalls:
    """Answers a call with a request id once, from the records every replica shares."""

    def __init__(self, records: RequestRecords) -> None:
        self._records = records
        self._running: set[asyncio.Task[object]] = set()

    async def once(
        self,
        method: str,
        request: _Retryable,
        answer_type: type[_Answer],
        call: Callable[[], Awaitable[_Answer]],
        *,
        wait: float,
    ) -> _Answer:
        """`call`'s answer, made at most once per request id; a call in flight with the
        same id is waited for up to `wait` seconds. Once claimed, the call runs to its end
        in a task of its own, so that a caller giving up (its deadline) does not cut short
        a change StackOne was asked for: its answer is recorded for the retry."""
        if not request.request_id:
            return await call()
        key, fingerprint = _key(method, request.request_id), _fingerprint(request)
        work = asyncio.get_running_loop().create_task(
            self._answered(method, key, fingerprint, answer_type, call, wait)
        )
        self._running.add(work)  # kept to its end, whoever waits for it
        work.add_done_callback(self._running.discard)
        return await asyncio.shield(work)

    async def _answered(
        self,
        method: str,
        key: str,
        fingerprint: str,
        answer_type: type[_Answer],
        call: Callable[[], Awaitable[_Answer]],
        wait: float,
    ) -> _Answer:
        loop = asyncio.get_running_loop()
        give_up, look = loop.time() + wait, _FIRST_LOOK
        while not (claim := await self._records.claim(key, fingerprint)).mine:
            if claim.fingerprint != fingerprint:
                raise InvalidRequest(
                    [
                        FieldViolation(
                            "request_id",
                            f"was already used for a different {method} request; a new "
                            "request needs a new UUID (a retry must repeat the request exactly)",
                        )
                    ]
                )
            if claim.answer is not None:
                return answer_type.FromString(claim.answer)
            if loop.time() + look > give_up:
                raise RequestInProgress(
                    f"a {method} call with this request_id is still in progress; retry "
                    "with the same request_id to get its answer"
                )
            await asyncio.sleep(look)  # polls the shared storage: the call may be elsewhere
            look = min(look * 2, _LONGEST_LOOK)
        try:
            answer = await call()
        except BaseException:
            with contextlib.suppress(Exception):  # else the claim lapses after the lease
                await self._records.release(key)
            raise
        try:
            await self._records.answer(key, fingerprint, answer.SerializeToString())
        except Exception:  # StackOne made the change: the caller must hear of it
            _log.warning("the answer of a %s call was not recorded for retries", method)
        return answer
