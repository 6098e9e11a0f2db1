"""Credentials rotate without a restart, under load: webhook secrets and TLS certificates."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.app import WEBHOOK_PATH
from service.runtime import running
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.certificates import _issue
from tests.harness.files import replace
from tests.harness.refusals import refusal
from tests.harness.support import (
    eventually,
    make_settings,
    metric,
    reloads,
    signed_headers,
    webhook,
)

pytestmark = pytest.mark.asyncio
OLD, NEW = "whsec-old-0123456789abcdef", "whsec-new-0123456789abcdef"
SESSION = pb.CreateSessionRequest(origin_owner_id="acme-1", origin_owner_name="Acme")


@asynccontextmanager
async def load(step: Callable[[], object]) -> AsyncIterator[Counter[str]]:
    """Runs `step` (an awaitable maker) in a loop until the block ends; counts outcomes."""
    outcomes: Counter[str] = Counter()
    stop = asyncio.Event()

    async def loop() -> None:
        while not stop.is_set():
            outcomes[str(await step())] += 1  # type: ignore[misc]

    task = asyncio.create_task(loop())
    try:
        yield outcomes
    finally:
        stop.set()
        await task


async def test_webhook_secrets_rotate_under_load_without_a_failed_webhook(tmp_path: Path) -> None:
    """Adding a secret to the file, switching the signer, removing the old one, and a bad
    version in between: every webhook is accepted; the removed secret is refused after."""
    secrets_file = tmp_path / "secrets"
    secrets_file.write_text(f"{OLD}\n")
    settings = make_settings(tmp_path, webhook_secrets=[], webhook_secrets_file=secrets_file)
    signer = [OLD]
    async with (
        running(settings) as service,
        httpx.AsyncClient(base_url=service.gateway.base_url) as gateway,
        httpx.AsyncClient(base_url=service.admin.base_url) as admin,
    ):

        async def deliver() -> int:
            body = webhook()
            response = await gateway.post(
                WEBHOOK_PATH, content=body, headers=signed_headers(body, signer[0])
            )
            return response.status_code

        async def reloaded(outcome: str, count: float) -> None:
            sample = reloads("webhook_secrets", outcome)
            await eventually(lambda: _at_least(admin, sample, count), timeout=5)

        async with load(deliver) as outcomes:
            replace(secrets_file, f"# rotating\n{OLD}\n{NEW}\n".encode())
            await reloaded("loaded", 1)
            signer[0] = NEW  # StackOne now signs with the new secret
            replace(secrets_file, b"\n# nothing\n")  # no secret at all: refused
            await reloaded("rejected", 1)
            replace(secrets_file, f"{NEW}\n".encode())
            await reloaded("loaded", 2)
            await eventually(lambda: sum(outcomes.values()) > 50)
        body = webhook()
        stale = await gateway.post(WEBHOOK_PATH, content=body, headers=signed_headers(body, OLD))
    assert all(code.startswith("2") for code in outcomes), outcomes
    assert stale.status_code == 401


async def _at_least(admin: httpx.AsyncClient, sample: str, count: float) -> bool:
    return await metric(admin, sample) >= count


@dataclass(frozen=True)
class Issued:
    """A PEM certificate and its key."""

    cert: bytes
    key: bytes


class Authority:
    """A test CA of its own name that issues server and client certificates."""

    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        ca = _issue(name, self.name, self.key, self.key, is_ca=True)
        self.pem = ca.public_bytes(serialization.Encoding.PEM)

    def issue(self, subject: str, usage: x509.ObjectIdentifier) -> Issued:
        """A certificate for `usage` (SERVER_AUTH: for 127.0.0.1 and localhost)."""
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = _issue(subject, self.name, self.key, key, usage=usage)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return Issued(certificate.public_bytes(serialization.Encoding.PEM), key_pem)


def served_certificate(target: str, ca: bytes, client: Issued, folder: Path) -> bytes:
    """The DER certificate the server presents to a new (mutual) TLS connection."""
    context = ssl.create_default_context(cadata=ca.decode())
    (folder / "probe.pem").write_bytes(client.cert)
    (folder / "probe-key.pem").write_bytes(client.key)
    context.load_cert_chain(folder / "probe.pem", folder / "probe-key.pem")
    context.set_alpn_protocols(["h2"])
    host, _, port = target.rpartition(":")
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def der(pem: bytes) -> bytes:
    """The DER form of a PEM certificate."""
    return ssl.PEM_cert_to_DER_cert(pem.decode())


async def test_certificates_rotate_under_load_without_a_failed_call(tmp_path: Path) -> None:
    """The server certificate (renewed by its CA) and the client CA bundle (a second CA
    added) are replaced, after a broken version, while calls flow on new and open
    connections: no call fails, new connections get the new certificate, and a client
    of the added CA is let in."""
    authority, added = Authority("rotation CA one"), Authority("rotation CA two")
    old_server = authority.issue("server", ExtendedKeyUsageOID.SERVER_AUTH)
    new_server = authority.issue("server renewed", ExtendedKeyUsageOID.SERVER_AUTH)
    client = authority.issue("client", ExtendedKeyUsageOID.CLIENT_AUTH)
    newcomer = added.issue("newcomer", ExtendedKeyUsageOID.CLIENT_AUTH)
    cert, key, client_ca = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.write_bytes(old_server.cert)
    key.write_bytes(old_server.key)
    client_ca.write_bytes(authority.pem)
    settings = make_settings(
        tmp_path, tls_cert_file=cert, tls_key_file=key, tls_client_ca_file=client_ca
    )

    def credentials(caller: Issued) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(authority.pem, caller.key, caller.cert)

    async with (
        running(settings) as service,
        httpx.AsyncClient(base_url=service.admin.base_url) as admin,
        grpc.aio.secure_channel(service.grpc_target, credentials(client)) as kept_open,
    ):
        kept = pb_grpc.ConnectServiceStub(kept_open)

        async def call_on_a_new_connection() -> str:
            async with grpc.aio.secure_channel(service.grpc_target, credentials(client)) as fresh:
                await pb_grpc.ConnectServiceStub(fresh).CreateSession(SESSION, timeout=5)
            await kept.CreateSession(SESSION, timeout=5)
            return "ok"

        async def reloaded(outcome: str, count: float) -> None:
            sample = reloads("tls", outcome)
            await eventually(lambda: _at_least(admin, sample, count), timeout=5)

        def served() -> bytes:
            return served_certificate(service.grpc_target, authority.pem, client, tmp_path)

        async with load(call_on_a_new_connection) as outcomes:
            replace(cert, b"not a certificate\n")
            await reloaded("rejected", 1)
            assert await asyncio.to_thread(served) == der(old_server.cert)  # still in force
            replace(key, new_server.key)
            replace(client_ca, authority.pem + added.pem)
            replace(cert, new_server.cert)
            await reloaded("loaded", 1)
            await eventually(lambda: sum(outcomes.values()) > 10)
        now_served = await asyncio.to_thread(served)
        async with grpc.aio.secure_channel(service.grpc_target, credentials(newcomer)) as joined:
            await pb_grpc.ConnectServiceStub(joined).CreateSession(SESSION, timeout=5)
    assert set(outcomes) == {"ok"}, outcomes
    assert now_served == der(new_server.cert)


async def test_an_unreadable_secrets_file_stops_start_up(tmp_path: Path) -> None:
    """A webhook secrets file that cannot be read is a one-line start-up error naming it."""
    line = refusal(tmp_path, WEBHOOK_SECRETS_FILE=str(tmp_path / "missing"))
    assert "STACKONE_CONNECT_WEBHOOK_SECRETS_FILE: cannot read" in line
