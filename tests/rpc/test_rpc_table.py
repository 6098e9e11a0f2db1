"""One source of truth per RPC: the proto's service descriptor drives every table."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, empty_pb2
from google.protobuf.descriptor import ServiceDescriptor

from service.rpc.auth import METHOD_SCOPES, SCOPES
from service.rpc.methods import CONNECT_METHODS, CONNECT_SERVICE, MethodTableError, methods_of
from service.rpc.server import SERVICE_NAME, connect_service_handlers
from service.runtime import Runtime


def _service_without_scope() -> ServiceDescriptor:
    """A proto file, as `protoc` would describe it, whose one RPC declares no scope."""
    pool = descriptor_pool.DescriptorPool()
    empty = descriptor_pb2.FileDescriptorProto()
    empty_pb2.DESCRIPTOR.CopyToProto(empty)
    pool.Add(empty)
    probe = descriptor_pb2.FileDescriptorProto(
        name="probe.proto", package="probe", dependency=["google/protobuf/empty.proto"]
    )
    probe.service.add(name="Probe").method.add(
        name="Ping",
        input_type=".google.protobuf.Empty",
        output_type=".google.protobuf.Empty",
    )
    pool.Add(probe)
    return pool.FindServiceByName("probe.Probe")


def test_a_method_without_a_scope_stops_the_server_from_starting() -> None:
    """An RPC added to the proto without (required_scope) is refused, naming the method."""
    with pytest.raises(MethodTableError, match=r"probe\.Probe\.Ping declares no"):
        methods_of(_service_without_scope())


def test_every_method_of_the_proto_has_a_known_scope() -> None:
    """The auth table holds every method of the proto, each with a scope a client can hold."""
    assert set(METHOD_SCOPES) == {method.name for method in CONNECT_SERVICE.methods}
    assert set(METHOD_SCOPES.values()) == SCOPES
    assert METHOD_SCOPES["CreateSession"] == "sessions:create"
    assert METHOD_SCOPES["StreamAccountEvents"] == "events:read"


def test_a_servicer_missing_a_method_of_the_proto_is_refused() -> None:
    """A servicer without one of the proto's methods cannot be served (no UNIMPLEMENTED)."""

    class Partial:
        async def CreateSession(self) -> None:
            """Only one of ConnectService's methods."""

    with pytest.raises(MethodTableError, match="Partial has no method GetAccount"):
        connect_service_handlers(Partial())


@pytest.mark.asyncio
async def test_every_method_of_the_proto_is_served(service: Runtime) -> None:
    """Each method the descriptor lists answers on the real server, none UNIMPLEMENTED."""
    async with grpc.aio.insecure_channel(service.grpc_target) as channel:
        for method in CONNECT_METHODS:
            path = f"/{SERVICE_NAME}/{method.name}"
            # Raw bytes both ways: b"" is every request message with no field set.
            if method.client_streaming:  # a first message that attaches to nothing
                consume = channel.stream_stream(path, None, None)(iter([b""]))
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await consume.read()
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method.name
                continue
            if method.server_streaming:
                stream = channel.unary_stream(path, None, None)(b"")
                assert await stream.read(), method.name  # the opening bookmark
                stream.cancel()
                continue
            code = grpc.StatusCode.OK
            try:
                await channel.unary_unary(path, None, None)(b"", timeout=10)
            except grpc.aio.AioRpcError as error:
                code = error.code()
            assert code != grpc.StatusCode.UNIMPLEMENTED, method.name
