"""The one server interceptor every RPC passes through.

For each call it sets the request id that log lines carry, maps domain exceptions to
gRPC statuses (`service.rpc.status`), and records the call's code and latency.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from grpc_status import rpc_status

from service.logs import REQUEST_ID, request_id_from
from service.metrics import Metrics
from service.rpc.audit import (
    CALLER,
    DENIED_CODES,
    MUTATING_METHODS,
    AuditRecord,
    AuditTrail,
    new_record,
)
from service.rpc.grpc_typing import ServerInterceptor
from service.rpc.status import status_for
from service.stackone.change import UPSTREAM_CHANGE

if TYPE_CHECKING:
    from service.rpc.grpc_typing import Continuation, Handler

Context = grpc.aio.ServicerContext[Any, Any]
REQUEST_ID_HEADER = "x-request-id"
CANCEL_MARGIN = 0.05
"""Seconds before its deadline within which a cancelled call is taken to have been ended by
its deadline: the caller's own timer fires first, and its cancellation can reach the server
before the server's deadline (the caller's as it arrived, so a little later) passes."""


class MethodInterceptor(ServerInterceptor, ABC):
    """Base of the interceptors of one service: health and reflection pass through.

    Subclasses see only that service's methods, by name, with the handler to wrap.
    """

    def __init__(self, service_name: str) -> None:
        self._prefix = f"/{service_name}/"

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        """Hands the service's methods to `intercept_method`; others pass through."""
        # None for an unknown method, though grpc-stubs do not say so.
        handler: Handler | None = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(self._prefix):
            return handler  # type: ignore[return-value]
        return self.intercept_method(
            method.removeprefix(self._prefix), handler, handler_call_details
        )

    @abstractmethod
    def intercept_method(
        self, method: str, handler: Handler, details: grpc.HandlerCallDetails
    ) -> Handler:
        """The handler that serves `method` in place of `handler`."""


def replace_behaviour(
    handler: Handler,
    *,
    unary: Callable[..., Awaitable[Any]] | None = None,
    stream: Callable[..., AsyncIterator[Any]] | None = None,
) -> Handler:
    """A handler of the same kind and serializers as `handler` that runs the given behaviour."""
    options = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_stream is not None and stream is not None:
        return grpc.unary_stream_rpc_method_handler(stream, **options)
    if handler.stream_stream is not None and stream is not None:  # its request: an iterator
        return grpc.stream_stream_rpc_method_handler(stream, **options)
    if handler.unary_unary is not None and unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary, **options)
    raise TypeError("no behaviour given for this kind of handler")


class _MethodMetrics:
    """One method's labelled metrics, looked up once rather than on every call
    (prometheus_client's `labels()` takes a lock and builds a key each time)."""

    __slots__ = ("_method", "_metrics", "_outcomes", "seconds")

    def __init__(self, method: str, metrics: Metrics) -> None:
        self._method = method
        self._metrics = metrics
        self._outcomes: dict[grpc.StatusCode, Any] = {}
        self.seconds = metrics.rpc_seconds.labels(method)

    def count(self, code: grpc.StatusCode) -> None:
        """Counts one call that ended with `code`."""
        counter = self._outcomes.get(code)
        if counter is None:
            counter = self._outcomes[code] = self._metrics.rpcs.labels(self._method, code.name)
        counter.inc()


class _Call:
    """Book-keeping of one RPC: request id, timing, outcome."""

    __slots__ = ("context", "metrics", "started")

    def __init__(self, metrics: _MethodMetrics, context: Context) -> None:
        self.metrics = metrics
        self.context = context
        self.started = time.perf_counter()
        metadata = dict(context.invocation_metadata() or ())
        supplied = metadata.get(REQUEST_ID_HEADER)
        REQUEST_ID.set(request_id_from(supplied))

    async def fail(self, error: Exception) -> NoReturn:
        """Ends the call with the status that reports `error`."""
        await self.end(self.failure(error))

    def failure(self, error: Exception) -> grpc.Status:
        """Counts the call as failed with the status that reports `error`, and returns it."""
        status = rpc_status.to_status(status_for(error))
        self.finish(status.code)
        # Its traceback holds the handler's frames, and so the request, however big, until
        # the garbage collector finds the cycle; the status says all the caller needs.
        error.__traceback__ = None
        return status

    async def end(self, status: grpc.Status) -> NoReturn:
        """Ends the call with `status`."""
        await self.context.abort(status.code, status.details, status.trailing_metadata)

    def aborted(self) -> grpc.StatusCode:
        """Counts a call that an inner layer (such as authentication) ended; its code."""
        code: grpc.StatusCode = self.context.code()
        self.finish(code)
        return code

    def finish(self, code: grpc.StatusCode, *, timed: bool = True) -> None:
        """Counts the call's outcome (and its latency, for unary calls)."""
        self.metrics.count(code)
        if timed:
            self.metrics.seconds.observe(time.perf_counter() - self.started)


class CallInterceptor(MethodInterceptor):
    """Request ids, error statuses, metrics and (given a trail) audit records for the RPCs
    of one service."""

    def __init__(
        self, metrics: Metrics, service_name: str, audit: AuditTrail | None = None
    ) -> None:
        super().__init__(service_name)
        self._metrics = metrics
        self._audit = audit
        # Wrapped once per method, not per call: a handler and a closure per open stream
        # would cost ~0.5 KiB each.
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}
        self.wraps = 0  # handlers wrapped so far: one per method, whatever the calls

    def intercept_method(
        self, method: str, handler: Handler, details: grpc.HandlerCallDetails
    ) -> Handler:
        """Wraps the method's behaviour with its book-keeping."""
        wrapped = self._wrapped.get(method)
        if wrapped is None or wrapped[0] is not handler:
            wrapped = self._wrapped[method] = (handler, self._wrap(method, handler))
        return wrapped[1]

    def _wrap(self, method: str, handler: Handler) -> Handler:
        self.wraps += 1
        streaming = handler.unary_stream or handler.stream_stream
        if streaming is not None:
            return replace_behaviour(handler, stream=self._stream(method, streaming))
        if handler.unary_unary is not None:
            return replace_behaviour(handler, unary=self._unary(method, handler.unary_unary))
        return handler  # ConnectService has no client-streaming-only methods

    def _unary(self, method: str, inner: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
        metrics = _MethodMetrics(method, self._metrics)
        if self._audit is not None:
            return _audited_unary(method, inner, metrics, self._audit)

        async def unary(request: Any, context: Context) -> Any:
            call = _Call(metrics, context)
            try:
                response = await inner(request, context)
            except grpc.aio.AbortError:
                call.aborted()
                raise
            except Exception as error:  # every error becomes a status
                await call.fail(error)
            call.finish(grpc.StatusCode.OK)
            return response

        return unary

    def _stream(self, method: str, inner: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
        metrics = _MethodMetrics(method, self._metrics)
        audit = self._audit  # a stream is audited only when it is denied

        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            call = _Call(metrics, context)
            try:
                async for item in inner(request, context):
                    yield item
            except asyncio.CancelledError:
                call.finish(grpc.StatusCode.CANCELLED, timed=False)
                raise
            except grpc.aio.AbortError:
                code = call.aborted()
                if audit is not None:
                    await _ended(audit, None, code, method, request, context)
                raise
            except Exception as error:  # every error becomes a status
                status = call.failure(error)
                if audit is not None:
                    await _ended(audit, None, status.code, method, request, context)
                await call.end(status)
            call.finish(grpc.StatusCode.OK, timed=False)

        return stream


def _audited_unary(
    method: str, inner: Callable[..., Any], metrics: _MethodMetrics, audit: AuditTrail
) -> Callable[..., Awaitable[Any]]:
    """As `CallInterceptor._unary`, and the call's audit record written before it answers
    (after its start record, for a mutating call of a fail-closed trail). A mutating call
    is recorded whatever happens to its caller, cancelled or past its deadline included:
    `asyncio.CancelledError` is no `Exception`, so it has a branch of its own."""
    mutating = method in MUTATING_METHODS

    async def unary(request: bytes, context: Context) -> Any:
        call = _Call(metrics, context)
        record = new_record(method, request, context) if mutating else None
        try:
            if record is None:
                response = await inner(request, context)
            else:
                await audit.started(record)  # fail-closed: nothing done without a record
                response = await _mutation(inner, request, context, record)
        except asyncio.CancelledError:
            code = _seen(context, grpc.StatusCode.CANCELLED, margin=CANCEL_MARGIN)
            call.finish(code)
            # Shielded: cancelled again (the server stopping), the record is written still.
            await asyncio.shield(_ended(audit, record, code, method, request, context))
            raise
        except grpc.aio.AbortError:
            await _ended(audit, record, call.aborted(), method, request, context)
            raise
        except Exception as error:  # every error becomes a status
            status = call.failure(error)
            await _ended(audit, record, _seen(context, status.code), method, request, context)
            await call.end(status)
        if record is not None:
            _name_owner(record, response)
        await _ended(audit, record, _seen(context, grpc.StatusCode.OK), method, request, context)
        call.finish(grpc.StatusCode.OK)
        return response

    return unary


async def _mutation(
    inner: Callable[..., Any], request: bytes, context: Context, record: AuditRecord
) -> Any:
    """Runs a mutating call's handler in a task of its own, its StackOne requests recorded
    in `record.upstream`, so that the caller giving up does not cut short a change StackOne
    was already asked for. Cancelled then, it waits for the handler (whose StackOne call
    the call's deadline or the upstream timeout bounds) and StackOne's answer; cancelled
    before StackOne was asked, it cancels the handler, so that nothing is asked after."""
    work_context = contextvars.copy_context()
    work_context.run(UPSTREAM_CHANGE.set, record.upstream)
    work = asyncio.get_running_loop().create_task(inner(request, context), context=work_context)
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        if not record.upstream.asked:
            work.cancel()
        try:
            await asyncio.wait([work])
        except asyncio.CancelledError:
            work.cancel()  # cancelled again (the server stopping): stop waiting for StackOne
        if work.done() and not work.cancelled() and work.exception() is None:
            _name_owner(record, work.result())
        raise
    finally:
        # A certificate's client is only known once the handler has run, in its task.
        record.client = record.client or work_context.get(CALLER)


def _name_owner(record: AuditRecord, response: Any) -> None:
    """Adds a deleted account's owner, as StackOne returned it, to the record's owners."""
    owner = getattr(response, "origin_owner_id", "")
    if owner and owner not in record.owner_ids:
        record.owner_ids = [*record.owner_ids, owner]


def _seen(context: Context, code: grpc.StatusCode, *, margin: float = 0.0) -> grpc.StatusCode:
    """The code the caller sees for a call the server ends with `code`: once the call's
    deadline has passed (or is `margin` seconds away), DEADLINE_EXCEEDED, whatever the
    server sends (the caller's own timer has ended the call: the server's deadline,
    learnt from the caller's, is the later)."""
    remaining: float | None = context.time_remaining()  # None: no deadline; never below 0
    if remaining is not None and remaining <= margin:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return code


async def _ended(
    audit: AuditTrail,
    record: AuditRecord | None,
    code: grpc.StatusCode,
    method: str,
    request: bytes,
    context: Context,
) -> None:
    """Writes the outcome of a mutating call (`record`), or of any call denied; the
    record of a denied read is only made then (most reads are not audited)."""
    if record is None and code not in DENIED_CODES:
        return
    record = record or new_record(method, request, context)
    # A certificate's client is only known once the handler has run.
    record.client = record.client or CALLER.get()
    await audit.ended(record, code)
