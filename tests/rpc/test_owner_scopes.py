"""Owner-scoped clients on a real service (mutual TLS, clients file, emulated StackOne):
a client acting for `acme-*` and `globex` never sees or touches another customer's
sessions, accounts or events, whether it is known by its bearer token or by its
certificate, over every RPC and every stream start mode."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import orjson
import pytest
from google.protobuf.empty_pb2 import Empty

from service.events.records import event_record
from service.events.registry import RegistryQuery
from service.events.sqlite import SqliteEventLog, SqliteOptions
from service.owners import OwnerScope
from service.rpc.auth import AuthInterceptor, ClientRegistry
from service.rpc.owned import OwnedAccounts
from service.rpc.server import SERVICE_NAME
from service.runtime import running
from service.stackone.client import StackOneClient
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.certificates import Certificates, client_certificate, make_certificates
from tests.harness.registries import Registry
from tests.harness.streams import StreamCall, next_item
from tests.harness.support import LogBackend, make_settings

pytestmark = pytest.mark.asyncio
ADMIN = "admin-token-0123456789abcdef"
ACME = "acme-billing-token-0123456789"
ACME_URI = "spiffe://corp.test/acme-billing"
ALL_SCOPES = ["sessions:create", "accounts:read", "accounts:write", "events:read"]
OWNERS = ["acme-*", "globex"]
ALLOWED = ("acme-1", "acme-2", "globex")
OTHERS = ("initech", "acme", "globex-2")  # 'acme' is not 'acme-*'; 'globex-2' not 'globex'
IDENTITIES = ["token", "certificate"]
BACKENDS = ["sqlite", "jetstream"]  # the backend fixture runs the matrix on each


def allowed(owner: str) -> bool:
    """Whether the scoped client acts for `owner` (what the server must enforce)."""
    return owner == "globex" or owner.startswith("acme-")


@dataclass
class Scoped:
    """The service, an admin (every owner) and the scoped client, and the accounts."""

    registry: Registry
    stub: pb_grpc.ConnectServiceAsyncStub
    accounts: dict[str, str]  # owner -> account id

    @property
    def admin(self) -> pb_grpc.ConnectServiceAsyncStub:
        """A client acting for every owner."""
        return self.registry.stub


def _channel(target: str, certificates: Certificates, cert: Path, key: Path) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=certificates.ca.read_bytes(),
        private_key=key.read_bytes(),
        certificate_chain=cert.read_bytes(),
    )
    return grpc.aio.secure_channel(target, credentials)


def _with_token(credentials: grpc.ChannelCredentials, token: str) -> grpc.ChannelCredentials:
    return grpc.composite_channel_credentials(
        credentials, grpc.access_token_call_credentials(token)
    )


@asynccontextmanager
async def scoped_service(
    tmp_path: Path, identity: str, backend: LogBackend
) -> AsyncIterator[Scoped]:
    """The service on mutual TLS with an admin and an owner-scoped client, one account
    per owner of `ALLOWED` and `OTHERS`, all in a complete registry."""
    certificates = make_certificates(tmp_path)
    acme_cert, acme_key = client_certificate(certificates, "acme billing", uri=ACME_URI)
    clients = tmp_path / "clients.json"
    clients.write_bytes(
        orjson.dumps(
            {
                "clients": [
                    {"name": "admin", "token": ADMIN, "scopes": ALL_SCOPES},
                    {
                        "name": "acme-billing",
                        "token": ACME,
                        "certificate_uri": ACME_URI,
                        "scopes": ALL_SCOPES,
                        "owners": OWNERS,
                    },
                ]
            }
        )
    )
    settings = make_settings(
        tmp_path,
        **certificates.mutual_tls(),
        clients_file=clients,
        reconcile_interval=0.2,
        reconcile_grace=0,
        **backend.settings(),
    )
    plain = grpc.ssl_channel_credentials(
        certificates.ca.read_bytes(),
        certificates.client_key.read_bytes(),
        certificates.client_cert.read_bytes(),
    )
    async with running(settings) as service:
        assert service.emulator is not None
        target = service.grpc_target
        scoped_channel = (
            grpc.aio.secure_channel(target, _with_token(plain, ACME))
            if identity == "token"
            # Known by its certificate alone: no token is sent.
            else _channel(target, certificates, acme_cert, acme_key)
        )
        async with (
            grpc.aio.secure_channel(target, _with_token(plain, ADMIN)) as admin_channel,
            scoped_channel,
            httpx.AsyncClient(base_url=service.emulator.base_url, timeout=10) as emulator,
        ):
            registry = Registry(service, emulator, stub=pb_grpc.ConnectServiceStub(admin_channel))
            accounts = {owner: await registry.account(owner) for owner in ALLOWED + OTHERS}
            await registry.holds(list(accounts.values()))
            yield Scoped(registry, pb_grpc.ConnectServiceStub(scoped_channel), accounts)


async def failure(call: object) -> grpc.aio.AioRpcError:
    """The error a call ends with (failing the test if it succeeds)."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    return raised.value


def session(owner: str, account_id: str = "") -> pb.CreateSessionRequest:
    """A session request for `owner` (a re-connect one with `account_id`)."""
    return pb.CreateSessionRequest(
        origin_owner_id=owner, origin_owner_name=owner, account_id=account_id
    )


READS = [pb.READ_FROM_STACKONE, pb.READ_FROM_REGISTRY]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("identity", IDENTITIES)
async def test_a_scoped_client_sees_and_touches_only_its_owners(
    tmp_path: Path, identity: str, backend: LogBackend
) -> None:
    """Sessions for other owners are PERMISSION_DENIED (re-connects too); their accounts
    are NOT_FOUND in the very words of a missing one, from StackOne and the registry;
    listings hold only its owners' accounts, and naming another owner is refused."""
    async with scoped_service(tmp_path, identity, backend) as scoped:
        stub, accounts = scoped.stub, scoped.accounts
        # StackOne's own words for a missing account are not this service's: whatever
        # they are, the scoped client gets the same answer for both.
        fault = {"path_prefix": "/accounts/acc-x", "status": 404}
        assert (await scoped.registry.emulator.post("/emulator/faults", json=fault)).is_success
        for owner in ALLOWED:
            assert (await stub.CreateSession(session(owner))).token
            assert (await stub.CreateSession(session(owner, accounts[owner]))).token
        for owner in OTHERS:
            denied = await failure(stub.CreateSession(session(owner)))
            assert denied.code() == grpc.StatusCode.PERMISSION_DENIED, owner
            # A re-connect of another owner's account, under an allowed owner's name.
            denied = await failure(stub.CreateSession(session("acme-1", accounts[owner])))
            assert denied.code() == grpc.StatusCode.PERMISSION_DENIED, owner
        missing_reconnect = await failure(stub.CreateSession(session("acme-1", "acc-missing")))
        assert missing_reconnect.code() == grpc.StatusCode.PERMISSION_DENIED

        for read_from in READS:
            for owner in ALLOWED:
                asked = pb.GetAccountRequest(account_id=accounts[owner], read_from=read_from)
                assert (await stub.GetAccount(asked)).origin_owner_id == owner
            missing = await failure(
                stub.GetAccount(pb.GetAccountRequest(account_id="acc-x", read_from=read_from))
            )
            assert missing.code() == grpc.StatusCode.NOT_FOUND
            for owner in OTHERS:
                asked = pb.GetAccountRequest(account_id=accounts[owner], read_from=read_from)
                hidden = await failure(stub.GetAccount(asked))
                assert hidden.code() == grpc.StatusCode.NOT_FOUND, (owner, read_from)
                assert hidden.details() == (missing.details() or "").replace(
                    "acc-x", accounts[owner]
                ), "another owner's account reads as a missing one"

            listing = await stub.ListAccounts(pb.ListAccountsRequest(read_from=read_from))
            assert listing.answered_from == read_from
            assert {a.origin_owner_id for a in listing.accounts} == set(ALLOWED)
            one = await stub.ListAccounts(
                pb.ListAccountsRequest(read_from=read_from, origin_owner_ids=["globex"])
            )
            assert [a.id for a in one.accounts] == [accounts["globex"]]
            for owner in OTHERS:
                named = pb.ListAccountsRequest(read_from=read_from, origin_owner_ids=[owner])
                refused = await failure(stub.ListAccounts(named))
                assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
            # Pages of one: every page holds one of its owners' accounts, then the end.
            paged, token = [], ""
            while True:
                page = await stub.ListAccounts(
                    pb.ListAccountsRequest(read_from=read_from, page_size=1, page_token=token)
                )
                paged += [a.origin_owner_id for a in page.accounts]
                if not (token := page.next_page_token):
                    break
            assert sorted(paged) == sorted(ALLOWED)

        missing_delete = await failure(
            stub.DeleteAccount(pb.DeleteAccountRequest(account_id="acc-x"))
        )
        for owner in OTHERS:
            hidden = await failure(
                stub.DeleteAccount(pb.DeleteAccountRequest(account_id=accounts[owner]))
            )
            assert hidden.code() == grpc.StatusCode.NOT_FOUND
            assert hidden.details() == (missing_delete.details() or "").replace(
                "acc-x", accounts[owner]
            )
            # Not deleted: StackOne still has it.
            still = pb.GetAccountRequest(account_id=accounts[owner])
            assert (await scoped.admin.GetAccount(still)).origin_owner_id == owner
        deleted = await stub.DeleteAccount(pb.DeleteAccountRequest(account_id=accounts["acme-2"]))
        assert deleted.id == accounts["acme-2"]


@dataclass
class Followed:
    """What a stream sent: events' and snapshot accounts' owners, and bookmarks."""

    events: list[str]
    snapshot: list[str]
    bookmarks: int


async def follow(stream: StreamCall, through: int) -> Followed:
    """Reads `stream` until a bookmark or event at cursor `through` or later."""
    seen = Followed([], [], 0)
    while True:
        item = await next_item(stream, timeout=10)
        kind = item.WhichOneof("item")
        if kind == "bookmark":
            seen.bookmarks += 1
            if int(item.bookmark.cursor) >= through:
                return seen
            continue
        if kind in ("account", "accounts"):
            found = [item.account] if kind == "account" else list(item.accounts.accounts)
            seen.snapshot += [account.origin_owner_id for account in found]
            continue
        events = [item.event] if kind == "event" else list(item.events.events)
        seen.events += [event.account.origin_owner_id for event in events]
        if int(events[-1].cursor) >= through:
            return seen


async def attach(stream: StreamCall) -> list[str]:
    """Reads up to the stream's first bookmark; the owners of the snapshot before it."""
    owners: list[str] = []
    while (item := await next_item(stream)).WhichOneof("item") != "bookmark":
        found = [item.account] if item.HasField("account") else list(item.accounts.accounts)
        owners += [account.origin_owner_id for account in found]
    return owners


STARTS = ["from_now", "after_cursor", "from_earliest", "from_snapshot"]


def stream_request(
    start: str, per_message: int, **filters: list[str]
) -> pb.StreamAccountEventsRequest:
    """A stream request of one start mode and batch size."""
    request = pb.StreamAccountEventsRequest(max_events_per_message=per_message, **filters)  # type: ignore[arg-type]
    if start == "after_cursor":
        request.after_cursor = "0"
    else:
        getattr(request, start).CopyFrom(Empty())
    return request


@pytest.mark.timeout(90)
@pytest.mark.parametrize("identity", IDENTITIES)
async def test_a_scoped_client_streams_only_its_owners_events(
    tmp_path: Path, identity: str, backend: LogBackend
) -> None:
    """In every start mode, one event a message or in batches, beside an admin's stream of
    the same request (which shares encoded frames): the scoped stream never delivers
    another owner's event or snapshot account, gets its own, and its bookmarks reach the
    latest cursor; naming another owner is refused."""
    async with scoped_service(tmp_path, identity, backend) as scoped:
        streams: dict[tuple[str, int], StreamCall] = {}
        admin_streams: list[StreamCall] = []
        for start in STARTS:
            for per_message in (0, 10):
                request = stream_request(start, per_message)
                streams[start, per_message] = scoped.stub.StreamAccountEvents(request)
                admin_streams.append(scoped.admin.StreamAccountEvents(request))
        snapshots = {key: await attach(stream) for key, stream in streams.items()}
        for stream in admin_streams:
            await attach(stream)
        # New events after every stream attached: one of its owners', then others' last,
        # so a scoped stream reaches the latest cursor by a bookmark only.
        fresh = [await scoped.registry.account("acme-9")]
        fresh += [await scoped.registry.account(owner) for owner in OTHERS]
        through = int(await scoped.registry.holds(fresh))
        for (start, per_message), stream in streams.items():
            seen = await follow(stream, through)
            seen.snapshot += snapshots[start, per_message]
            where = f"{start}, {per_message} a message"
            assert all(allowed(owner) for owner in seen.events + seen.snapshot), where
            assert "acme-9" in seen.events, where
            assert seen.bookmarks >= 1, where
            if start == "from_snapshot":
                assert sorted(seen.snapshot) == sorted(ALLOWED), where
            elif start != "from_now":
                assert set(ALLOWED) <= set(seen.events), where
            stream.cancel()
        for stream in admin_streams:
            seen = await follow(stream, through)
            assert "initech" in seen.events, "the admin sees every owner"
            stream.cancel()
        for start in STARTS:
            named = stream_request(start, 0, origin_owner_ids=["acme-1", "initech"])
            refused = await failure(scoped.stub.StreamAccountEvents(named).read())
            assert refused.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.timeout(30)
async def test_a_certificate_names_its_client_and_a_token_overrides_it(tmp_path: Path) -> None:
    """On mutual TLS a certificate whose URI SAN is no client's is UNAUTHENTICATED; a
    known one gets its client's scopes (PERMISSION_DENIED past them); a bearer token sent
    beside it decides alone, so a wrong one is UNAUTHENTICATED."""
    certificates = make_certificates(tmp_path)
    reader_cert, reader_key = client_certificate(certificates, "r", uri="spiffe://t/reader")
    stranger_cert, stranger_key = client_certificate(certificates, "s", uri="spiffe://t/who")
    both_cert, both_key = client_certificate(
        certificates, "b", uri="spiffe://t/reader", more_uris=("spiffe://t/writer",)
    )
    clients = tmp_path / "clients.json"
    reader = {"name": "reader", "certificate_uri": "spiffe://t/reader", "scopes": ["accounts:read"]}
    writer = {
        "name": "writer",
        "certificate_uri": "spiffe://t/writer",
        "scopes": ["accounts:write"],
    }
    clients.write_bytes(orjson.dumps({"clients": [reader, writer]}))
    settings = make_settings(
        tmp_path,
        **certificates.mutual_tls(),
        clients_file=clients,
    )
    listing = pb.ListAccountsRequest()
    async with running(settings) as service:
        target = service.grpc_target
        async with (
            _channel(target, certificates, reader_cert, reader_key) as known,
            _channel(target, certificates, stranger_cert, stranger_key) as unknown,
            _channel(target, certificates, both_cert, both_key) as ambiguous,
        ):
            stub = pb_grpc.ConnectServiceStub(known)
            assert (await stub.ListAccounts(listing)).answered_from == pb.READ_FROM_STACKONE
            denied = await failure(stub.CreateSession(session("acme-1")))
            assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "client 'reader' lacks the scope 'sessions:create'" in (denied.details() or "")
            wrong = (("authorization", "Bearer not-a-known-token-0123456789"),)
            overridden = await failure(stub.ListAccounts(listing, metadata=wrong))
            assert overridden.code() == grpc.StatusCode.UNAUTHENTICATED
            stranger = pb_grpc.ConnectServiceStub(unknown)
            refused = await failure(stranger.ListAccounts(listing))
            assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "certificate_uri" in (refused.details() or "")
            stream = stranger.StreamAccountEvents(pb.StreamAccountEventsRequest())
            assert (await failure(stream.read())).code() == grpc.StatusCode.UNAUTHENTICATED
            # A certificate naming two clients: which one is calling? Neither.
            both = pb_grpc.ConnectServiceStub(ambiguous)
            unsure = await failure(both.ListAccounts(listing))
            assert unsure.code() == grpc.StatusCode.UNAUTHENTICATED


@dataclass
class _CallDetails:
    """What the interceptor reads of a call: its method and metadata."""

    method: str
    invocation_metadata: tuple[tuple[str, str], ...] = ()


async def test_a_certificate_check_is_wrapped_once_per_method(tmp_path: Path) -> None:
    """Calls known by certificate get their method's handler wrapped once, not a closure
    and a handler per call (~0.5 KiB each for an open stream)."""
    clients = tmp_path / "clients.json"
    entry = {"name": "hr", "certificate_uri": "spiffe://t/hr", "scopes": ["accounts:read"]}
    clients.write_bytes(orjson.dumps({"clients": [entry]}))
    interceptor = AuthInterceptor(ClientRegistry(clients), SERVICE_NAME)

    async def get(request: bytes, context: object) -> bytes:
        return request

    handler = grpc.unary_unary_rpc_method_handler(get)
    details = _CallDetails(f"/{SERVICE_NAME}/GetAccount")
    wrapped = [
        interceptor.intercept_method("GetAccount", handler, details)  # type: ignore[arg-type]
        for _ in range(100)
    ]
    assert all(one is wrapped[0] for one in wrapped)


async def test_a_scoped_registry_listing_pages_only_the_callers_accounts(
    tmp_path: Path,
) -> None:
    """A prefix is no index: a scoped registry page reads on past other customers'
    accounts until it holds `limit` of the caller's and knows whether one more follows, so
    no page comes back empty and the last page says there is no other."""
    log = await SqliteEventLog.open(SqliteOptions(tmp_path / "events.db"))
    owners = [("acme-1" if n in (0, 13, 14, 29) else f"other-{n}") for n in range(40)]
    records = []
    for n, owner in enumerate(owners):
        account = pb.Account(id=f"acc-{n:02d}", provider="hibob", origin_owner_id=owner)
        message = pb.AccountEvent(event_id=f"e-{n}", type="account.created", account=account)
        records.append(event_record(message))
    await log.append(records)
    scope = OwnerScope.parse(["acme-*"])
    try:
        async with StackOneClient("http://127.0.0.1:9", "unused") as stackone:
            owned = OwnedAccounts(log, stackone, scan_page=4)
            pages, after = [], ""
            while True:
                page = await owned.registry_page(scope, RegistryQuery(limit=3, after_account=after))
                pages.append([entry.account_id for entry in page.accounts])
                if not page.more:
                    break
                after = page.accounts[-1].account_id
    finally:
        await log.close()
    assert pages == [["acc-00", "acc-13", "acc-14"], ["acc-29"]]
