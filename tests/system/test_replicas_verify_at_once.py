"""Two replicas verifying the same accounts at once on a real nats-server: every webhook
answered 2xx is recorded exactly once, in the order it was accepted, whichever replica's
verifier gets there first (each reads the shared inbox on its own schedule)."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter
from functools import partial
from pathlib import Path

import httpx
import pytest
from google.protobuf.empty_pb2 import Empty

from service.emulator import EmulatorConfig, build_emulator_app
from service.web import listening
from tests.harness.nats import NatsServer
from tests.harness.processes import ServeProcess
from tests.harness.replicas import replicas
from tests.harness.streams import events_until_caught_up, subscribed
from tests.harness.support import LogBackend, deliver, eventually, inbox_is_empty, webhook

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

API_KEY = "race-key"
ACCOUNTS = 8
SENDING_FOR = 6.0  # seconds of webhooks, one every PACE, alternating between the replicas
PACE = 0.01
LOOKUP_LATENCY = 0.15  # StackOne's answer to each look-up (0.1-0.25 s in production)
_runs = itertools.count()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("quiet", ["1.0", "0.05"], ids=["default-quiet", "short-quiet"])
async def test_two_replicas_verifying_the_same_accounts_record_every_webhook_once_in_order(
    tmp_path: Path, nats_server: NatsServer, quiet: str
) -> None:
    """Signed `account.updated` webhooks for 8 accounts sent alternately to two replicas'
    gateways every 10 ms, StackOne slow to answer: every 2xx'd webhook is covered by
    exactly one recorded event, and each account's webhooks in the order accepted."""
    stream = f"RACE{uuid.uuid4().hex}"
    config = EmulatorConfig(api_key=API_KEY, deliver_webhooks=False, latency=LOOKUP_LATENCY)
    async with listening(build_emulator_app(config), "127.0.0.1", 0) as stackone:
        upstream = {
            "STACKONE_CONNECT_API_KEY": API_KEY,
            "STACKONE_CONNECT_BASE_URL": stackone.base_url,
            "STACKONE_CONNECT_VERIFY_QUIET": quiet,
            "STACKONE_CONNECT_RATE_LIMIT": "100000",
        }
        async with (
            httpx.AsyncClient(base_url=stackone.base_url) as emulator,
            replicas(2, tmp_path, nats_server.url, stream=stream, **upstream) as pair,
        ):
            spec = {"provider": "hibob", "origin_owner_id": "t-race", "origin_owner_name": "R"}
            accounts = [
                (await emulator.post("/emulator/accounts", json=spec)).json()["id"]
                for _ in range(ACCOUNTS)
            ]
            accepted = await _send_alternately(pair, accounts)
            shared = await LogBackend(nats_server.url, stream=stream).open()
            try:
                # Empty once every entry was settled: recorded, or (the defect) dropped.
                await eventually(partial(inbox_is_empty, shared), timeout=60)
                # The stream's own latest cursor: a replica's may trail the other's appends.
                latest = (await shared.bounds(exact=True)).latest
            finally:
                await shared.close()
            async with subscribed(pair[0].grpc_target, from_earliest=Empty()) as replay:
                events = await events_until_caught_up(replay, str(latest))
    covered = [
        (event.account.id, event_id)
        for event in events
        for event_id in dict.fromkeys([event.event_id, *event.covered_event_ids])
    ]
    sent = [event_id for ids in accepted.values() for event_id in ids]
    twice = [event_id for event_id, count in Counter(i for _, i in covered).items() if count > 1]
    assert sorted(set(sent) - {i for _, i in covered}) == [], "accepted, never recorded"
    assert twice == [], "recorded more than once"
    for account in accounts:
        assert [i for a, i in covered if a == account] == accepted[account], "out of order"


async def _send_alternately(pair: list[ServeProcess], accounts: list[str]) -> dict[str, list[str]]:
    """Sends webhooks for `SENDING_FOR` seconds, webhook n to replica n % 2 for account
    n % 8; returns each account's webhook ids answered 2xx, in the order accepted."""
    run = f"{next(_runs)}-{uuid.uuid4().hex[:8]}"
    accepted: dict[str, list[str]] = {account: [] for account in accounts}
    async with (
        httpx.AsyncClient(base_url=pair[0].gateway_url, timeout=10) as first,
        httpx.AsyncClient(base_url=pair[1].gateway_url, timeout=10) as second,
    ):
        gateways = (first, second)
        started = time.monotonic()
        for n in itertools.count():
            if time.monotonic() - started >= SENDING_FOR:
                break
            account = accounts[n % ACCOUNTS]
            event_id = f"race-{run}-{n}"
            body = webhook("account.updated", account_id=account, id=event_id)
            answer = await deliver(gateways[n % 2], body)
            assert answer.status_code == 200, answer.text
            assert answer.json()["result"] == "accepted", answer.text
            accepted[account].append(event_id)
            # Pace the load (this sleep times sending; nothing waits on it for state).
            await asyncio.sleep(max(0.0, started + (n + 1) * PACE - time.monotonic()))
    return accepted
