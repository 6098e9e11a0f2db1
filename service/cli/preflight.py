"""What `serve` reads before it starts, read the same way by `serve` (to refuse in one line
before anything starts) and by `check` (to report every problem at once): the files an
operator edits, the addresses it listens on, where the events, the audit trail and the
emulator's memory go, and the tracing variables. Each problem is one line naming its
setting; none holds a secret."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import nats
from nats.errors import Error as NatsError
from pydantic import ValidationError

from gateway.secrets import InvalidSecretsFile, read_secrets
from service.config import ENV_PREFIX, Settings
from service.emulator import memory
from service.events import sqlite
from service.nats_servers import nats_servers
from service.rpc.audit import LOG_SINK
from service.rpc.auth import InvalidClientsFile
from service.rpc.server import TlsFileError, check_files
from service.runtime import emulator_memory, grpc_server_options
from service.tracing import TracingConfigError
from service.tracing import from_environment as tracing_from_environment

FILE_ERRORS = (TlsFileError, InvalidClientsFile, InvalidSecretsFile)
NATS_SECONDS = 5.0
_SQLITE_HEADER = b"SQLite format 3\x00"


def check_operator_files(settings: Settings) -> None:
    """Reads every file an operator edits as `serve` will; raises one of `FILE_ERRORS`."""
    known_by_certificate = check_files(grpc_server_options(settings))
    if known_by_certificate and settings.tls_client_ca_file is None:
        # No client certificate is ever asked for: such a client could never call.
        raise InvalidClientsFile(
            f"{settings.clients_file}: '{known_by_certificate[0]}' is known by its "
            f"certificate_uri, which needs mutual TLS ({ENV_PREFIX}TLS_CLIENT_CA_FILE)"
        )
    if settings.webhook_secrets_file is not None:
        read_secrets(settings.webhook_secrets_file)


def file_problem(error: TlsFileError | InvalidClientsFile | InvalidSecretsFile) -> str:
    """The problem of a file that cannot be used, naming its setting."""
    if isinstance(error, InvalidClientsFile):
        return f"{ENV_PREFIX}CLIENTS_FILE: {error}"
    if isinstance(error, InvalidSecretsFile):
        return f"{ENV_PREFIX}WEBHOOK_SECRETS_FILE: {error}"
    return str(error)  # TLS errors name their setting themselves


def listeners(settings: Settings) -> dict[str, str]:
    """The addresses `serve` will listen on, by the variable naming each."""
    addresses = {
        f"{ENV_PREFIX}GRPC_ADDRESS": settings.grpc_address,
        f"{ENV_PREFIX}GATEWAY_ADDRESS": settings.gateway_address,
        f"{ENV_PREFIX}ADMIN_ADDRESS": settings.admin_address,
    }
    if settings.uses_emulator:
        addresses[f"{ENV_PREFIX}EMULATOR_ADDRESS"] = settings.emulator_address
    return addresses


def shared_address(addresses: Mapping[str, str]) -> str | None:
    """The problem of two or more settings naming one address (the second listener could
    not bind, or would share the port), naming them all; None when each has its own."""
    by_port: dict[int, list[tuple[str, str, str]]] = {}
    for setting, address in addresses.items():
        host, _, port = address.rpartition(":")
        if int(port) != 0:  # port 0: each gets a port of its own
            by_port.setdefault(int(port), []).append((setting, address, _ip(host, port)))
    for number, named in by_port.items():
        for _, address, ip in named:
            overlapping = [s for s, _, other in named if _overlap(ip, other)]
            if len(overlapping) > 1:
                settings = ", ".join(overlapping[:-1]) + f" and {overlapping[-1]}"
                where = address if len({a for _, a, _ in named}) == 1 else f"port {number}"
                return f"{settings} name the same address ({where}): give each its own port"
    return None


def _ip(host: str, port: str) -> str:
    """The address `host` resolves to as a listener binds it, or `host` if it does not."""
    try:
        return str(
            socket.getaddrinfo(
                host.strip("[]") or None, int(port), type=socket.SOCK_STREAM,
                flags=socket.AI_PASSIVE,
            )[0][4][0]
        )  # fmt: skip
    except (OSError, ValueError):
        return host


def _overlap(one: str, other: str) -> bool:
    """True when listeners on these addresses (one port) would collide: the same address,
    or one of them every address."""
    return one == other or {one, other} & {"0.0.0.0", "::"} != set()  # noqa: S104 - compared, not bound


async def problems(settings: Settings) -> list[str]:
    """Every problem `serve` would meet reading what `settings` name, one line each."""
    found = []
    try:
        check_operator_files(settings)
    except FILE_ERRORS as error:
        found.append(file_problem(error))
    if (shared := shared_address(listeners(settings))) is not None:
        found.append(shared)
    found += _audit_problems(settings)
    found += await _event_log_problems(settings)
    found += _emulator_problems(settings)
    found += _tracing_problems()
    return found


def _audit_problems(settings: Settings) -> list[str]:
    sink = settings.audit_sink
    if sink is None or sink == LOG_SINK:
        return []
    if (problem := _unwritable(Path(sink))) is None:
        return []
    return [f"{ENV_PREFIX}AUDIT_SINK: cannot write {sink}: {problem}"]


def _unwritable(path: Path) -> str | None:
    """Why `serve` could not append to `path` (creating it), if it could not; nothing is
    created here."""
    if path.exists():
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC))
        except OSError as error:
            return str(error.strerror)
        return None
    folder = path.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"its folder {folder} is not writable"
    return None


async def _event_log_problems(settings: Settings) -> list[str]:
    url = urlparse(settings.event_log_url)
    variable = f"{ENV_PREFIX}EVENT_LOG_URL"
    if url.scheme != "sqlite":
        problem = await _nats_problem(settings.event_log_url)
        return [] if problem is None else [f"{variable}: {problem}"]
    path = sqlite.path_of(url)
    if path.is_dir():
        return [f"{variable}: {path} is a folder, not a SQLite database file"]
    if path.exists():
        with path.open("rb") as database:
            header = database.read(len(_SQLITE_HEADER))
        if header and header != _SQLITE_HEADER:
            return [f"{variable}: {path} is not a SQLite database"]
        return []
    folder = next((parent for parent in path.parents if parent.exists()), Path("/"))
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        return [f"{variable}: cannot create {path}: {folder} is not a writable folder"]
    return []


async def _nats_problem(url: str) -> str | None:
    """Why NATS JetStream at `url` cannot hold the events, if it cannot; nothing is created."""
    # nats.connect retries a refused first connection until its caller gives up: a plain
    # connection first says at once why none can be made.
    if (unreachable := await _unreachable(url)) is not None:
        return f"cannot connect to NATS at {url}: {unreachable}"

    async def quiet(error: Exception) -> None:
        """The connection's errors end in the exception below: not logged as well."""

    try:
        async with asyncio.timeout(NATS_SECONDS):
            connection = await nats.connect(
                nats_servers(url),
                connect_timeout=NATS_SECONDS,
                allow_reconnect=False,
                error_cb=quiet,
            )
    except (TimeoutError, OSError, NatsError) as error:
        return f"cannot connect to NATS at {url}: {str(error) or type(error).__name__}"
    try:
        await connection.jetstream().account_info()
    except (TimeoutError, NatsError) as error:
        return f"NATS at {url} does not answer as JetStream: {str(error) or type(error).__name__}"
    finally:
        await connection.close()
    return None


async def _unreachable(url: str) -> str | None:
    """Why no server of the NATS `url` (`nats://a:4222,nats://b:4222`) takes a connection."""
    why = "no server named"
    for server in nats_servers(url):
        parsed = urlparse(server)
        try:
            async with asyncio.timeout(NATS_SECONDS):
                _, writer = await asyncio.open_connection(parsed.hostname, parsed.port or 4222)
        except (OSError, TimeoutError, ValueError) as error:
            why = getattr(error, "strerror", None) or str(error) or type(error).__name__
            continue
        writer.close()
        await writer.wait_closed()
        return None
    return why


def _emulator_problems(settings: Settings) -> list[str]:
    path = emulator_memory(settings) if settings.uses_emulator else None
    if path is None or not path.exists():
        return []
    try:
        memory.read(path)
    except memory.UNREADABLE as error:
        setting = f"{ENV_PREFIX}EMULATOR_STATE_FILE"
        if settings.emulator_state_file is None:
            setting += " (unset: emulator.json beside the event log)"
        why = str(error)
        if isinstance(error, ValidationError):  # its message is a paragraph
            first = error.errors(include_url=False)[0]
            why = f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
        return [f"{setting}: {path} is unreadable ({why}): the emulator would start empty"]
    return []


def _tracing_problems() -> list[str]:
    try:
        tracing = tracing_from_environment()
    except TracingConfigError as error:
        return [str(error)]
    tracing.shutdown()
    return []
