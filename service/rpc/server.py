"""Builds the gRPC server: the one place services, interceptors and options are wired."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeAlias

import grpc
from grpc_health.v1 import health_pb2_grpc

from service.events.model import TooManyStreams
from service.metrics import Metrics
from service.rpc.audit import CALLER, AuditTrail
from service.rpc.auth import PEER_URI, AuthInterceptor, ClientRegistry, read_clients
from service.rpc.interceptor import CallInterceptor, Context
from service.rpc.introspection import ListingHealthServicer, enable_reflection
from service.rpc.limits import (
    GRPC_MAX_RECEIVE_BYTES,
    MAX_REQUEST_BYTES,
    MAX_REQUEST_BYTES_BY_METHOD,
)
from service.rpc.methods import CONNECT_METHODS, CONNECT_SERVICE, Method, MethodTableError
from service.rpc.servicer import ConnectServicer
from service.rpc.tls import TlsFileError as TlsFileError  # where the CLI finds it
from service.rpc.tls import TlsMaterial, server_credentials
from service.rpc.validation import parse
from service.tracing import OFF, Tracing
from service.web import CannotListen

MethodHandler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
SERVICE_NAME: str = CONNECT_SERVICE.full_name
REGISTRY_HEALTH = "stackone_connect.v1.AccountRegistry"
"""The health entry of the account registry: SERVING once reads from it are answered from it."""

_OPTIONS = [
    # Ping idle connections so streams to vanished subscribers are noticed.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", GRPC_MAX_RECEIVE_BYTES),
    # grpc binds with SO_REUSEPORT by default: a second service on the same port would
    # start and share its calls. One process per port, as for the other listeners.
    ("grpc.so_reuseport", 0),
]


@dataclass(frozen=True, slots=True)
class GrpcServerOptions:
    """What building the gRPC server takes: values, made by the composition root from the
    settings (this layer reads none).

    Attributes:
        address: `host:port` to bind (port 0 picks a free one).
        tls: where the TLS credentials are read from; None serves plaintext.
        clients_file: the callers' tokens, certificates and scopes; None admits anyone.
        calls_per_minute: the StackOne budget a client's share is taken from.
        max_streams: most open server-streaming calls at once.
        max_streams_per_connection: HTTP/2's limit of concurrent calls per connection.
        address_setting: what names `address` in a message (the setting it came from).
        max_streams_setting: what names `max_streams` in a message.
    """

    address: str
    tls: TlsMaterial | None = None
    clients_file: Path | None = None
    calls_per_minute: int = 1000
    max_streams: int = sys.maxsize
    max_streams_per_connection: int = 100
    address_setting: str = "the gRPC address"
    max_streams_setting: str = "the stream limit"


def _options(options: GrpcServerOptions) -> list[tuple[str, int]]:
    # HTTP/2's own per-connection limit: a grpc client queues calls past it until one
    # ends; grpc resets the excess of a client ignoring it (RST_STREAM), the rest go on.
    return [*_OPTIONS, ("grpc.max_concurrent_streams", options.max_streams_per_connection)]


class StreamSlots:
    """The open server-streaming calls, at most `limit`; `setting` names the limit in the
    refusal.

    An open stream holds memory (~25 KiB idle) for as long as its subscriber stays, so a
    count of them, not a rate, is what bounds the memory they take.
    """

    def __init__(self, limit: int, setting: str = "the stream limit") -> None:
        self.limit = limit
        self.setting = setting
        self.open = 0

    def take(self) -> bool:
        """Takes a slot for a new stream; False when every slot is taken."""
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def release(self) -> None:
        """Gives back the slot of a stream that ended."""
        self.open -= 1


class HealthReporter(Protocol):
    """What the lifecycle needs of grpcio's async health servicer."""

    async def set(self, service: str, status: Any) -> None:
        """Sets the serving status of `service` ('' is the whole server)."""

    async def enter_graceful_shutdown(self) -> None:
        """Reports NOT_SERVING for everything and ignores later changes."""


def new_health_servicer() -> HealthReporter:
    """grpcio's async health servicer, with `List` (grpc-stubs only describe the sync one)."""
    servicer: HealthReporter = ListingHealthServicer()
    return servicer


def check_files(options: GrpcServerOptions) -> list[str]:
    """Reads the TLS and clients files as the server will, so that a bad one stops
    start-up before anything starts (`TlsFileError`, `InvalidClientsFile`); returns the
    names of the clients known by their certificate, which only mutual TLS admits."""
    server_credentials(options.tls)
    if options.clients_file is None:
        return []
    clients = read_clients(options.clients_file, options.calls_per_minute)
    return [client.name for client in clients if client.certificate_uri]


def connect_service_handlers(
    servicer: object,
    methods: Sequence[Method] = CONNECT_METHODS,
    streams: StreamSlots | None = None,
) -> dict[str, MethodHandler]:
    """A handler for each method of the proto, calling the servicer's method of that name.

    Requests arrive as bytes (no request deserializer) and are parsed by the handler, so
    that bytes that are not the request message are `INVALID_ARGUMENT` like any other bad
    request (grpc would answer UNKNOWN and log an error), after authentication.
    Server-streaming methods yield already-serialized responses (`service.rpc.wire`), which
    grpc sends as they are because their handler has no response serializer; each takes
    one of `streams` (no limit without it) or is refused with RESOURCE_EXHAUSTED.
    """
    streams = streams or StreamSlots(sys.maxsize)
    handlers: dict[str, MethodHandler] = {}
    for method in methods:
        behaviour = getattr(servicer, method.name, None)
        if behaviour is None:
            raise MethodTableError(
                f"{type(servicer).__name__} has no method {method.name}, "
                "which the proto's ConnectService declares"
            )
        if method.client_streaming:  # requests arrive as bytes; the behaviour parses them
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(behaviour)
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _parsing_stream(behaviour, method, streams)
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _parsing_unary(behaviour, method),
                response_serializer=method.response.SerializeToString,
            )
    return handlers


def _parse(raw: bytes, method: Method) -> Any:
    limit = MAX_REQUEST_BYTES_BY_METHOD.get(method.name, MAX_REQUEST_BYTES)
    return parse(raw, method.request, limit)


def _parsing_unary(behaviour: Callable[..., Any], method: Method) -> Callable[..., Any]:
    async def unary(raw: bytes, context: Context) -> Any:
        return await behaviour(_parse(raw, method), context)

    return unary


def _parsing_stream(
    behaviour: Callable[..., AsyncIterator[Any]], method: Method, streams: StreamSlots
) -> Callable[..., AsyncIterator[Any]]:
    # The slot is counted here, in the layer every stream has anyway: one more async
    # generator per stream would cost memory on each.
    async def stream(raw: bytes, context: Context) -> AsyncIterator[Any]:
        if not streams.take():  # the call interceptor turns it into its status
            raise TooManyStreams(streams.limit, streams.setting)
        try:
            async for item in behaviour(_parse(raw, method), context):
                yield item
        finally:
            streams.release()

    return stream


def _known_caller(clients: ClientRegistry | None) -> Callable[[Context], bool]:
    """Whether a call comes from a known client, asked as its span starts (after the auth
    interceptor has found a token's client; a certificate is looked up here): only such
    a caller's trace is continued. Without a clients file every caller is one."""
    if clients is None:
        return lambda context: True
    return lambda context: (
        CALLER.get() is not None
        or (clients.find_by_certificate(context.auth_context().get(PEER_URI, ())) is not None)
    )


def build_grpc_server(
    servicer: ConnectServicer,
    health_servicer: HealthReporter,
    options: GrpcServerOptions,
    metrics: Metrics,
    tracing: Tracing = OFF,
    audit: AuditTrail | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Creates the server with ConnectService, health and reflection, bound as `options`
    say (with `audit`, its calls' audit records).

    Returns the server (not yet started) and the bound port.
    """
    reloads = metrics.credential_reloads
    clients = None
    if options.clients_file is not None:
        clients = ClientRegistry(
            options.clients_file,
            max_calls_per_minute=options.calls_per_minute,
            metrics=metrics,
            reported=lambda outcome: reloads.labels("clients", outcome).inc(),
        )
    # Tracing's first: the calls' log lines, written by the interceptors after it, are
    # made inside its span.
    interceptors: list[grpc.aio.ServerInterceptor[Any, Any]] = [
        *tracing.grpc_interceptors(_known_caller(clients)),
        CallInterceptor(metrics, SERVICE_NAME, audit),
    ]
    if clients is not None:
        interceptors.append(AuthInterceptor(clients, SERVICE_NAME))
    server = grpc.aio.server(interceptors=interceptors, options=_options(options))
    streams = StreamSlots(options.max_streams, options.max_streams_setting)
    handlers = connect_service_handlers(servicer, streams=streams)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection(server, [SERVICE_NAME])
    credentials = server_credentials(
        options.tls, lambda outcome: reloads.labels("tls", outcome).inc()
    )
    try:
        if credentials is None:
            return server, server.add_insecure_port(options.address)
        return server, server.add_secure_port(options.address, credentials)
    except RuntimeError as error:  # grpc's "Failed to bind to address"
        raise CannotListen(
            f"cannot listen on {options.address} ({options.address_setting}): {error}"
        ) from error
