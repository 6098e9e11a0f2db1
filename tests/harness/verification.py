"""The service with its verifier, gateway and emulator, and the webhooks it verifies."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from service.runtime import running
from tests.harness.registries import EmulatedStackOne
from tests.harness.support import LogBackend, make_settings, signed_headers

LOOK_UP = "GET /accounts/{account_id}"
_dates = itertools.count()


def webhook(event: str, account_id: str) -> bytes:
    """A StackOne-shaped webhook; each is distinct (its own `event_date`)."""
    second = next(_dates)
    return orjson.dumps(
        {
            "event": event,
            "account_id": account_id,
            "provider": "hibob",
            "origin_owner_id": "tenant-1",
            "origin_owner_name": "Tenant One",
            "event_date": f"2026-11-24T14:{second // 60 % 60:02d}:{second % 60:02d}.000Z",
        }
    )


@dataclass
class Harness(EmulatedStackOne):
    """A running service, clients of its emulator and gateway (`http`)."""

    http: httpx.AsyncClient

    async def deliver(self, body: bytes) -> httpx.Response:
        """Posts one signed webhook to the gateway."""
        return await self.http.post(
            "/webhooks/stackone", content=body, headers=signed_headers(body)
        )

    async def slow_look_ups(self, delay: float, times: int | None = None) -> None:
        """Makes StackOne's account look-ups take `delay` seconds."""
        fault = {"path_prefix": "/accounts/", "method": "GET", "delay": delay, "times": times}
        assert (await self.emulator.post("/emulator/faults", json=fault)).status_code == 201

    def look_ups(self) -> int:
        """How many account look-ups reached the emulator."""
        return self.state.calls[LOOK_UP]

    async def metrics(self) -> str:
        """The service's metrics page (on the admin listener)."""
        async with httpx.AsyncClient(base_url=self.service.admin.base_url) as admin:
            return (await admin.get("/metrics")).text


@asynccontextmanager
async def running_harness(
    tmp_path: Path, backend: LogBackend, **settings: Any
) -> AsyncIterator[Harness]:
    """The service on `backend`, with the emulator's own webhooks off."""
    values = make_settings(tmp_path, reconcile_interval=0, **backend.settings(**settings))
    async with running(values) as service:
        assert service.emulator is not None
        async with (
            httpx.AsyncClient(base_url=service.gateway.base_url, timeout=5) as http,
            httpx.AsyncClient(base_url=service.emulator.base_url, timeout=5) as emulator,
        ):
            await emulator.put("/emulator/webhooks", json={"enabled": False})
            yield Harness(service, emulator, http=http)
