"""Files an operator edits (webhook secrets, clients, TLS) are read as the operator means
them: a byte-order mark, CRLF line ends, spaces around a line or a `#` comment never change
a secret, and a secret too short to be one is refused, at start-up and on reload, naming
the file and its line."""

from __future__ import annotations

import codecs
import logging
from pathlib import Path

import grpc
import httpx
import orjson
import pytest

from gateway.app import WEBHOOK_PATH
from service.runtime import running
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.certificates import make_certificates
from tests.harness.refusals import PREFIX, refusal
from tests.harness.support import (
    eventually,
    make_settings,
    metric,
    reloads,
    signed_headers,
    webhook,
)

SECRET = "whsec-operator-0123456789abcdef"
NEXT = "whsec-next-0123456789abcdef"
TOKEN = "operator-token-0123456789abcdef"
SESSION = pb.CreateSessionRequest(origin_owner_id="acme-1", origin_owner_name="Acme")
BOM = codecs.BOM_UTF8


def windows_text(text: str) -> bytes:
    """`text` as a Windows editor saves it: a byte-order mark first, CRLF line ends."""
    return BOM + text.replace("\n", "\r\n").encode()


async def status_of_webhook_signed_with(gateway: httpx.AsyncClient, secret: str) -> int:
    """The gateway's answer to a webhook signed with `secret`."""
    body = webhook()
    response = await gateway.post(WEBHOOK_PATH, content=body, headers=signed_headers(body, secret))
    return response.status_code


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "content",
    [
        windows_text(f"{SECRET}\n"),
        windows_text(f"# StackOne, rotated in December\n{SECRET}   \n\n"),
        f"  {SECRET}\t \n  # the old one, removed\n".encode(),
        BOM + SECRET.encode(),  # no line end at all
    ],
    ids=["bom-crlf", "bom-comment-crlf", "spaces-indented-comment", "bom-no-newline"],
)
async def test_a_secrets_file_means_the_secret_the_operator_typed(
    tmp_path: Path, content: bytes
) -> None:
    """A webhook signed with the secret as typed passes, whatever the editor added around it."""
    secrets_file = tmp_path / "secrets"
    secrets_file.write_bytes(content)
    settings = make_settings(tmp_path, webhook_secrets=[], webhook_secrets_file=secrets_file)
    async with (
        running(settings) as service,
        httpx.AsyncClient(base_url=service.gateway.base_url) as gateway,
    ):
        assert await status_of_webhook_signed_with(gateway, SECRET) == 200


@pytest.mark.parametrize(
    ("content", "line", "problem"),
    [
        (
            f"# ours\n{SECRET}\nwhsec-short\n",
            3,
            "has 11 characters: a signing secret has at least 16",
        ),
        (f"{SECRET} # the new one\n", 1, "holds a space (a comment goes on a line of its own"),
        (f"{SECRET}\n\n{SECRET}\x00\n", 3, "holds characters that cannot be typed"),
    ],
    ids=["short", "inline-comment", "control-character"],
)
def test_a_secrets_file_line_that_cannot_be_a_secret_stops_start_up_naming_it(
    tmp_path: Path, content: str, line: int, problem: str
) -> None:
    """`serve` refuses a secrets file holding a secret too short or malformed to be one, in
    one line naming the setting, the file and the line, never the secret."""
    secrets_file = tmp_path / "secrets"
    secrets_file.write_text(content)
    refused = refusal(tmp_path, WEBHOOK_SECRETS="", WEBHOOK_SECRETS_FILE=str(secrets_file))
    assert refused.startswith(
        f"{PREFIX}WEBHOOK_SECRETS_FILE: {secrets_file}, line {line}: the secret {problem}"
    )
    assert SECRET not in refused


def test_a_short_secret_in_the_variable_stops_start_up_naming_it(tmp_path: Path) -> None:
    """`STACKONE_CONNECT_WEBHOOK_SECRETS` holding a secret too short to be one is refused
    in one line naming the variable and which secret, never the secret."""
    refused = refusal(tmp_path, WEBHOOK_SECRETS=f"{SECRET}, whsec-test")
    assert refused == (
        f"{PREFIX}WEBHOOK_SECRETS: secret 2 of 2 has 10 characters: a signing secret has at "
        "least 16"
    )


@pytest.mark.asyncio
async def test_a_short_secret_on_reload_keeps_the_previous_secrets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A rewritten secrets file adding a secret too short to be one is rejected, logged
    naming the file and the line: the previous secret stays in force, the new one is not
    taken, and the next good version is."""
    secrets_file = tmp_path / "secrets"
    secrets_file.write_text(f"{SECRET}\n")
    settings = make_settings(tmp_path, webhook_secrets=[], webhook_secrets_file=secrets_file)
    async with (
        running(settings) as service,
        httpx.AsyncClient(base_url=service.gateway.base_url) as gateway,
        httpx.AsyncClient(base_url=service.admin.base_url) as admin,
    ):

        async def reloaded(outcome: str) -> bool:
            await status_of_webhook_signed_with(gateway, SECRET)  # a webhook re-reads the file
            return await metric(admin, reloads("webhook_secrets", outcome)) == 1

        secrets_file.write_text(f"{SECRET}\n{NEXT}\nwhsec\n")
        await eventually(lambda: reloaded("rejected"), timeout=10)
        assert await status_of_webhook_signed_with(gateway, SECRET) == 200
        assert await status_of_webhook_signed_with(gateway, NEXT) == 401
        secrets_file.write_text(f"{SECRET}\n{NEXT}\n")
        await eventually(lambda: reloaded("loaded"), timeout=10)
        assert await status_of_webhook_signed_with(gateway, NEXT) == 200
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        f"keeping the previous webhook secrets: {secrets_file}, line 3: the secret has 5 "
        "characters: a signing secret has at least 16"
    ]


@pytest.mark.asyncio
async def test_a_clients_file_saved_with_a_byte_order_mark_and_crlf_is_read(
    tmp_path: Path,
) -> None:
    """A clients file as a Windows editor saves it lets its client in with its token."""
    clients = {"clients": [{"name": "app", "token": TOKEN, "scopes": ["sessions:create"]}]}
    clients_file = tmp_path / "clients.json"
    clients_file.write_bytes(
        windows_text(orjson.dumps(clients, option=orjson.OPT_INDENT_2).decode())
    )
    settings = make_settings(tmp_path, clients_file=clients_file)
    async with (
        running(settings) as service,
        grpc.aio.insecure_channel(service.grpc_target) as channel,
    ):
        stub: pb_grpc.ConnectServiceAsyncStub = pb_grpc.ConnectServiceStub(channel)
        session = await stub.CreateSession(
            SESSION, metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=10
        )
    assert session.token


@pytest.mark.asyncio
async def test_tls_files_saved_with_a_byte_order_mark_and_crlf_are_served(tmp_path: Path) -> None:
    """Certificate, key and client CA files as a Windows editor saves them serve mutual TLS."""
    certificates = make_certificates(tmp_path)
    ca = certificates.ca.read_bytes()
    for path in (certificates.server_cert, certificates.server_key, certificates.ca):
        path.write_bytes(windows_text(path.read_text()))
    settings = make_settings(tmp_path, **certificates.mutual_tls())
    credentials = grpc.ssl_channel_credentials(
        ca, certificates.client_key.read_bytes(), certificates.client_cert.read_bytes()
    )
    async with (
        running(settings) as service,
        grpc.aio.secure_channel(service.grpc_target, credentials) as channel,
    ):
        stub: pb_grpc.ConnectServiceAsyncStub = pb_grpc.ConnectServiceStub(channel)
        session = await stub.CreateSession(SESSION, timeout=10)
    assert session.token
