"""A running service whose account registry tests read: its stub, and accounts changed
at its emulated StackOne, which delivers their webhooks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.emulator import EMULATOR_STATE, EmulatorState
from service.rpc.server import REGISTRY_HEALTH
from service.runtime import Runtime, running
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.support import LogBackend, eventually, make_settings


@dataclass
class EmulatedStackOne:
    """A running service and a client of its emulated StackOne."""

    service: Runtime
    emulator: httpx.AsyncClient

    @property
    def state(self) -> EmulatorState:
        """The emulator's state, read in-process."""
        assert self.service.emulator is not None
        return self.service.emulator.runner.app[EMULATOR_STATE]

    async def account(self, owner: str = "tenant-1", provider: str = "hibob") -> str:
        """A new account at StackOne (its account.created webhook is delivered, unless the
        emulator's webhooks are switched off)."""
        spec = {"provider": provider, "origin_owner_id": owner, "origin_owner_name": owner}
        return str((await self.emulator.post("/emulator/accounts", json=spec)).json()["id"])


@dataclass
class Registry(EmulatedStackOne):
    """A running service that reconciles often, its stub, and its emulator."""

    stub: pb_grpc.ConnectServiceAsyncStub

    async def set_status(self, account_id: str, status: str) -> None:
        """Changes an account's status at StackOne (account.updated is delivered)."""
        answer = await self.emulator.patch(
            f"/emulator/accounts/{account_id}", json={"status": status}
        )
        assert answer.status_code == 200, answer.text

    async def delete(self, account_id: str) -> None:
        """Deletes an account at StackOne (account.deleted is delivered)."""
        key = self.service.settings.emulator_api_key
        answer = await self.emulator.delete(f"/accounts/{account_id}", auth=(key, ""))
        assert answer.status_code == 200, answer.text

    async def complete(self) -> None:
        """Returns once a reconciliation sweep has made the registry complete."""

        async def answers_from_registry() -> bool:
            page = await self.stub.ListAccounts(
                pb.ListAccountsRequest(read_from=pb.READ_FROM_REGISTRY, page_size=1)
            )
            return page.answered_from == pb.READ_FROM_REGISTRY

        await eventually(answers_from_registry, timeout=20)

        async def reported_serving() -> bool:
            # The sweep reports the registry complete right after marking it so: health's
            # run of its checks (a probe write first) may end a moment after reads do.
            status = await self.health()
            return status == int(health_pb2.HealthCheckResponse.SERVING)

        await eventually(reported_serving, timeout=10)

    async def health(self) -> int:
        """The registry's entry in the gRPC health service."""
        async with grpc.aio.insecure_channel(self.service.grpc_target) as channel:
            asked = health_pb2.HealthCheckRequest(service=REGISTRY_HEALTH)
            return int((await health_pb2_grpc.HealthStub(channel).Check(asked)).status)

    async def holds(self, account_ids: list[str]) -> str:
        """Returns a registry listing's cursor once the registry is complete and holds
        every account of `account_ids`."""
        cursor = ""

        async def held() -> bool:
            nonlocal cursor
            page = await self.stub.ListAccounts(
                pb.ListAccountsRequest(read_from=pb.READ_FROM_REGISTRY)
            )
            cursor = page.cursor
            listed = {account.id for account in page.accounts}
            return page.answered_from == pb.READ_FROM_REGISTRY and listed >= set(account_ids)

        await eventually(held, timeout=20)
        return cursor

    async def listed(
        self,
        between_pages: Callable[[list[pb.Account]], Awaitable[None]] | None = None,
        **request: Any,
    ) -> tuple[list[pb.Account], int]:
        """Every page of a registry listing, and the cursor they reflect; `between_pages`
        runs after the first page, given its accounts."""
        accounts: list[pb.Account] = []
        token, cursor = "", None
        while True:
            if token and between_pages is not None:
                await between_pages(accounts)
                between_pages = None
            page = await self.stub.ListAccounts(
                pb.ListAccountsRequest(
                    read_from=pb.READ_FROM_REGISTRY, page_size=3, page_token=token, **request
                )
            )
            assert page.answered_from == pb.READ_FROM_REGISTRY
            assert cursor is None or int(page.cursor) == cursor, "every page keeps its cursor"
            cursor = int(page.cursor)
            accounts.extend(page.accounts)
            token = page.next_page_token
            if not token:
                return accounts, cursor


@asynccontextmanager
async def registry_service(
    tmp_path: Path, backend: LogBackend, **settings: Any
) -> AsyncIterator[Registry]:
    """The service with the emulator delivering its own webhooks, sweeping every 0.2 s."""
    values = make_settings(
        tmp_path,
        reconcile_interval=settings.pop("reconcile_interval", 0.2),
        reconcile_grace=0,
        **backend.settings(**settings),
    )
    async with running(values) as service:
        assert service.emulator is not None
        async with (
            grpc.aio.insecure_channel(service.grpc_target) as channel,
            httpx.AsyncClient(base_url=service.emulator.base_url, timeout=10) as emulator,
        ):
            yield Registry(service, emulator, stub=pb_grpc.ConnectServiceStub(channel))
