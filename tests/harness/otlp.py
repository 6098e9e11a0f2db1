"""OTLP trace receivers for tests: the exporter's own protocols, served on loopback.

No collector binary installs here, so these serve what a collector serves: OTLP/HTTP
(`POST /v1/traces`, protobuf) on aiohttp and OTLP/gRPC (`TraceService/Export`) on
grpc.aio, decoding each `ExportTraceServiceRequest` with opentelemetry-proto.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from service.web import listening

TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
SERVER = Span.SPAN_KIND_SERVER
CLIENT = Span.SPAN_KIND_CLIENT


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as a collector received it."""

    service_name: str
    name: str
    kind: int
    trace_id: int
    span_id: int
    parent_span_id: int | None
    attributes: dict[str, Any]
    links: tuple[tuple[int, int], ...]  # (trace id, span id)


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


@dataclass
class OtlpReceiver:
    """What arrived: every span, and the export requests counted."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    exports: int = 0

    def receive(self, request: ExportTraceServiceRequest) -> None:
        """Records the spans of one export request."""
        self.exports += 1
        for resource_spans in request.resource_spans:
            service = str(_attributes(resource_spans.resource.attributes).get("service.name"))
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        ReceivedSpan(
                            service_name=service,
                            name=span.name,
                            kind=span.kind,
                            trace_id=int.from_bytes(span.trace_id, "big"),
                            span_id=int.from_bytes(span.span_id, "big"),
                            parent_span_id=(
                                int.from_bytes(span.parent_span_id, "big")
                                if span.parent_span_id
                                else None
                            ),
                            attributes=_attributes(span.attributes),
                            links=tuple(
                                (
                                    int.from_bytes(link.trace_id, "big"),
                                    int.from_bytes(link.span_id, "big"),
                                )
                                for link in span.links
                            ),
                        )
                    )

    def of_trace(self, trace_id: int) -> list[ReceivedSpan]:
        """The spans received of one trace."""
        return [span for span in self.spans if span.trace_id == trace_id]


@asynccontextmanager
async def otlp_http_receiver() -> AsyncIterator[tuple[OtlpReceiver, str]]:
    """An OTLP/HTTP receiver on loopback; yields it and the endpoint to export to."""
    receiver = OtlpReceiver()

    async def export(request: web.Request) -> web.Response:
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415)
        receiver.receive(ExportTraceServiceRequest.FromString(await request.read()))
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    app = web.Application()
    app.router.add_post("/v1/traces", export)
    async with listening(app, "127.0.0.1", 0) as served:
        yield receiver, served.base_url


@asynccontextmanager
async def otlp_grpc_receiver() -> AsyncIterator[tuple[OtlpReceiver, str]]:
    """An OTLP/gRPC receiver on loopback; yields it and the endpoint to export to."""
    receiver = OtlpReceiver()

    async def export(
        request: ExportTraceServiceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ExportTraceServiceResponse:
        receiver.receive(request)
        return ExportTraceServiceResponse()

    handler = grpc.unary_unary_rpc_method_handler(
        export,
        request_deserializer=ExportTraceServiceRequest.FromString,
        response_serializer=ExportTraceServiceResponse.SerializeToString,
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(TRACE_SERVICE, {"Export": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield receiver, f"http://127.0.0.1:{port}"
    finally:
        await server.stop(None)
