"""The service on TLS (mutual if asked) with an admin and a read-only client, and their tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import orjson

from service.runtime import Runtime, running
from tests.harness.certificates import Certificates
from tests.harness.support import make_settings

ADMIN = "admin-token-0123456789abcdef"
READER = "reader-token-0123456789abcdef"


def write_clients(path: Path, *clients: tuple[str, str, list[str]]) -> Path:
    """Writes a clients file of (name, token, scopes)."""
    entries = [{"name": n, "token": t, "scopes": s} for n, t, s in clients]
    path.write_bytes(orjson.dumps({"clients": entries}))
    return path


@asynccontextmanager
async def tls_service(
    tmp_path: Path, certificates: Certificates, *, mutual: bool = False
) -> AsyncIterator[Runtime]:
    """The service on TLS (mutual if asked) with an admin and a read-only client."""
    clients = write_clients(
        tmp_path / "clients.json",
        ("admin", ADMIN, ["sessions:create", "accounts:read", "accounts:write", "events:read"]),
        ("reader", READER, ["accounts:read"]),
    )
    settings = make_settings(
        tmp_path,
        tls_cert_file=certificates.server_cert,
        tls_key_file=certificates.server_key,
        tls_client_ca_file=certificates.ca if mutual else None,
        clients_file=clients,
    )
    async with running(settings) as service:
        yield service
