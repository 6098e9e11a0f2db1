"""Builds the gRPC server: the one place services, interceptors and options are wired."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol, TypeAlias

import grpc
from grpc_health.v1 import health_pb2_grpc

from service.audit import CALLER, AuditTrail
from service.config import ENV_PREFIX, MAX_COUNT, Settings
from service.events.model import TooManyStreams
from service.metrics import Metrics
from service.rpc.auth import (
    PEER_URI,
    AuthInterceptor,
    ClientRegistry,
    InvalidClientsFile,
    read_clients,
)
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
from service.rpc.tls import server_credentials
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


def _options(settings: Settings) -> list[tuple[str, int]]:
    # HTTP/2's own per-connection limit: a grpc client queues calls past it until one
    # ends; grpc resets the excess of a client ignoring it (RST_STREAM), the rest go on.
    return [*_OPTIONS, ("grpc.max_concurrent_streams", settings.max_streams_per_connection)]


class StreamSlots:
    """The open server-streaming calls, at most `limit` (`STACKONE_CONNECT_MAX_STREAMS`).

    An open stream holds memory (~25 KiB idle) for as long as its subscriber stays, so a
    count of them, not a rate, is what bounds the memory they take.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
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


def check_files(settings: Settings) -> None:
    """Reads the TLS and clients files as the server will, so that a bad one stops
    start-up before anything starts (`TlsFileError`, `InvalidClientsFile`)."""
    server_credentials(settings)
    if settings.clients_file is not None:
        clients = read_clients(settings.clients_file, settings.rate_limit)
        known_by_certificate = [client.name for client in clients if client.certificate_uri]
        if known_by_certificate and settings.tls_client_ca_file is None:
            # No client certificate is ever asked for: such a client could never call.
            raise InvalidClientsFile(
                f"{settings.clients_file}: '{known_by_certificate[0]}' is known by its "
                f"certificate_uri, which needs mutual TLS ({ENV_PREFIX}TLS_CLIENT_CA_FILE)"
            )


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
    streams = streams or StreamSlots(MAX_COUNT)
    handlers: dict[str, MethodHandler] = {}
    for method in methods:
        behaviour = getattr(servicer, method.name, None)
        if behaviour is None:
            raise MethodTableError(
                f"{type(servicer).__name__} has no method {method.name}, "
                "which the proto's ConnectService declares"
            )
        if method.server_streaming:
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
            raise TooManyStreams(streams.limit, f"{ENV_PREFIX}MAX_STREAMS")
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
    settings: Settings,
    metrics: Metrics,
    tracing: Tracing = OFF,
    audit: AuditTrail | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Creates the server with ConnectService, health and reflection, bound as configured
    (with `audit`, its calls' audit records).

    Returns the server (not yet started) and the bound port.
    """
    reloads = metrics.credential_reloads
    clients = None
    if settings.clients_file is not None:
        clients = ClientRegistry(
            settings.clients_file,
            max_calls_per_minute=settings.rate_limit,
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
    server = grpc.aio.server(interceptors=interceptors, options=_options(settings))
    handlers = connect_service_handlers(servicer, streams=StreamSlots(settings.max_streams))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection(server, [SERVICE_NAME])
    credentials = server_credentials(settings, lambda outcome: reloads.labels("tls", outcome).inc())
    try:
        if credentials is None:
            return server, server.add_insecure_port(settings.grpc_address)
        return server, server.add_secure_port(settings.grpc_address, credentials)
    except RuntimeError as error:  # grpc's "Failed to bind to address"
        raise CannotListen(
            f"cannot listen on {settings.grpc_address} ({ENV_PREFIX}GRPC_ADDRESS): {error}"
        ) from error
