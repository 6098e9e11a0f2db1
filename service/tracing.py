"""OpenTelemetry traces, configured by the standard `OTEL_*` environment variables.

Tracing is on when an exporter is asked for: an OTLP endpoint
(`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) or
`OTEL_TRACES_EXPORTER` naming one (`otlp`, `console`), and `OTEL_SDK_DISABLED` is not
`true`. Off, nothing is installed: no gRPC interceptor, no aiohttp middleware, no httpx
transport, no exporter; the code paths are those of a build without tracing.

On, the maintained instrumentations make the spans of the front doors and of StackOne's
calls (grpc.aio server interceptor, aiohttp server middleware, httpx transport); this
module adds the spans only this service knows: a budget slot's wait, the verifier's
look-up, folding and recording, reconciliation's sweeps. A span context travels as a W3C
`traceparent` string where it must outlive a request (the inbox, the recorded event).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
    nullcontext,
)
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, TraceFlags, Tracer

DEFAULT_SERVICE_NAME = "stackone-connect"
INSTRUMENTATION_NAME = "stackone_connect"
PROTOCOLS = ("grpc", "http/protobuf")
EXPORTERS = ("otlp", "console", "none")
_SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_TRACEPARENT_LENGTH = 55  # 00-<32 hex>-<16 hex>-<2 hex>


class TracingConfigError(ValueError):
    """An `OTEL_*` variable has a value this service cannot use; the message names it."""


def traceparent_of(context: SpanContext) -> str:
    """The W3C `traceparent` of a span context ('' for an invalid one)."""
    if not context.is_valid:
        return ""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def current_traceparent() -> str:
    """The `traceparent` of the current span ('' outside a span or with tracing off)."""
    return traceparent_of(trace.get_current_span().get_span_context())


def span_context_of(traceparent: str) -> SpanContext | None:
    """The remote span context a stored `traceparent` names (None: empty or malformed)."""
    if len(traceparent) != _TRACEPARENT_LENGTH:
        return None
    parts = traceparent.split("-")
    if len(parts) != 4 or parts[0] != "00":
        return None
    _, trace_id, span_id, flags = parts
    try:
        context = SpanContext(
            int(trace_id, 16),
            int(span_id, 16),
            is_remote=True,
            trace_flags=TraceFlags(int(flags, 16)),
        )
    except ValueError:
        return None
    return context if context.is_valid else None


def parent_of(traceparent: str) -> Context | None:
    """A context whose parent is the span a stored `traceparent` names (None: a root)."""
    remote = span_context_of(traceparent)
    return None if remote is None else trace.set_span_in_context(trace.NonRecordingSpan(remote))


def remote_parent(headers: Mapping[str, str]) -> Context:
    """The context a sender's trace headers (`traceparent`, `tracestate`, baggage) name,
    for a request whose sender is authenticated: only such a sender continues its trace."""
    return propagate.extract(headers)


def links_to(traceparents: Iterable[str]) -> list[Link]:
    """A link to each distinct span the `traceparent`s name (empty ones skipped)."""
    contexts = (span_context_of(value) for value in dict.fromkeys(traceparents))
    return [Link(context) for context in contexts if context is not None]


@dataclass(frozen=True, slots=True)
class Tracing:
    """Where spans go: `provider`, or nowhere (None) with tracing off."""

    provider: TracerProvider | None = None

    @property
    def enabled(self) -> bool:
        """True when spans are made and exported."""
        return self.provider is not None

    def tracer(self) -> Tracer:
        """The tracer of this service's own spans (a no-op tracer with tracing off)."""
        if self.provider is None:
            return trace.NoOpTracer()
        return self.provider.get_tracer(INSTRUMENTATION_NAME)

    def grpc_interceptors(
        self, trusts: Callable[[Any], bool] = lambda context: True
    ) -> list[grpc.aio.ServerInterceptor[Any, Any]]:
        """The grpc.aio server interceptor that makes each call a span (none when off),
        continuing the caller's trace only when `trusts` says the call's caller is known
        (asked with the call's context as its span starts, after authentication): an
        unknown sender's `traceparent` neither parents the span nor decides its sampling."""
        if self.provider is None:
            return []
        # Instrumentations are imported only when on: off, they cost no start-up either.
        from opentelemetry.instrumentation.grpc import _aio_server
        from opentelemetry.instrumentation.grpc.filters import health_check, negate

        # The instrumentation attaches the caller's context in this (private) method; a
        # rename upstream fails tests/runtime/test_untrusted_input.py, never silently trusts.
        class TrustingInterceptor(_aio_server.OpenTelemetryAioServerInterceptor):
            @contextmanager
            def _set_remote_context(self, servicer_context: Any) -> Iterator[None]:
                if not trusts(servicer_context):
                    yield  # the span is a root: this service's sampler decides
                    return
                with super()._set_remote_context(servicer_context):
                    yield

        tracer = self.provider.get_tracer("opentelemetry.instrumentation.grpc")
        # Health probes, every few seconds from each prober, would be most of the traces
        # and tell nothing.
        interceptor: grpc.aio.ServerInterceptor[Any, Any] = TrustingInterceptor(  # type: ignore[no-untyped-call]
            tracer, filter_=negate(health_check())
        )
        return [interceptor]

    def server_span(
        self, name: str, *, started_ns: int, parent: Context | None, attributes: dict[str, str]
    ) -> AbstractContextManager[Span | None]:
        """A server span begun at `started_ns` (time.time_ns) and made current for the
        block, in `parent`'s trace or a trace of its own (None: this service's sampler
        decides); no span at all when off. For a door that can only tell whether its
        sender is authenticated after reading the request."""
        if self.provider is None:
            return nullcontext()
        return self.tracer().start_as_current_span(
            name,
            context=parent if parent is not None else Context(),
            kind=SpanKind.SERVER,
            attributes=attributes,
            start_time=started_ns,
        )

    def grpc_client_interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        """grpc.aio client interceptors that make each call a span and send its context
        as `traceparent` metadata (none when off): for the CLI and the example app."""
        if self.provider is None:
            return []
        from opentelemetry.instrumentation.grpc import aio_client_interceptors

        interceptors: list[grpc.aio.ClientInterceptor] = aio_client_interceptors(  # type: ignore[no-untyped-call]
            tracer_provider=self.provider
        )
        return interceptors

    def aiohttp_middlewares(self) -> list[Any]:
        """The aiohttp server middleware that starts a span per request (none when off)."""
        if self.provider is None:
            return []
        from opentelemetry.instrumentation.aiohttp_server import (
            AioHttpServerInstrumentor,
            create_aiohttp_middleware,
        )

        # The middleware reads module state (excluded URLs, its meters) that only the
        # instrumentor sets, while it replaces web.Application process-wide: instrumented
        # and restored at once, the state stays and every other app is left as it was.
        instrumentor = AioHttpServerInstrumentor()
        if not instrumentor.is_instrumented_by_opentelemetry:
            with warnings.catch_warnings():
                # Its web.Application subclass, which aiohttp discourages, goes at once.
                warnings.simplefilter("ignore", DeprecationWarning)
                instrumentor.instrument()
            instrumentor.uninstrument()
        return [create_aiohttp_middleware(tracer_provider=self.provider)]

    def http_transport(
        self, transport: httpx.AsyncBaseTransport | None, limits: httpx.Limits
    ) -> httpx.AsyncBaseTransport | None:
        """`transport` (or httpx's own, with `limits`) wrapped so each request is a client
        span carrying the context on; `transport` itself when off."""
        if self.provider is None:
            return transport
        from opentelemetry.instrumentation.httpx import AsyncOpenTelemetryTransport

        inner = transport or httpx.AsyncHTTPTransport(limits=limits)
        return AsyncOpenTelemetryTransport(inner, tracer_provider=self.provider)

    def shutdown(self) -> None:
        """Exports what is buffered and stops the exporters (blocks up to their timeout)."""
        if self.provider is not None:
            self.provider.shutdown()


OFF = Tracing()


@asynccontextmanager
async def traced_budget_wait(
    tracer: Tracer, slot: AbstractAsyncContextManager[None], budget_class: str
) -> AsyncIterator[None]:
    """Holds `slot` (a rate budget's) for the block; the wait for it is a span saying the
    budget class and the seconds waited (a refusal, `BudgetExhausted`, is its error)."""
    with tracer.start_as_current_span(
        "stackone budget wait", attributes={"stackone.budget.class": budget_class}
    ) as span:
        started = time.perf_counter()
        await slot.__aenter__()
        span.set_attribute("stackone.budget.wait_seconds", time.perf_counter() - started)
    try:
        yield
    except BaseException as error:
        if not await slot.__aexit__(type(error), error, error.__traceback__):
            raise
    else:
        await slot.__aexit__(None, None, None)


def _parsed_sampler(environ: Mapping[str, str]) -> Sampler:
    name = environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    if name not in _SAMPLERS:
        raise TracingConfigError(
            f"OTEL_TRACES_SAMPLER: {name!r} is not one of {', '.join(_SAMPLERS)}"
        )
    if name.endswith("traceidratio"):
        raw = environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0")
        try:
            ratio = float(raw)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise TracingConfigError(
                f"OTEL_TRACES_SAMPLER_ARG: {raw!r} is not a ratio between 0 and 1"
            )
        root: Sampler = TraceIdRatioBased(ratio)
    else:
        root = ALWAYS_OFF if name.endswith("always_off") else ALWAYS_ON
    return ParentBased(root) if name.startswith("parentbased_") else root


def _exporter_names(environ: Mapping[str, str]) -> list[str]:
    raw = environ.get("OTEL_TRACES_EXPORTER")
    if raw is None:  # an endpoint alone asks for OTLP
        return ["otlp"] if any(environ.get(name) for name in _ENDPOINTS) else []
    names = [name.strip().lower() for name in raw.split(",") if name.strip()]
    for name in names:
        if name not in EXPORTERS:
            raise TracingConfigError(
                f"OTEL_TRACES_EXPORTER: {name!r} is not one of {', '.join(EXPORTERS)}"
            )
    return [name for name in names if name != "none"]


def _otlp_exporter(environ: Mapping[str, str]) -> SpanExporter:
    variable = (
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
        if "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" in environ
        else "OTEL_EXPORTER_OTLP_PROTOCOL"
    )
    protocol = environ.get(variable, "http/protobuf").strip().lower()  # the spec's default
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter()  # endpoint, headers, TLS, timeout: from the OTEL_* variables
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        return HttpExporter()
    raise TracingConfigError(f"{variable}: {protocol!r} is not one of {', '.join(PROTOCOLS)}")


def _resource() -> Resource:
    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return resource


def with_processors(processors: Sequence[SpanProcessor], sampler: Sampler = ALWAYS_ON) -> Tracing:
    """Tracing on, its spans handed to `processors` (tests use an in-memory exporter)."""
    provider = TracerProvider(sampler=sampler, resource=_resource())
    for processor in processors:
        provider.add_span_processor(processor)
    return Tracing(provider)


def from_environment(environ: Mapping[str, str] = os.environ) -> Tracing:
    """Tracing as the `OTEL_*` variables configure it; `OFF` when they ask for no exporter.

    Raises:
        TracingConfigError: a variable has a value that cannot be used.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return OFF
    names = _exporter_names(environ)
    if not names:
        return OFF
    sampler = _parsed_sampler(environ)
    exporters = [
        _otlp_exporter(environ) if name == "otlp" else ConsoleSpanExporter() for name in names
    ]
    return with_processors([BatchSpanProcessor(exporter) for exporter in exporters], sampler)
