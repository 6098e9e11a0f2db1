"""Who may call what: per-client bearer tokens with scopes, checked by one interceptor.

Clients are listed in a JSON file (`STACKONE_CONNECT_CLIENTS_FILE`):

    {"clients": [{"name": "billing", "token": "…", "scopes": ["sessions:create"]}]}

The file is re-read when it changes (checked at most once a second), so tokens rotate
without a restart: list the new token beside the old one, move clients over, then remove
the old one. Tokens are compared in constant time against every client and never logged.
Health checking and reflection stay open so probes and tools work without a token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
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
    """Reads the clients file format; raises `InvalidClientsFile` naming the problem."""
    try:
        document = orjson.loads(raw)
        entries = document["clients"]
        clients = [
            Client(str(e["name"]), str(e["token"]).encode(), frozenset(e["scopes"]))
            for e in entries
        ]
    except (orjson.JSONDecodeError, KeyError, TypeError) as error:
        raise InvalidClientsFile(
            f'{source}: expected {{"clients": [{{"name", "token", "scopes"}}]}}: {error!r}'
        ) from error
    for client in clients:
        if len(client.token) < 16:
            raise InvalidClientsFile(f"{source}: the token of {client.name} is under 16 characters")
        if unknown := client.scopes - SCOPES:
            raise InvalidClientsFile(
                f"{source}: {client.name} has unknown scopes {sorted(unknown)}; "
                f"known: {sorted(SCOPES)}"
            )
    return clients


class ClientRegistry:
    """The clients of a file, re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._clients: list[Client] = []
        self._version: bytes | None = None
        self._checked_at = 0.0
        self.reload()

    def reload(self) -> None:
        """Re-reads the file if it changed; a broken new version keeps the old clients."""
        # By content, not timestamps: a copy that keeps the old mtime and size (cp -p, a
        # config-management tool, a second-granularity file system) is still noticed.
        raw = self._path.read_bytes()
        version = hashlib.sha256(raw).digest()
        if version == self._version:
            return
        try:
            self._clients = parse_clients(raw, str(self._path))
        except InvalidClientsFile:
            if self._version is None:
                raise
            _log.exception("keeping the previous clients: the new clients file is invalid")
        self._version = version
        _log.info("loaded %d client(s) from %s", len(self._clients), self._path)

    def find(self, token: bytes) -> Client | None:
        """The client holding `token`, comparing against every client in constant time."""
        now = time.monotonic()
        if now - self._checked_at >= RELOAD_EVERY:
            self._checked_at = now
            try:
                self.reload()
            except OSError:
                _log.exception("could not re-read the clients file; keeping the loaded clients")
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
