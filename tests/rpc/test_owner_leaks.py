"""What an owner-scoped client may not learn or do about other customers, on a real
service (gRPC, the emulator over HTTP, SQLite and JetStream registries): it acts on an
account only when StackOne says now that the account is one of its customers', its page
tokens are sealed and its own, whether another page exists depends on its accounts alone,
and another customer's account costs what a missing one costs."""

from __future__ import annotations

import base64
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import httpx
import orjson
import pytest

from service.runtime import running
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.registries import Registry
from tests.harness.support import LogBackend, make_settings, metric

pytestmark = pytest.mark.asyncio
BACKENDS = ["sqlite", "jetstream"]
ADMIN = "admin-token-0123456789abcdef"
ACME = "acme-billing-token-0123456789"
ACME_REPORTS = "acme-reports-token-0123456789"
SCOPES = ["sessions:create", "accounts:read", "accounts:write", "events:read"]
OTHERS = ("globex", "initech")
READS = [pb.READ_FROM_STACKONE, pb.READ_FROM_REGISTRY]
SHARE = {"calls_per_minute": 500}  # its own share, so that its calls are counted


@dataclass
class Leaks:
    """The service, its emulator and admin, and two clients acting for `acme-*`."""

    registry: Registry
    stub: pb_grpc.ConnectServiceAsyncStub  # no token of its own: each call names its client
    admin_http: httpx.AsyncClient

    async def emulator_calls(self, route: str) -> int:
        """StackOne requests of `route` (`METHOD /template`) the emulator answered."""
        stats = (await self.registry.emulator.get("/emulator/stats")).json()
        return int(stats["calls"].get(route, 0))


ACME_CALL = (("authorization", f"Bearer {ACME}"),)
REPORTS_CALL = (("authorization", f"Bearer {ACME_REPORTS}"),)


class _AsAdmin(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Sends the admin's token with every call of a channel (the registry helpers')."""

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        metadata = (("authorization", f"Bearer {ADMIN}"),)
        return await continuation(client_call_details._replace(metadata=metadata), request)


@asynccontextmanager
async def leaks_service(tmp_path: Path, settings: dict[str, Any]) -> AsyncIterator[Leaks]:
    """The service with an admin and two `acme-*` clients (the same owners, different
    names), sweeping StackOne into its registry every 0.2 s."""
    clients = tmp_path / "clients.json"
    entries = [
        {"name": "admin", "token": ADMIN, "scopes": SCOPES},
        {"name": "acme-billing", "token": ACME, "scopes": SCOPES, "owners": ["acme-*"], **SHARE},
        {"name": "acme-reports", "token": ACME_REPORTS, "scopes": SCOPES, "owners": ["acme-*"]},
    ]
    clients.write_bytes(orjson.dumps({"clients": entries}))
    values = make_settings(
        tmp_path, clients_file=clients, reconcile_interval=0.2, reconcile_grace=0, **settings
    )
    async with running(values) as service:
        assert service.emulator is not None
        target = service.grpc_target
        async with (
            grpc.aio.insecure_channel(target) as channel,
            grpc.aio.insecure_channel(target, interceptors=[cast(Any, _AsAdmin())]) as admin,
            httpx.AsyncClient(base_url=service.emulator.base_url, timeout=10) as emulator,
            httpx.AsyncClient(base_url=service.admin.base_url, timeout=10) as admin_http,
        ):
            registry = Registry(service, emulator, stub=pb_grpc.ConnectServiceStub(admin))
            yield Leaks(registry, pb_grpc.ConnectServiceStub(channel), admin_http)


async def failure(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    """The error a call ends with (failing the test if it succeeds)."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value


def reconnect(account_id: str) -> pb.CreateSessionRequest:
    """A re-connect session of `account_id`, asked for acme-1."""
    return pb.CreateSessionRequest(
        origin_owner_id="acme-1", origin_owner_name="Acme", account_id=account_id
    )


def delete(account_id: str) -> pb.DeleteAccountRequest:
    """A deletion of `account_id`."""
    return pb.DeleteAccountRequest(account_id=account_id)


@pytest.mark.timeout(60)
async def test_a_mutation_is_refused_for_an_account_that_moved_to_another_customer(
    tmp_path: Path, backend: LogBackend
) -> None:
    """An account the registry holds as acme's but StackOne now reports as globex's (its
    webhook not recorded): the acme client's re-connect is refused and its delete is
    NOT_FOUND, both in the words of a missing account, and StackOne keeps the account."""
    async with leaks_service(tmp_path, backend.settings()) as leaks:
        account_id = await leaks.registry.account("acme-1")
        await leaks.registry.holds([account_id])
        assert (await leaks.stub.CreateSession(reconnect(account_id), metadata=ACME_CALL)).token, (
            "acme's, so far"
        )
        off = await leaks.registry.emulator.put("/emulator/webhooks", json={"enabled": False})
        assert off.is_success
        moved = leaks.registry.state.accounts[account_id]
        moved.origin_owner_id = moved.origin_owner_name = "globex"  # updated_at unchanged
        in_registry = pb.GetAccountRequest(account_id=account_id, read_from=pb.READ_FROM_REGISTRY)
        assert (await leaks.registry.stub.GetAccount(in_registry)).origin_owner_id == "acme-1"

        missing_session = await failure(
            leaks.stub.CreateSession(reconnect("4000000000"), metadata=ACME_CALL)
        )
        refused = await failure(leaks.stub.CreateSession(reconnect(account_id), metadata=ACME_CALL))
        assert refused.code() == missing_session.code() == grpc.StatusCode.PERMISSION_DENIED
        assert refused.details() == (missing_session.details() or "").replace(
            "4000000000", account_id
        )
        missing_delete = await failure(
            leaks.stub.DeleteAccount(delete("4000000000"), metadata=ACME_CALL)
        )
        hidden = await failure(leaks.stub.DeleteAccount(delete(account_id), metadata=ACME_CALL))
        assert hidden.code() == missing_delete.code() == grpc.StatusCode.NOT_FOUND
        assert hidden.details() == (missing_delete.details() or "").replace(
            "4000000000", account_id
        )
        assert await leaks.emulator_calls("DELETE /accounts/{account_id}") == 0
        assert leaks.registry.state.accounts[account_id].origin_owner_id == "globex"


def _decoded(token: str) -> bytes:
    """A token's bytes, as anyone may read them."""
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


async def _pages(
    stub: pb_grpc.ConnectServiceAsyncStub, read_from: int, **request: object
) -> list[pb.ListAccountsResponse]:
    """Every page of a listing of one account a page."""
    pages, token = [], ""
    while True:
        asked = pb.ListAccountsRequest(read_from=read_from, page_size=1, page_token=token)  # type: ignore[arg-type]
        for name, values in request.items():
            getattr(asked, name).extend(values)
        pages.append(await stub.ListAccounts(asked, metadata=ACME_CALL))
        if not (token := pages[-1].next_page_token):
            return pages


@pytest.mark.timeout(90)
async def test_a_page_token_is_sealed_and_only_its_clients(
    tmp_path: Path, backend: LogBackend
) -> None:
    """From StackOne and from the registry, one account a page: each page holds one of
    acme's accounts and a token only while another of acme's follows (never one for other
    customers' accounts after them, whatever their status); a token shows no account id,
    cursor or position; a changed or self-written token, or the other acme client's, is
    INVALID_ARGUMENT naming `page_token`."""
    async with leaks_service(tmp_path, backend.settings()) as leaks:
        registry = leaks.registry
        acme = [await registry.account("acme-1"), await registry.account("acme-2")]
        others = [await registry.account(owner) for owner in OTHERS for _ in range(3)]
        cursor = await registry.holds(acme + others)
        for account_id in others[:2]:
            await registry.set_status(account_id, "error")
        await registry.holds(acme + others)
        for read_from in READS:
            pages = await _pages(leaks.stub, read_from)
            assert [[a.id for a in page.accounts] for page in pages] == [[acme[0]], [acme[1]]]
            token = pages[0].next_page_token
            opened = _decoded(token)
            # Positions as written in the clear, and base64's of the registry's and StackOne's.
            for shown in (*acme, *others, "registry:", "scan:", "page:", "cmVnaXN0cnk6", "cGFnZT"):
                assert shown.encode() not in opened, (read_from, shown)
            errors = await _pages(leaks.stub, read_from, statuses=["error"])
            assert [(list(p.accounts), p.next_page_token) for p in errors] == [([], "")]

            second = pb.ListAccountsRequest(read_from=read_from, page_size=1, page_token=token)
            assert [
                a.id for a in (await leaks.stub.ListAccounts(second, metadata=ACME_CALL)).accounts
            ] == [acme[1]]
            raw = bytearray(_decoded(token))
            raw[len(raw) // 2] ^= 1
            changed = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
            from_registry = read_from == pb.READ_FROM_REGISTRY
            plain = f"registry:{cursor}:{acme[0]}" if from_registry else "page:1"
            written = base64.urlsafe_b64encode(plain.encode()).decode().rstrip("=")
            for client, forged in (
                (ACME_CALL, changed),
                (ACME_CALL, written),
                (REPORTS_CALL, token),
            ):
                asked = pb.ListAccountsRequest(read_from=read_from, page_size=1, page_token=forged)
                refused = await failure(leaks.stub.ListAccounts(asked, metadata=client))
                assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "page_token: is not a next_page_token this service returned" in (
                    refused.details() or ""
                )


def _spread(seconds: list[float]) -> str:
    """The 50th and 90th percentiles of `seconds`, in milliseconds."""
    ordered = sorted(seconds)
    p50, p90 = ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.9)]
    return f"p50 {p50 * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms"


@pytest.mark.timeout(120)
async def test_another_customers_account_and_a_missing_one_take_the_same_path(
    tmp_path: Path, backend: LogBackend
) -> None:
    """DeleteAccount and a re-connect CreateSession of another customer's account (held
    in the registry) and of a missing one: the same words, one StackOne `GET` each from the
    client's share, and times of one distribution (20 calls each, StackOne answering in
    20 ms: medians within 1.5x of each other)."""
    async with leaks_service(tmp_path, backend.settings()) as leaks:
        # No webhook, so no verifier's look-up: the registry learns of it by a sweep.
        off = await leaks.registry.emulator.put("/emulator/webhooks", json={"enabled": False})
        assert off.is_success
        foreign = await leaks.registry.account("globex")
        await leaks.registry.holds([foreign])
        slow = await leaks.registry.emulator.put("/emulator/behaviour", json={"latency": 0.02})
        assert slow.is_success
        calls: dict[str, Callable[[str], Awaitable[object]]] = {
            "delete": lambda account_id: leaks.stub.DeleteAccount(
                delete(account_id), metadata=ACME_CALL
            ),
            "reconnect": lambda account_id: leaks.stub.CreateSession(
                reconnect(account_id), metadata=ACME_CALL
            ),
        }
        share = 'stackone_connect_client_calls_total{client="acme-billing",outcome="ok"}'
        for name, call in calls.items():
            times: dict[str, list[float]] = {"foreign": [], "missing": []}
            spent = dict.fromkeys(times, 0.0)
            words: dict[str, set[str]] = {"foreign": set(), "missing": set()}
            gets = dict.fromkeys(times, 0)
            for n in range(20):
                for path, account_id in (("foreign", foreign), ("missing", f"{3999999900 + n}")):
                    before = await metric(leaks.admin_http, share)
                    asked = await leaks.emulator_calls("GET /accounts/{account_id}")
                    started = time.perf_counter()
                    error = await failure(call(account_id))
                    times[path].append(time.perf_counter() - started)
                    spent[path] += await metric(leaks.admin_http, share) - before
                    gets[path] += await leaks.emulator_calls("GET /accounts/{account_id}") - asked
                    words[path].add(f"{error.code()} {error.details()}".replace(account_id, "…"))
            print(
                f"{name}: another customer's {_spread(times['foreign'])};"
                f" missing {_spread(times['missing'])}"
            )
            assert words["foreign"] == words["missing"], words
            assert len(words["foreign"]) == 1, words
            medians = [statistics.median(times[path]) for path in times]
            assert max(medians) < 1.5 * min(medians), (name, medians)
            assert spent == {"foreign": 20, "missing": 20}, (name, spent)
            assert gets == {"foreign": 20, "missing": 20}, (name, gets)
        assert await leaks.emulator_calls("DELETE /accounts/{account_id}") == 0


KEY = "k" * 32


@pytest.mark.timeout(60)
async def test_replicas_sharing_the_key_take_each_others_page_tokens(tmp_path: Path) -> None:
    """A page token from one service is taken by another with the same
    `page_token_key` and refused by one with another key; a key under 32 characters is
    refused at start-up, naming the setting."""
    keys = {"first": KEY, "same": KEY, "other": "o" * 32}
    with pytest.raises(ValueError, match="page_token_key") as short:
        make_settings(tmp_path, page_token_key="short")
    assert "at least 32 characters" in str(short.value)
    answers: dict[str, grpc.StatusCode] = {}
    token = ""
    for name, key in keys.items():
        (tmp_path / name).mkdir()
        async with (
            running(make_settings(tmp_path / name, page_token_key=key)) as service,
            grpc.aio.insecure_channel(service.grpc_target) as channel,
        ):
            stub = pb_grpc.ConnectServiceStub(channel)
            if not token:
                assert service.emulator is not None
                async with httpx.AsyncClient(base_url=service.emulator.base_url) as emulator:
                    registry = Registry(service, emulator, stub=stub)
                    await registry.account("acme-1")
                    await registry.account("acme-2")
                token = (
                    await stub.ListAccounts(pb.ListAccountsRequest(page_size=1))
                ).next_page_token
                assert token
                continue
            try:
                await stub.ListAccounts(pb.ListAccountsRequest(page_size=1, page_token=token))
                answers[name] = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                answers[name] = error.code()
    assert answers == {"same": grpc.StatusCode.OK, "other": grpc.StatusCode.INVALID_ARGUMENT}
