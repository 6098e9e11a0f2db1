"""Runs in a fresh venv holding only the Python client's wheel and the API's (`make
wheel-check`, through deploy/smoke.py, which passes the target of the `serve` it started):
checks that none of the service's dependencies came with them, then calls that service with
the client. Exit 0 when all of that holds."""

from __future__ import annotations

import asyncio
import importlib.util
import sys

from stackone_connect_client import Client

# The service's own dependencies and packages: a caller of five RPCs installs none of them.
NOT_INSTALLED = ("aiohttp", "nats", "opentelemetry", "uvloop", "service", "gateway")


def main() -> int:
    """Checks the venv, then calls the service at `sys.argv[1]`; prints what failed."""
    present = [name for name in NOT_INSTALLED if importlib.util.find_spec(name) is not None]
    if present:
        print(f"client smoke: the client's wheel brought {present}", file=sys.stderr)
        return 1
    return asyncio.run(_call(sys.argv[1]))


async def _call(target: str) -> int:
    async with Client.connect(target) as client:
        session = await client.create_session(
            origin_owner_id="wheel-check", origin_owner_name="wheel-check"
        )
        accounts = [account async for account in client.list_accounts()]
    if not session.token:
        print("client smoke: CreateSession answered without a token", file=sys.stderr)
        return 1
    print(f"client smoke: CreateSession and ListAccounts ({len(accounts)}) from the client's wheel")
    return 0


if __name__ == "__main__":
    sys.exit(main())
