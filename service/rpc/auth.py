"""Who may call what: per-client bearer tokens with scopes, checked by one interceptor.

Clients are listed in a JSON file (`STACKONE_CONNECT_CLIENTS_FILE`):

    {"clients": [{"name": "billing", "token": "…", "scopes": ["sessions:create"]}]}

The file is re-read when it changes (checked at most once a second), so tokens rotate
without a restart: list the new token beside the old one (an entry of its own name: names
and tokens are unique), move clients over, then remove the old one. Tokens are compared in
constant time against every client and never logged. Health checking and reflection stay
open so probes and tools work without a token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
import orjson

from service.rpc.interceptor import MethodInterceptor, replace_behaviour
from service.rpc.methods import CONNECT_METHODS

if TYPE_CHECKING:
    from service.rpc.grpc_typing import Handler

_log = logging.getLogger(__name__)
METHOD_SCOPES = {method.name: method.scope for method in CONNECT_METHODS}
SCOPES = frozenset(METHOD_SCOPES.values())
RELOAD_EVERY = 1.0


class InvalidClientsFile(ValueError):
    """The clients file cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class Client:
    """A caller of the service and what it may do."""

    name: str
    token: bytes
    scopes: frozenset[str]


def parse_clients(raw: bytes, source: str) -> list[Client]:
    """Reads the clients file format; raises `InvalidClientsFile` naming the problem and,
    for a client, its entry (never its token)."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise InvalidClientsFile(f"{source}: not JSON: {error}") from error
    if not (isinstance(document, dict) and set(document) == {"clients"}) or not isinstance(
        document["clients"], list
    ):
        raise InvalidClientsFile(f'{source}: expected {{"clients": [{_ENTRY_SHAPE}, …]}}')
    clients = [
        _client(entry, f"{source}: entry {n}") for n, entry in enumerate(document["clients"], 1)
    ]
    _refuse_ambiguity(clients, source)
    return clients


_ENTRY_SHAPE = '{"name": …, "token": …, "scopes": […]}'
_FIELDS = frozenset({"name", "token", "scopes"})
MIN_TOKEN_LENGTH = 16
# What a gRPC header value can carry, spaces aside (a bearer token ends at one).
_TOKEN_PATTERN = re.compile(r"[!-~]+")


def _client(entry: object, where: str) -> Client:
    """One entry of the file as a client, or `InvalidClientsFile` saying what is wrong."""
    if not isinstance(entry, dict):
        raise InvalidClientsFile(f"{where}: expected {_ENTRY_SHAPE}")
    if unknown := set(entry) - _FIELDS:
        raise InvalidClientsFile(
            f"{where}: unknown keys {sorted(unknown)}; known: {sorted(_FIELDS)}"
        )
    if missing := _FIELDS - set(entry):
        raise InvalidClientsFile(f"{where}: missing {sorted(missing)}")
    name, token, scopes = entry["name"], entry["token"], entry["scopes"]
    if not (isinstance(name, str) and 0 < len(name) <= 255 and name.isprintable()):
        raise InvalidClientsFile(f"{where}: the name must be 1-255 printable characters")
    where = f"{where} ('{name}')"
    if not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH:
        raise InvalidClientsFile(
            f"{where}: the token must be a string of at least {MIN_TOKEN_LENGTH} characters"
        )
    if not _TOKEN_PATTERN.fullmatch(token):
        raise InvalidClientsFile(
            f"{where}: the token must be printable ASCII without spaces (it is sent in a header)"
        )
    if not (isinstance(scopes, list) and all(isinstance(scope, str) for scope in scopes)):
        raise InvalidClientsFile(f"{where}: scopes must be a list of scope names")
    if not scopes:
        raise InvalidClientsFile(f"{where}: no scopes, so it could call nothing")
    if unknown := set(scopes) - SCOPES:
        raise InvalidClientsFile(
            f"{where}: unknown scopes {sorted(unknown)}; known: {sorted(SCOPES)}"
        )
    return Client(name, token.encode(), frozenset(scopes))


def _refuse_ambiguity(clients: list[Client], source: str) -> None:
    """Refuses two clients of one name, or of one token (which of them would be calling?)."""
    by_name: dict[str, int] = {}
    by_token: dict[bytes, int] = {}
    for n, client in enumerate(clients, 1):
        if (first := by_name.setdefault(client.name, n)) != n:
            raise InvalidClientsFile(
                f"{source}: entry {n} ('{client.name}'): entry {first} has the same name"
            )
        if (first := by_token.setdefault(client.token, n)) != n:
            raise InvalidClientsFile(
                f"{source}: entry {n} ('{client.name}'): entry {first} "
                f"('{clients[first - 1].name}') has the same token"
            )


def read_clients(path: Path) -> list[Client]:
    """The clients of the file at `path`; `InvalidClientsFile` when it cannot be read or used."""
    return parse_clients(_read(path), str(path))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise InvalidClientsFile(f"cannot read {path}: {error.strerror}") from error


class ClientRegistry:
    """The clients of a file, re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._clients: list[Client] = []
        self._version: bytes | None = None
        self._checked_at = 0.0
        self.reload()

    def reload(self) -> None:
        """Re-reads the file if it changed; a broken new version keeps the old clients.

        Raises:
            InvalidClientsFile: the file cannot be read, or its first version is invalid.
        """
        # By content, not timestamps: a copy that keeps the old mtime and size (cp -p, a
        # config-management tool, a second-granularity file system) is still noticed.
        raw = _read(self._path)
        version = hashlib.sha256(raw).digest()
        if version == self._version:
            return
        try:
            clients = parse_clients(raw, str(self._path))
        except InvalidClientsFile as error:
            if self._version is None:
                raise
            # Logged once per version; its message names the entry, never a token.
            _log.error("keeping the previous clients: %s", error)
        else:
            self._clients = clients
            _log.info("loaded %d client(s) from %s", len(clients), self._path)
        self._version = version

    def find(self, token: bytes) -> Client | None:
        """The client holding `token`, comparing against every client in constant time."""
        now = time.monotonic()
        if now - self._checked_at >= RELOAD_EVERY:
            self._checked_at = now
            try:
                self.reload()
            except InvalidClientsFile as error:  # unreadable: parse errors are handled in reload
                _log.error("keeping the loaded clients: %s", error)
        found = None
        for client in self._clients:
            if hmac.compare_digest(client.token, token):
                found = client
        return found


def _bearer(metadata: tuple[tuple[str, str | bytes], ...] | None) -> bytes | None:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            return token.strip().encode() if scheme.lower() == "bearer" else None
    return None


def _deny(handler: Handler, code: grpc.StatusCode, message: str) -> Handler:
    """A handler of the same kind as `handler` that ends the call with `code`."""

    async def deny(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> NoReturn:
        await context.abort(code, message)

    async def deny_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)
        yield  # type: ignore[unreachable]  # makes this an async generator, as streams need

    return replace_behaviour(handler, unary=deny, stream=deny_stream)


class AuthInterceptor(MethodInterceptor):
    """UNAUTHENTICATED without a known bearer token, PERMISSION_DENIED without the scope."""

    def __init__(self, registry: ClientRegistry, service_name: str) -> None:
        super().__init__(service_name)
        self._registry = registry

    def intercept_method(
        self, method: str, handler: Handler, details: grpc.HandlerCallDetails
    ) -> Handler:
        """Lets the call through only for a client holding the method's scope."""
        scope = METHOD_SCOPES[method]
        token = _bearer(details.invocation_metadata)
        client = self._registry.find(token) if token else None
        if client is None:
            return _deny(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "a valid bearer token is required: send 'authorization: Bearer <token>'",
            )
        if scope not in client.scopes:
            return _deny(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                f"client '{client.name}' lacks the scope '{scope}' this method needs",
            )
        return handler
