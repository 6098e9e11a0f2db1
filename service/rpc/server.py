"""Builds the gRPC server: the one place services, interceptors and options are wired."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeAlias

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.config import ENV_PREFIX, MAX_COUNT, Settings
from service.events.model import TooManyStreams
from service.metrics import Metrics
from service.rpc.auth import AuthInterceptor, ClientRegistry, read_clients
from service.rpc.interceptor import CallInterceptor, Context
from service.rpc.limits import (
    GRPC_MAX_RECEIVE_BYTES,
    MAX_REQUEST_BYTES,
    MAX_REQUEST_BYTES_BY_METHOD,
)
from service.rpc.methods import CONNECT_METHODS, CONNECT_SERVICE, Method, MethodTableError
from service.rpc.servicer import ConnectServicer
from service.rpc.validation import parse
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
    """grpcio's async health servicer (grpc-stubs only describe the sync one)."""
    servicer: HealthReporter = health.aio.HealthServicer()  # type: ignore[attr-defined]
    return servicer


class TlsFileError(ValueError):
    """A TLS file of the gRPC server cannot be used; the message names its setting."""


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise TlsFileError(
            f"{ENV_PREFIX}{setting}: cannot read {path}: {error.strerror}"
        ) from error


def _check_certificates(pem: bytes, path: Path, setting: str) -> None:
    """Refuses a file holding no PEM certificate (or a damaged one)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cadata=pem.decode())
    except (ValueError, ssl.SSLError) as error:  # UnicodeDecodeError is a ValueError
        raise TlsFileError(
            f"{ENV_PREFIX}{setting}: {path} is not a PEM certificate file"
        ) from error


def _check_key(cert: Path, key: Path) -> None:
    """Refuses a key that is not an unencrypted PEM key, or not the certificate's."""
    try:
        # An empty password: an encrypted key fails here instead of prompting on a terminal.
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=b"")
    except ssl.SSLError as error:
        problem = (
            f"is not the private key of the certificate in {ENV_PREFIX}TLS_CERT_FILE ({cert})"
            if error.reason == "KEY_VALUES_MISMATCH"
            else "is not an unencrypted PEM private key"
        )
        raise TlsFileError(f"{ENV_PREFIX}TLS_KEY_FILE: {key} {problem}") from error


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (or mutual TLS) credentials from the configured PEM files, if any.

    Raises:
        TlsFileError: a file is unreadable or not PEM, or the key is not the certificate's
            (grpc would only fail to bind, blaming the address).
    """
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    cert = _read(settings.tls_cert_file, "TLS_CERT_FILE")
    _check_certificates(cert, settings.tls_cert_file, "TLS_CERT_FILE")
    key = _read(settings.tls_key_file, "TLS_KEY_FILE")
    _check_key(settings.tls_cert_file, settings.tls_key_file)
    client_ca = None
    if settings.tls_client_ca_file is not None:
        client_ca = _read(settings.tls_client_ca_file, "TLS_CLIENT_CA_FILE")
        _check_certificates(client_ca, settings.tls_client_ca_file, "TLS_CLIENT_CA_FILE")
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def check_files(settings: Settings) -> None:
    """Reads the TLS and clients files as the server will, so that a bad one stops
    start-up before anything starts (`TlsFileError`, `InvalidClientsFile`)."""
    server_credentials(settings)
    if settings.clients_file is not None:
        read_clients(settings.clients_file)


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


def build_grpc_server(
    servicer: ConnectServicer,
    health_servicer: HealthReporter,
    settings: Settings,
    metrics: Metrics,
) -> tuple[grpc.aio.Server, int]:
    """Creates the server with ConnectService, health and reflection, bound as configured.

    Returns the server (not yet started) and the bound port.
    """
    interceptors: list[grpc.aio.ServerInterceptor[Any, Any]] = [
        CallInterceptor(metrics, SERVICE_NAME)
    ]
    if settings.clients_file is not None:
        interceptors.append(AuthInterceptor(ClientRegistry(settings.clients_file), SERVICE_NAME))
    server = grpc.aio.server(interceptors=interceptors, options=_options(settings))
    handlers = connect_service_handlers(servicer, streams=StreamSlots(settings.max_streams))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    credentials = server_credentials(settings)
    try:
        if credentials is None:
            return server, server.add_insecure_port(settings.grpc_address)
        return server, server.add_secure_port(settings.grpc_address, credentials)
    except RuntimeError as error:  # grpc's "Failed to bind to address"
        raise CannotListen(
            f"cannot listen on {settings.grpc_address} ({ENV_PREFIX}GRPC_ADDRESS): {error}"
        ) from error
