"""What gRPC tools expect of the real server: reflection v1 beside v1alpha, health's `List`,
and error details that a tool decodes with the descriptors reflection serves."""

from __future__ import annotations

import asyncio
import base64
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import orjson
import pytest
import pytest_asyncio
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from service.rpc.introspection import ERROR_DETAIL_FILES, REFLECTION_V1, REFLECTION_V1ALPHA
from service.rpc.server import SERVICE_NAME
from service.runtime import Runtime, running
from tests.harness.support import make_settings

pytestmark = pytest.mark.asyncio
BUF = Path(sys.executable).with_name("buf")
HEALTH = "grpc.health.v1.Health"


@pytest_asyncio.fixture
async def served(tmp_path: Path) -> AsyncIterator[Runtime]:
    """The real service (SQLite log: no storage is involved here)."""
    async with running(make_settings(tmp_path)) as service:
        yield service


async def reflect(
    target: str, requests: Sequence[reflection_pb2.ServerReflectionRequest], version: str
) -> list[reflection_pb2.ServerReflectionResponse]:
    """Asks the reflection service of `version` (its full name); v1 and v1alpha messages
    are the same on the wire, so v1alpha's classes encode either."""
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.stream_stream(
            f"/{version}/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        return [response async for response in call(iter(requests), timeout=10)]


def files_of(response: reflection_pb2.ServerReflectionResponse) -> list[bytes]:
    """The serialized files of a file-descriptor answer (an error answer fails the test)."""
    assert not response.HasField("error_response"), response.error_response.error_message
    return list(response.file_descriptor_response.file_descriptor_proto)


def pool_of(files: Sequence[bytes]) -> descriptor_pool.DescriptorPool:
    """A pool of nothing but `files`, each added after its dependencies, as a tool
    builds one from what reflection sent (not this process's own generated code)."""
    pending = {
        proto.name: proto
        for proto in (descriptor_pb2.FileDescriptorProto.FromString(raw) for raw in files)
    }
    pool, added = descriptor_pool.DescriptorPool(), set[str]()
    while pending:
        ready = [n for n, p in pending.items() if set(p.dependency) <= added]
        assert ready, f"reflection left out a dependency of {sorted(pending)}"
        for name in ready:
            pool.AddSerializedFile(pending.pop(name).SerializeToString())
            added.add(name)
    return pool


async def run_buf_curl(*arguments: str) -> tuple[int, bytes, bytes]:
    """`buf curl` (the pinned buf-bin) over plaintext HTTP/2; exit code, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge", *arguments,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out, err


async def test_buf_curl_lists_every_method_over_reflection_v1(served: Runtime) -> None:
    """buf curl, made to use grpc.reflection.v1 only, lists the service, health and both
    reflection versions."""
    code, out, err = await run_buf_curl(
        "--reflect", "--reflect-protocol", "grpc-v1", "--list-methods",
        f"http://{served.grpc_target}",
    )  # fmt: skip
    assert code == 0, err.decode()
    methods = set(out.decode().split())
    assert {
        f"{SERVICE_NAME}/GetAccount",
        f"{SERVICE_NAME}/StreamAccountEvents",
        f"{HEALTH}/List",
        f"{REFLECTION_V1}/ServerReflectionInfo",
        f"{REFLECTION_V1ALPHA}/ServerReflectionInfo",
    } <= methods


@pytest.mark.parametrize("version", [REFLECTION_V1, REFLECTION_V1ALPHA])
async def test_reflection_resolves_the_services_and_the_error_detail_files(
    served: Runtime, version: str
) -> None:
    """Each reflection version lists the same services and serves the files a tool needs:
    every listed service's (reflection v1's included) and google.rpc's status and details."""
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        *(reflection_pb2.ServerReflectionRequest(file_by_filename=f) for f in ERROR_DETAIL_FILES),
    ]
    listing, *detail_answers = await reflect(served.grpc_target, requests, version)
    names = [service.name for service in listing.list_services_response.service]
    assert sorted(names) == sorted([SERVICE_NAME, HEALTH, REFLECTION_V1, REFLECTION_V1ALPHA])
    by_symbol = [reflection_pb2.ServerReflectionRequest(file_containing_symbol=n) for n in names]
    service_answers = await reflect(served.grpc_target, by_symbol, version)
    pool = pool_of([raw for answer in service_answers for raw in files_of(answer)])
    for name in names:
        assert pool.FindServiceByName(name).methods, name
    details = pool_of([raw for answer in detail_answers for raw in files_of(answer)])
    for message in ("google.rpc.Status", "google.rpc.ErrorInfo", "google.rpc.RetryInfo"):
        assert details.FindMessageTypeByName(message).fields, message


async def test_health_list_answers_what_check_answers(served: Runtime) -> None:
    """Health's List, which reflection advertises, gives every service Check knows, with
    the status Check gives."""
    (answer,) = await reflect(
        served.grpc_target,
        [reflection_pb2.ServerReflectionRequest(file_containing_symbol=HEALTH)],
        REFLECTION_V1,
    )
    advertised = pool_of(files_of(answer)).FindServiceByName(HEALTH)
    assert "List" in advertised.methods_by_name
    async with grpc.aio.insecure_channel(served.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        listed = await health.List(health_pb2.HealthListRequest(), timeout=5)
        checked = {
            name: (await health.Check(health_pb2.HealthCheckRequest(service=name))).status
            for name in listed.statuses
        }
    assert {"", SERVICE_NAME} <= set(listed.statuses)
    assert {name: reply.status for name, reply in listed.statuses.items()} == checked


async def test_buf_curl_shows_error_details_that_reflection_decodes(served: Runtime) -> None:
    """A failing call through buf curl --reflect prints its BadRequest detail; decoded with
    the descriptors reflection v1 serves for that type (as grpcurl decodes them), it names
    the field to fix."""
    code, out, err = await run_buf_curl(
        "--reflect", "--reflect-protocol", "grpc-v1", "-d", "{}",
        f"http://{served.grpc_target}/{SERVICE_NAME}/GetAccount",
    )  # fmt: skip
    assert code == grpc.StatusCode.INVALID_ARGUMENT.value[0] << 3, (out + err).decode()
    printed = orjson.loads(err)
    assert printed["code"] == "invalid_argument"
    (detail,) = printed["details"]
    (answer,) = await reflect(
        served.grpc_target,
        [reflection_pb2.ServerReflectionRequest(file_containing_symbol=detail["type"])],
        REFLECTION_V1,
    )
    descriptor = pool_of(files_of(answer)).FindMessageTypeByName(detail["type"])
    decoded: Message = message_factory.GetMessageClass(descriptor)()
    decoded.ParseFromString(base64.b64decode(detail["value"] + "=" * (-len(detail["value"]) % 4)))
    violations = [(v.field, v.description) for v in decoded.field_violations]  # type: ignore[attr-defined]
    assert violations == [("account_id", "is required")]
