"""A NATS URL naming several servers of a cluster, as operators write it."""

from __future__ import annotations

import socket
import uuid

import pytest

from tests.harness.nats import NatsServer
from tests.harness.support import LogBackend

pytestmark = pytest.mark.asyncio


def _refusing_address() -> str:
    """A loopback port nothing listens on (bound and closed at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return f"nats://127.0.0.1:{port}"


async def test_a_comma_separated_url_opens_the_log_on_the_server_that_answers(
    nats_server: NatsServer,
) -> None:
    """`nats://a,nats://b` with `a` refusing: the log opens on `b` and records an event
    (nats-py takes a comma-separated string as one malformed URL, so it is split)."""
    url = f"{_refusing_address()},{nats_server.url}"
    log = await LogBackend(url, stream=f"T{uuid.uuid4().hex}").open()
    try:
        await log.check_writable()
        assert (await log.bounds(exact=True)).latest == 0
    finally:
        await log.close()
