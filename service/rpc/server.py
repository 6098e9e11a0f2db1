"""Builds the gRPC server: the one place services, interceptors and options are wired."""

from __future__ import annotations

from typing import Any, Protocol, TypeAlias

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.api.v1 import stackone_connect_pb2 as pb
from service.config import Settings
from service.metrics import Metrics
from service.rpc.auth import AuthInterceptor, ClientRegistry
from service.rpc.interceptor import CallInterceptor
from service.rpc.servicer import ConnectServicer

MethodHandler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["ConnectService"].full_name

_OPTIONS = [
    # Ping idle connections so streams to vanished subscribers are noticed.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


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


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (or mutual TLS) credentials from the configured PEM files, if any."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    client_ca = settings.tls_client_ca_file
    return grpc.ssl_server_credentials(
        [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
        root_certificates=client_ca.read_bytes() if client_ca else None,
        require_client_auth=client_ca is not None,
    )


def connect_service_handlers(servicer: ConnectServicer) -> dict[str, MethodHandler]:
    """ConnectService's method handlers, as the generated `add_..._to_server` makes them.

    Except StreamAccountEvents: its method yields already-serialized responses, which grpc
    sends as they are because the handler has no response serializer.
    """
    return {
        "CreateSession": grpc.unary_unary_rpc_method_handler(
            servicer.CreateSession,
            request_deserializer=pb.CreateSessionRequest.FromString,
            response_serializer=pb.Session.SerializeToString,
        ),
        "GetAccount": grpc.unary_unary_rpc_method_handler(
            servicer.GetAccount,
            request_deserializer=pb.GetAccountRequest.FromString,
            response_serializer=pb.Account.SerializeToString,
        ),
        "ListAccounts": grpc.unary_unary_rpc_method_handler(
            servicer.ListAccounts,
            request_deserializer=pb.ListAccountsRequest.FromString,
            response_serializer=pb.ListAccountsResponse.SerializeToString,
        ),
        "DeleteAccount": grpc.unary_unary_rpc_method_handler(
            servicer.DeleteAccount,
            request_deserializer=pb.DeleteAccountRequest.FromString,
            response_serializer=pb.Account.SerializeToString,
        ),
        "StreamAccountEvents": grpc.unary_stream_rpc_method_handler(
            servicer.stream_account_events,
            request_deserializer=pb.StreamAccountEventsRequest.FromString,
        ),
    }


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
    server = grpc.aio.server(interceptors=interceptors, options=_OPTIONS)
    handlers = connect_service_handlers(servicer)
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
    if credentials is None:
        return server, server.add_insecure_port(settings.grpc_address)
    return server, server.add_secure_port(settings.grpc_address, credentials)
