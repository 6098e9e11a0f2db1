"""What gRPC tools (grpcurl, `buf curl`, grpc-health-probe) expect of a server: health with
`List`, reflection under both `grpc.reflection.v1` and `v1alpha`, and the descriptors of the
`google.rpc` error details our statuses carry (`service.rpc.status`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
REFLECTION_V1ALPHA: str = reflection.SERVICE_NAME
ERROR_DETAIL_FILES = (status_pb2.DESCRIPTOR.name, error_details_pb2.DESCRIPTOR.name)
"""The files a tool needs to decode grpc-status-details-bin; importing them above puts them
in the default pool, which reflection serves."""


class ListingHealthServicer(health.aio.HealthServicer):  # type: ignore[misc,name-defined]
    """grpcio's async health servicer with `List`, which its proto (and so reflection)
    advertises but grpcio-health-checking 1.85 leaves UNIMPLEMENTED."""

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthListResponse:
        """Every registered service's status, read from the same map `Check` answers from."""
        statuses = {
            name: health_pb2.HealthCheckResponse(status=status)
            for name, status in self._server_status.items()
        }
        return health_pb2.HealthListResponse(statuses=statuses)


def _reflection_v1_file() -> str:
    """Adds `grpc/reflection/v1/reflection.proto` to the default pool, once; its name.

    grpcio-reflection (1.85, the latest) ships only v1alpha. v1 is the same messages, field
    for field, under a new package, so v1alpha's descriptor renamed is v1's and the same
    servicer answers both: its bytes on the wire are identical.
    """
    name = "grpc/reflection/v1/reflection.proto"
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(name)
        return name
    except KeyError:
        pass
    old, new = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    file.name, file.package = name, "grpc.reflection.v1"
    file.options.java_package = "io.grpc.reflection.v1"
    file.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    file.options.ClearField("deprecated")
    for message in file.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = field.type_name.replace(old, new)
    for method in file.service[0].method:
        method.input_type = method.input_type.replace(old, new)
        method.output_type = method.output_type.replace(old, new)
    pool.AddSerializedFile(file.SerializeToString())
    return name


def enable_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Serves reflection v1 and v1alpha for `service_names`, themselves and the health one."""
    _reflection_v1_file()
    names = [
        *service_names,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        REFLECTION_V1,
        REFLECTION_V1ALPHA,
    ]
    servicer = reflection.aio.ReflectionServicer(names)  # type: ignore[attr-defined]
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1_info = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": v1_info}),)
    )
