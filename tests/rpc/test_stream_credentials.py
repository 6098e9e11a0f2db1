"""Open streams answer to the clients file as it is now (issue 32, item 5): a stream whose
credential the file withdraws ends `UNAUTHENTICATED`, one whose client's owners change
ends `PERMISSION_DENIED` before another event of the old scope, and a stream whose entry
a new version leaves as it was goes on undisturbed. On a real service (mutual TLS, a
clients file, emulated StackOne), with no call made while a stream waits for the change:
the service looks at the file by itself while streams are open."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest
from google.protobuf.empty_pb2 import Empty

from service.reloading import RELOAD_EVERY
from service.runtime import running
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.certificates import Certificates, client_certificate, make_certificates
from tests.harness.files import replace
from tests.harness.registries import EmulatedStackOne
from tests.harness.streams import StreamCall, attached, next_event, next_item
from tests.harness.support import LogBackend, eventually, make_settings, metric, reloads

pytestmark = pytest.mark.asyncio
BACKENDS = ["sqlite", "jetstream"]  # the backend fixture runs each test on both
ADMIN = "admin-token-0123456789abcdef"
READER = "reader-token-0123456789abcdef"
BADGE_URI = "spiffe://corp.test/badge-reader"
ADMIN_ENTRY = {
    "name": "admin",
    "token": ADMIN,
    "scopes": ["sessions:create", "accounts:read", "accounts:write", "events:read"],
}
READER_ENTRY = {
    "name": "reader",
    "token": READER,
    "scopes": ["accounts:read", "events:read"],
    "owners": ["acme-*", "globex"],
}
BADGE_ENTRY = {"name": "badge", "certificate_uri": BADGE_URI, "scopes": ["events:read"]}
# The change is seen at the first look after it (one a RELOAD_EVERY); the rest is slack
# for a busy machine.
WITHIN = RELOAD_EVERY + 1.5


def clients_file(*entries: dict[str, Any]) -> bytes:
    """A clients file of `entries`."""
    return orjson.dumps({"clients": list(entries)})


@dataclass
class Streaming:
    """A service, its clients file, and a stub for each client."""

    stackone: EmulatedStackOne
    clients: Path
    admin_http: httpx.AsyncClient
    stubs: dict[str, pb_grpc.ConnectServiceAsyncStub]

    def follow(self, client: str) -> StreamCall:
        """A stream of every event from now on that `client` may read."""
        return self.stubs[client].StreamAccountEvents(
            pb.StreamAccountEventsRequest(from_now=Empty())
        )

    async def reloaded(self, count: int) -> None:
        """Returns once the service loaded `count` changed versions of the clients file."""

        async def seen() -> bool:
            return await metric(self.admin_http, reloads("clients", "loaded")) >= count

        await eventually(seen, timeout=WITHIN)


def _channel(target: str, certificates: Certificates, cert: Path, key: Path) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        certificates.ca.read_bytes(), key.read_bytes(), cert.read_bytes()
    )
    return grpc.aio.secure_channel(target, credentials)


def _with_token(
    channel_credentials: grpc.ChannelCredentials, token: str
) -> grpc.ChannelCredentials:
    return grpc.composite_channel_credentials(
        channel_credentials, grpc.access_token_call_credentials(token)
    )


@asynccontextmanager
async def streaming_service(tmp_path: Path, backend: LogBackend) -> AsyncIterator[Streaming]:
    """The service on mutual TLS with three clients: admin and an owner-scoped reader
    known by tokens, and a badge reader known by its certificate alone."""
    certificates = make_certificates(tmp_path)
    badge_cert, badge_key = client_certificate(certificates, "badge reader", uri=BADGE_URI)
    clients = tmp_path / "clients.json"
    clients.write_bytes(clients_file(ADMIN_ENTRY, READER_ENTRY, BADGE_ENTRY))
    settings = make_settings(
        tmp_path, **certificates.mutual_tls(), clients_file=clients, **backend.settings()
    )
    plain = grpc.ssl_channel_credentials(
        certificates.ca.read_bytes(),
        certificates.client_key.read_bytes(),
        certificates.client_cert.read_bytes(),
    )
    async with running(settings) as service, AsyncExitStack() as stack:
        assert service.emulator is not None
        target = service.grpc_target
        channels = {
            "admin": grpc.aio.secure_channel(target, _with_token(plain, ADMIN)),
            "reader": grpc.aio.secure_channel(target, _with_token(plain, READER)),
            "badge": _channel(target, certificates, badge_cert, badge_key),
        }
        for channel in channels.values():
            await stack.enter_async_context(channel)
        emulator = await stack.enter_async_context(
            httpx.AsyncClient(base_url=service.emulator.base_url, timeout=10)
        )
        admin_http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=service.admin.base_url)
        )
        yield Streaming(
            EmulatedStackOne(service, emulator),
            clients,
            admin_http,
            {name: pb_grpc.ConnectServiceStub(channel) for name, channel in channels.items()},
        )


async def ending(stream: StreamCall, timeout: float) -> tuple[grpc.aio.AioRpcError, list[str]]:
    """The error `stream` ends with within `timeout` seconds, and the owners of the events
    it delivered before."""
    owners: list[str] = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                item = await next_item(stream, timeout)
                events = [item.event] if item.HasField("event") else list(item.events.events)
                owners += [event.account.origin_owner_id for event in events]
    except grpc.aio.AioRpcError as error:
        return error, owners
    except TimeoutError:
        pytest.fail(f"the stream did not end within {timeout} s (it delivered {owners})")


async def still_streaming(streams: list[StreamCall], stackone: EmulatedStackOne) -> None:
    """Each of `streams` delivers an event recorded now: it is still open."""
    account_id = await stackone.account("acme-7")
    for stream in streams:
        assert (await next_event(stream, timeout=15)).account.id == account_id


@pytest.mark.timeout(60)
@pytest.mark.parametrize("withdrawn", ["reader", "badge"])
async def test_a_stream_whose_credential_is_withdrawn_ends_unauthenticated(
    tmp_path: Path, backend: LogBackend, withdrawn: str
) -> None:
    """Removing a client's entry (token or certificate) ends its open stream
    UNAUTHENTICATED within a reload, no call needed; the other clients' streams, whose
    entries the new version keeps as they were (reordered), stream on."""
    async with streaming_service(tmp_path, backend) as service:
        streams = {name: service.follow(name) for name in ("admin", "reader", "badge")}
        for stream in streams.values():
            await attached(stream)
        kept = [entry for entry in (READER_ENTRY, BADGE_ENTRY) if entry["name"] != withdrawn]
        replace(service.clients, clients_file(*kept, ADMIN_ENTRY))
        changed_at = time.monotonic()
        error, _ = await ending(streams.pop(withdrawn), timeout=WITHIN)
        assert time.monotonic() - changed_at < WITHIN
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
        credential = "token" if withdrawn == "reader" else "certificate URI"
        assert f"the {credential} this stream was opened with (client '{withdrawn}')" in (
            error.details() or ""
        )
        assert "withdrawn from the clients file" in (error.details() or "")
        await still_streaming(list(streams.values()), service.stackone)


@pytest.mark.timeout(60)
async def test_a_stream_whose_owners_narrow_ends_before_another_event_of_the_old_scope(
    tmp_path: Path, backend: LogBackend
) -> None:
    """Once the service has seen a client's owners narrow (its calls naming the removed
    owner are refused), its open stream delivers no event of that owner, nor any other:
    it ends PERMISSION_DENIED saying to reconnect; a new stream gets the new scope."""
    async with streaming_service(tmp_path, backend) as service:
        reader, admin = service.follow("reader"), service.follow("admin")
        await attached(reader)
        await attached(admin)
        replace(service.clients, clients_file(ADMIN_ENTRY, READER_ENTRY | {"owners": ["acme-*"]}))

        async def globex_refused() -> bool:
            asked = pb.ListAccountsRequest(origin_owner_ids=["globex"])
            try:
                await service.stubs["reader"].ListAccounts(asked)
            except grpc.aio.AioRpcError as error:
                return error.code() == grpc.StatusCode.PERMISSION_DENIED
            return False

        await eventually(globex_refused, timeout=WITHIN)
        recorded = [await service.stackone.account(owner) for owner in ("globex", "acme-3")]
        # Both are recorded and followed: the admin's stream delivers them.
        delivered = {(await next_event(admin, timeout=15)).account.id for _ in recorded}
        assert delivered == set(recorded)
        error, owners = await ending(reader, timeout=5)
        assert owners == [], "an event reached the stream after its scope changed"
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error.details()
        assert "changed the scope (owners or scopes) of client 'reader'" in (error.details() or "")
        assert "reconnect to continue with the new scope" in (error.details() or "")

        again = service.follow("reader")
        await attached(again)
        await service.stackone.account("globex")
        fresh = await service.stackone.account("acme-4")
        assert (await next_event(again, timeout=15)).account.id == fresh
        again.cancel()
        admin.cancel()


@pytest.mark.timeout(60)
async def test_a_change_that_leaves_what_a_stream_may_read_keeps_it_open(
    tmp_path: Path, backend: LogBackend
) -> None:
    """A new version that changes a client's calls_per_minute and its other scopes, and
    adds a client, leaves its stream (and the others) open: only a withdrawn credential,
    changed owners or a lost events:read end one."""
    async with streaming_service(tmp_path, backend) as service:
        streams = [service.follow(name) for name in ("admin", "reader", "badge")]
        for stream in streams:
            await attached(stream)
        newcomer = {
            "name": "newcomer",
            "token": "newcomer-token-0123456789",
            "scopes": ["events:read"],
        }
        reader = READER_ENTRY | {"calls_per_minute": 30, "scopes": ["events:read"]}
        replace(service.clients, clients_file(newcomer, BADGE_ENTRY, reader, ADMIN_ENTRY))
        await service.reloaded(1)
        await still_streaming(streams, service.stackone)
        for stream in streams:
            stream.cancel()
