"""The verifier's look-up on real servers (the service, its gateway and the StackOne
emulator over HTTP): one client call per look-up, retried by the client's policy only."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from service.events.verify import LOOKUP_ATTEMPTS
from stackone_connect.v1 import stackone_connect_pb2 as pb
from tests.harness.streams import events_covering, subscribed
from tests.harness.support import LogBackend
from tests.harness.verification import running_harness, webhook

pytestmark = pytest.mark.asyncio
DEADLINE = 8.0


async def test_a_look_up_stackone_keeps_failing_makes_the_stated_requests_and_names_why(
    tmp_path: Path, backend: LogBackend
) -> None:
    """StackOne answering every look-up with 500: the webhook's event is recorded
    unverified after exactly LOOKUP_ATTEMPTS requests (the look-up's policy, spread over
    about half the 8 s deadline; the verifier retries nothing around it), before the
    deadline, its error naming the deadline, StackOne's 500 and the attempts made."""
    async with running_harness(tmp_path, backend, verify_deadline=DEADLINE) as harness:
        account_id = await harness.account()
        fault = {"path_prefix": "/accounts/", "method": "GET", "status": 500}
        assert (await harness.emulator.post("/emulator/faults", json=fault)).status_code == 201
        async with subscribed(harness.service.grpc_target) as stream:
            received = time.monotonic()
            answer = await harness.deliver(webhook("account.updated", account_id))
            (event,) = await events_covering(stream, {answer.json()["event_id"]})
            recorded_after = time.monotonic() - received
        assert harness.look_ups() == LOOKUP_ATTEMPTS
    assert event.verification == pb.VERIFICATION_UNVERIFIED
    error = event.verification_error
    assert f"not verified within {DEADLINE:g}s of receipt" in error
    assert "StackOne answered 500" in error
    assert f"after {LOOKUP_ATTEMPTS} of at most {LOOKUP_ATTEMPTS} attempts" in error
    assert recorded_after < DEADLINE * 0.9
