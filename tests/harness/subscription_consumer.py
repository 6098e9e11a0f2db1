"""A consumer process of a subscription, for tests that kill one: prints each delivery as
a JSON line (cursor, account, attempt) once it has it, and never acknowledges (it is
always "mid-handling").

    python -m tests.harness.subscription_consumer TARGET NAME
"""

from __future__ import annotations

import asyncio
import sys

import orjson

from stackone_connect_client import Client


async def consume(target: str, name: str) -> None:
    """Holds every delivery of `name` unacknowledged, telling each on stdout."""
    async with Client.connect(target) as client:
        async for delivery in client.consume(name):
            line = {
                "cursor": delivery.event.cursor,
                "account": delivery.event.account.id,
                "attempt": delivery.attempt,
            }
            sys.stdout.buffer.write(orjson.dumps(line) + b"\n")
            sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(consume(sys.argv[1], sys.argv[2]))
