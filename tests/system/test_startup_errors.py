"""Start-up refusals of the real `serve`: one line naming the setting at fault, exit 2.

Each test runs the console script as a process and reads all it writes to stderr.
"""

from __future__ import annotations

import importlib.metadata
import os
import socket
import subprocess
from pathlib import Path

import grpc
import httpx
import orjson
import pytest

from service.rpc.auth import InvalidClientsFile, parse_clients
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.certificates import Certificates, make_certificates
from tests.harness.processes import SERVE, serve_env, serve_process
from tests.harness.refusals import PREFIX, refusal
from tests.harness.support import eventually, metric, reloads

GOOD = "good-token-0123456789abcdef"
TAKEN = "taken-token-0123456789abcdef"


def write_clients(path: Path, *entries: dict[str, object]) -> Path:
    """Writes a clients file of `entries`."""
    path.write_bytes(orjson.dumps({"clients": list(entries)}))
    return path


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    """A CA with server and client certificates, made for this test."""
    return make_certificates(tmp_path)


def tls(certificates: Certificates, **changed: str) -> dict[str, str]:
    """Settings of mutual TLS with the test certificates, some of them `changed`."""
    return {
        "TLS_CERT_FILE": str(certificates.server_cert),
        "TLS_KEY_FILE": str(certificates.server_key),
        "TLS_CLIENT_CA_FILE": str(certificates.ca),
        **changed,
    }


def test_a_missing_certificate_file_is_named(tmp_path: Path, certificates: Certificates) -> None:
    """A certificate file that does not exist is refused naming TLS_CERT_FILE."""
    line = refusal(tmp_path, **tls(certificates, TLS_CERT_FILE=str(tmp_path / "absent.pem")))
    assert line.startswith(f"{PREFIX}TLS_CERT_FILE: cannot read {tmp_path / 'absent.pem'}")


def test_a_certificate_that_is_not_pem_is_named(tmp_path: Path, certificates: Certificates) -> None:
    """A certificate file without a PEM certificate is refused naming TLS_CERT_FILE, not
    the gRPC address grpc fails to bind."""
    (tmp_path / "cert.txt").write_text("not a certificate\n")
    line = refusal(tmp_path, **tls(certificates, TLS_CERT_FILE=str(tmp_path / "cert.txt")))
    assert line == f"{PREFIX}TLS_CERT_FILE: {tmp_path / 'cert.txt'} is not a PEM certificate file"


def test_a_key_of_another_certificate_is_named(tmp_path: Path, certificates: Certificates) -> None:
    """A private key that does not match the certificate is refused naming TLS_KEY_FILE."""
    line = refusal(tmp_path, **tls(certificates, TLS_KEY_FILE=str(certificates.client_key)))
    assert line.startswith(
        f"{PREFIX}TLS_KEY_FILE: {certificates.client_key} is not the private key of the "
        "certificate in STACKONE_CONNECT_TLS_CERT_FILE"
    )


def test_a_missing_client_ca_file_is_named(tmp_path: Path, certificates: Certificates) -> None:
    """A client CA file that does not exist is refused naming TLS_CLIENT_CA_FILE."""
    line = refusal(tmp_path, **tls(certificates, TLS_CLIENT_CA_FILE=str(tmp_path / "no-ca.pem")))
    assert line.startswith(f"{PREFIX}TLS_CLIENT_CA_FILE: cannot read {tmp_path / 'no-ca.pem'}")


def test_a_missing_clients_file_is_named(tmp_path: Path) -> None:
    """A clients file that does not exist is refused naming CLIENTS_FILE."""
    line = refusal(tmp_path, CLIENTS_FILE=str(tmp_path / "absent.json"))
    assert line.startswith(f"{PREFIX}CLIENTS_FILE: cannot read {tmp_path / 'absent.json'}")


def test_an_ambiguous_clients_file_is_refused_naming_the_entry(tmp_path: Path) -> None:
    """Two clients holding one token are refused naming the file and both entries, and
    neither the line nor anything else shows the token."""
    clients = write_clients(
        tmp_path / "clients.json",
        {"name": "billing", "token": TAKEN, "scopes": ["accounts:read"]},
        {"name": "sync", "token": TAKEN, "scopes": ["events:read"]},
    )
    line = refusal(tmp_path, CLIENTS_FILE=str(clients))
    assert line == (
        f"{PREFIX}CLIENTS_FILE: {clients}: entry 2 ('sync'): entry 1 ('billing') has the same token"
    )


@pytest.mark.slow
@pytest.mark.asyncio
async def test_an_ambiguous_clients_file_at_run_time_keeps_the_previous_clients(
    tmp_path: Path,
) -> None:
    """A changed clients file with two clients of one name is logged as an error naming
    the entry; the clients loaded before keep working and the new file lets no one in."""
    clients = write_clients(
        tmp_path / "clients.json", {"name": "app", "token": GOOD, "scopes": ["sessions:create"]}
    )
    env = serve_env(tmp_path, "whsec-test-secret", STACKONE_CONNECT_CLIENTS_FILE=str(clients))
    request = pb.CreateSessionRequest(origin_owner_id="t-1", origin_owner_name="Acme")
    async with (
        serve_process(env) as serve,
        grpc.aio.insecure_channel(serve.grpc_target) as channel,
    ):
        stub: pb_grpc.ConnectServiceAsyncStub = pb_grpc.ConnectServiceStub(channel)
        write_clients(
            clients,
            {"name": "app", "token": GOOD, "scopes": ["sessions:create"]},
            {"name": "app", "token": TAKEN, "scopes": ["sessions:create"]},
        )

        async def logged() -> bool:  # the file is re-read on a call, at most once a second
            await stub.CreateSession(request, metadata=(("authorization", f"Bearer {GOOD}"),))
            return any(entry.get("level") == "ERROR" for entry in serve.log_lines)

        await eventually(logged, timeout=10)
        errors = [entry["message"] for entry in serve.log_lines if entry.get("level") == "ERROR"]
        assert errors == [
            f"keeping the previous clients: {clients}: entry 2 ('app'): entry 1 has the same name"
        ]
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.CreateSession(request, metadata=(("authorization", f"Bearer {TAKEN}"),))
        assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
        async with httpx.AsyncClient(base_url=serve.admin_url) as admin:
            rejected = await metric(admin, reloads("clients", "rejected"))
        assert rejected == 1
        assert await serve.stop() == 0
    assert TAKEN not in str(serve.log_lines)


@pytest.mark.parametrize(
    ("setting", "value", "problem"),
    [
        ("BOOKMARK_INTERVAL", "inf", "Input should be a finite number"),
        ("BOOKMARK_INTERVAL", "nan", "Input should be a finite number"),
        ("SHUTDOWN_GRACE", "-1", "Input should be greater than or equal to 0"),
        ("BOOKMARK_INTERVAL", "1e300", "Input should be less than or equal to 315360000"),
        ("RETENTION_MAX_COUNT", str(2**63), f"Input should be less than or equal to {2**63 - 1}"),
    ],
    ids=["infinite", "nan", "negative", "huge-duration", "huge-count"],
)
def test_a_duration_or_count_out_of_range_is_named(
    tmp_path: Path, setting: str, value: str, problem: str
) -> None:
    """A duration that is not finite, negative or past ten years, or a count past int64,
    is refused naming its variable (and no flag `serve` does not have)."""
    assert refusal(tmp_path, **{setting: value}) == f"{PREFIX}{setting}: {problem}"


@pytest.mark.parametrize("url", ["mysql://db/events", "sqlite://", "nats://"])
def test_an_event_log_url_no_backend_opens_is_named(tmp_path: Path, url: str) -> None:
    """A URL of no backend's scheme, or one saying too little to open (no path, no host),
    is refused naming the variable and the URLs that would do, by `serve` and by the
    commands that read the settings, although the settings know no backend."""
    expected = (
        f"{PREFIX}EVENT_LOG_URL (--event-log-url): '{url}' is not a supported event log URL "
        "(sqlite:///path.db or nats://host:port)"
    )
    assert refusal(tmp_path, EVENT_LOG_URL=url) == expected
    env = serve_env(tmp_path, "whsec-test-secret", STACKONE_CONNECT_EVENT_LOG_URL=url)
    backup = subprocess.run(
        [*SERVE[:-1], "backup", str(tmp_path / "copy.db")],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (backup.returncode, backup.stderr.splitlines()) == (2, [expected])


def _entry(name: object = "app", token: object = GOOD, **more: object) -> dict[str, object]:
    return {"name": name, "token": token, "scopes": ["accounts:read"], **more}


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        ([_entry("a"), _entry("b")], "entry 2 ('b'): entry 1 ('a') has the same token"),
        ([_entry(), _entry(token=TAKEN)], "entry 2 ('app'): entry 1 has the same name"),
        ([_entry(token="")], "entry 1 ('app'): the token must be a string of at least 16"),
        ([_entry(token="short")], "entry 1 ('app'): the token must be a string of at least 16"),
        ([_entry(token="tökén-0123456789abcdef")], "entry 1 ('app'): the token must be printable"),
        ([_entry(token="two words 0123456789")], "entry 1 ('app'): the token must be printable"),
        ([_entry(scopes=[])], "entry 1 ('app'): no scopes"),
        ([_entry(scopes=["accounts:admin"])], "entry 1 ('app'): unknown scopes ['accounts:admin']"),
        ([_entry(scopes="accounts:read")], "entry 1 ('app'): scopes must be a list"),
        ([_entry(scope=["events:read"])], "entry 1: unknown keys ['scope']"),
        (
            [{"name": "app", "scopes": ["accounts:read"]}],
            "entry 1 ('app'): a client needs a 'token', a 'certificate_uri' or both",
        ),
        ([{"name": "app", "token": GOOD}], "entry 1: missing ['scopes']"),
        ([_entry(owners="acme-1")], "entry 1 ('app'): owners must be a list"),
        ([_entry(owners=[])], "entry 1 ('app'): owners: an empty owners list would act for"),
        ([_entry(owners=["*"])], "entry 1 ('app'): owners: '*': a prefix is some characters"),
        ([_entry(owners=["a*b"])], "entry 1 ('app'): owners: 'a*b': '*' may only end a prefix"),
        ([_entry(owners=["a**"])], "entry 1 ('app'): owners: 'a**': a prefix is"),
        ([_entry(owners=[""])], "entry 1 ('app'): owners: an owner must be a non-empty"),
        ([_entry(owners=[f"t-{n}" for n in range(101)])], "entry 1 ('app'): at most 100 owners"),
        ([_entry(certificate_uri="billing")], "entry 1 ('app'): certificate_uri must be the URI"),
        (
            [
                _entry("a", certificate_uri="spiffe://x/a"),
                _entry("b", TAKEN, certificate_uri="spiffe://x/a"),
            ],
            "entry 2 ('b'): entry 1 ('a') has the same certificate_uri",
        ),
        ([_entry(calls_per_minute=0)], "entry 1 ('app'): calls_per_minute must be a whole number"),
        ([_entry(calls_per_minute="5")], "entry 1 ('app'): calls_per_minute must be a whole"),
        ([_entry(calls_per_minute=True)], "entry 1 ('app'): calls_per_minute must be a whole"),
        ([_entry(name="")], "entry 1: the name must be 1-255 printable characters"),
        ([_entry(name=7)], "entry 1: the name must be 1-255 printable characters"),
        ([_entry(), "app"], "entry 2: expected"),
    ],
    ids=lambda value: value if isinstance(value, str) else "-",
)
def test_an_unusable_or_ambiguous_client_is_refused_naming_its_entry(
    entries: list[object], problem: str
) -> None:
    """Each entry is complete, unambiguous and usable, or the file is refused naming the
    entry and never showing a token."""
    raw = orjson.dumps({"clients": entries})
    with pytest.raises(InvalidClientsFile) as refused:
        parse_clients(raw, "clients.json")
    assert str(refused.value).startswith(f"clients.json: {problem}")
    for secret in (GOOD, TAKEN):
        assert secret not in str(refused.value)


def test_a_client_known_by_certificate_needs_mutual_tls(tmp_path: Path) -> None:
    """A clients file naming a certificate_uri on a server that asks for no client
    certificate is refused naming the client and the setting it needs."""
    clients = write_clients(
        tmp_path / "clients.json",
        {"name": "hr", "certificate_uri": "spiffe://t/hr", "scopes": ["accounts:read"]},
    )
    assert refusal(tmp_path, CLIENTS_FILE=str(clients)) == (
        f"{PREFIX}CLIENTS_FILE: {clients}: 'hr' is known by its certificate_uri, which needs "
        "mutual TLS (STACKONE_CONNECT_TLS_CLIENT_CA_FILE)"
    )


def test_a_client_share_past_the_whole_budget_is_refused() -> None:
    """A client's calls_per_minute above the rate limit could never be spent: refused."""
    raw = orjson.dumps({"clients": [_entry(calls_per_minute=1001)]})
    with pytest.raises(InvalidClientsFile) as refused:
        parse_clients(raw, "clients.json", max_calls_per_minute=1000)
    assert str(refused.value) == (
        "clients.json: entry 1 ('app'): calls_per_minute 1001 is more than the whole StackOne "
        "budget (STACKONE_CONNECT_RATE_LIMIT=1000)"
    )
    assert parse_clients(raw, "clients.json", max_calls_per_minute=1001)[0].calls_per_minute


@pytest.mark.parametrize(
    "raw", [b"", b"[]", b'{"clients": {}}', b'{"clients": [], "client": []}'], ids=repr
)
def test_a_clients_file_of_another_shape_is_refused(raw: bytes) -> None:
    """Anything but one `clients` list is refused, an unknown key (a typo) included."""
    with pytest.raises(InvalidClientsFile, match=r"^clients\.json: "):
        parse_clients(raw, "clients.json")


@pytest.mark.asyncio
async def test_a_second_service_on_a_held_grpc_port_is_refused(tmp_path: Path) -> None:
    """grpc would share the port (SO_REUSEPORT) and split the calls between two processes;
    the second `serve` is refused instead, naming the setting."""
    (tmp_path / "first").mkdir()
    async with serve_process(serve_env(tmp_path / "first", "whsec-test-secret")) as first:
        (tmp_path / "second").mkdir()
        line = refusal(tmp_path / "second", GRPC_ADDRESS=first.grpc_target)
    assert line == (
        f"stackone-connect: cannot start: cannot listen on {first.grpc_target} "
        "(STACKONE_CONNECT_GRPC_ADDRESS): Address already in use"
    )


def test_a_mistyped_variable_is_named_with_the_closest_setting(tmp_path: Path) -> None:
    """pydantic-settings ignores an unknown `STACKONE_CONNECT_…` variable; the CLI says so."""
    env = {
        **os.environ,
        **serve_env(tmp_path, "whsec-test-secret"),
        "STACKONE_CONNECT_GRPC_ADRESS": "127.0.0.1:1",
        "STACKONE_CONNECT_GRPC_ADDRESS": "not an address",
    }
    result = subprocess.run(SERVE, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == (
        "stackone-connect: warning: STACKONE_CONNECT_GRPC_ADRESS is not a setting and is "
        "ignored; did you mean STACKONE_CONNECT_GRPC_ADDRESS?"
    )


def test_version_prints_the_package_version() -> None:
    """`stackone-connect --version` names the installed package's version."""
    result = subprocess.run(
        [*SERVE[:-1], "--version"], capture_output=True, text=True, timeout=30, check=True
    )
    assert (
        result.stdout.strip()
        == f"stackone-connect {importlib.metadata.version('stackone-connect')}"
    )


def _held_port() -> int:
    """A loopback port nothing listens on now (each setting naming it would bind it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    ("addresses", "where"),
    [
        ({"GRPC_ADDRESS": "127.0.0.1:{port}", "GATEWAY_ADDRESS": "127.0.0.1:{port}"}, "{host}"),
        ({"GATEWAY_ADDRESS": "localhost:{port}", "ADMIN_ADDRESS": "0.0.0.0:{port}"}, "port {port}"),
        (
            {
                "GRPC_ADDRESS": "127.0.0.1:{port}",
                "GATEWAY_ADDRESS": "127.0.0.1:{port}",
                "EMULATOR_ADDRESS": "127.0.0.1:{port}",
            },
            "{host}",
        ),
    ],
    ids=["grpc-and-gateway", "localhost-and-every-address", "three"],
)
def test_settings_naming_one_address_are_named_together_in_one_line(
    tmp_path: Path, addresses: dict[str, str], where: str
) -> None:
    """Two or more listeners given one address are refused in one line naming every
    setting involved, before grpc or aiohttp fails to bind the second."""
    port = _held_port()
    settings = {name: value.format(port=port) for name, value in addresses.items()}
    line = refusal(tmp_path, **settings)
    named = [f"STACKONE_CONNECT_{name}" for name in ORDER if name in settings]
    host = f"127.0.0.1:{port}"
    assert line == (
        f"stackone-connect: cannot start: {', '.join(named[:-1])} and {named[-1]} name the "
        f"same address ({where.format(host=host, port=port)}): give each its own port"
    )


ORDER = ["GRPC_ADDRESS", "GATEWAY_ADDRESS", "ADMIN_ADDRESS", "EMULATOR_ADDRESS"]
