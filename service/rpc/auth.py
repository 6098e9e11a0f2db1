"""Who may call what, for whom: clients known by bearer token or mTLS certificate, with
scopes, owners and a StackOne share, checked by one interceptor.

Clients are listed in a JSON file (`STACKONE_CONNECT_CLIENTS_FILE`):

    {"clients": [{"name": "billing", "token": "…", "scopes": ["sessions:create"],
                  "owners": ["acme-*", "globex"], "calls_per_minute": 120},
                 {"name": "hr-sync", "certificate_uri": "spiffe://corp/hr-sync",
                  "scopes": ["accounts:read", "events:read"]}]}

`owners` (optional) limits the client to those customers' `origin_owner_id`s, exactly or
by prefix (`service.owners`); `calls_per_minute` (optional) is its own share of the
callers' StackOne calls (`service.stackone.budget.ClientShare`). A client is known by its
bearer token, or, on mutual TLS, by a URI subject alternative name of its certificate
(`certificate_uri`; SPIFFE ids are such URIs): an entry has either or both. A call that
sends a bearer token is judged by the token alone.

The file is re-read when it changes (checked at most once a second), so tokens rotate
without a restart: list the new token beside the old one (an entry of its own name: names
and tokens are unique), move clients over, then remove the old one. Tokens are compared in
constant time against every client and never logged. Health checking and reflection stay
open so probes and tools work without a token.

An open stream answers to the entry it was opened under: while streams are open the file
is looked at every second even without calls, and when a new version withdraws the
stream's credential it ends `UNAUTHENTICATED`; when it changes the entry's owners or takes
its `events:read` away, `PERMISSION_DENIED` (reconnect for the new scope). Streams of an
entry the new version leaves as it was go on undisturbed.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import grpc
import orjson

from service.metrics import Metrics
from service.owners import CALLER_OWNERS, InvalidOwners, OwnerScope
from service.reloading import ReloadedFiles, Reported, read_file
from service.rpc.audit import CALLER
from service.rpc.held_streams import Ending, HeldStreams, Interruptible, Standing
from service.rpc.interceptor import Context, MethodInterceptor, replace_behaviour
from service.rpc.limits import MAX_FILTER_VALUES
from service.rpc.methods import CONNECT_METHODS
from service.stackone.budget import CALLER_SHARE, ClientShare

if TYPE_CHECKING:
    from service.rpc.grpc_typing import Handler

_log = logging.getLogger(__name__)
METHOD_SCOPES = {method.name: method.scope for method in CONNECT_METHODS}
SCOPES = frozenset(METHOD_SCOPES.values())


class InvalidClientsFile(ValueError):
    """The clients file cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class Client:
    """A caller of the service and what it may do."""

    name: str
    token: bytes | None
    scopes: frozenset[str]
    owners: OwnerScope | None = None
    """The customers it acts for; None: every customer."""
    certificate_uri: str | None = None
    calls_per_minute: int | None = None


def parse_clients(raw: bytes, source: str, max_calls_per_minute: int | None = None) -> list[Client]:
    """Reads the clients file format; raises `InvalidClientsFile` naming the problem and,
    for a client, its entry (never its token). `max_calls_per_minute`: the StackOne
    budget a client's `calls_per_minute` must fit in."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise InvalidClientsFile(f"{source}: not JSON: {error}") from error
    if not (isinstance(document, dict) and set(document) == {"clients"}) or not isinstance(
        document["clients"], list
    ):
        raise InvalidClientsFile(f'{source}: expected {{"clients": [{_ENTRY_SHAPE}, …]}}')
    clients = [
        _client(entry, f"{source}: entry {n}", max_calls_per_minute)
        for n, entry in enumerate(document["clients"], 1)
    ]
    _refuse_ambiguity(clients, source)
    return clients


_ENTRY_SHAPE = '{"name": …, "token": …, "scopes": […]}'
_REQUIRED = frozenset({"name", "scopes"})
_OPTIONAL = frozenset({"token", "certificate_uri", "owners", "calls_per_minute"})
_FIELDS = _REQUIRED | _OPTIONAL
MAX_CERTIFICATE_URI = 2048
MIN_TOKEN_LENGTH = 16
# What a gRPC header value can carry, spaces aside (a bearer token ends at one).
_TOKEN_PATTERN = re.compile(r"[!-~]+")


def _client(entry: object, where: str, max_calls_per_minute: int | None) -> Client:
    """One entry of the file as a client, or `InvalidClientsFile` saying what is wrong."""
    if not isinstance(entry, dict):
        raise InvalidClientsFile(f"{where}: expected {_ENTRY_SHAPE}")
    if unknown := set(entry) - _FIELDS:
        raise InvalidClientsFile(
            f"{where}: unknown keys {sorted(unknown)}; known: {sorted(_FIELDS)}"
        )
    if missing := _REQUIRED - set(entry):
        raise InvalidClientsFile(f"{where}: missing {sorted(missing)}")
    name = entry["name"]
    if not (isinstance(name, str) and 0 < len(name) <= 255 and name.isprintable()):
        raise InvalidClientsFile(f"{where}: the name must be 1-255 printable characters")
    where = f"{where} ('{name}')"
    if "token" not in entry and "certificate_uri" not in entry:
        raise InvalidClientsFile(
            f"{where}: a client needs a 'token', a 'certificate_uri' or both to be known by"
        )
    return Client(
        name,
        _token(entry["token"], where) if "token" in entry else None,
        _scopes(entry["scopes"], where),
        _owners(entry["owners"], where) if "owners" in entry else None,
        _certificate_uri(entry["certificate_uri"], where) if "certificate_uri" in entry else None,
        (
            _calls_per_minute(entry["calls_per_minute"], where, max_calls_per_minute)
            if "calls_per_minute" in entry
            else None
        ),
    )


def _token(token: object, where: str) -> bytes:
    if not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH:
        raise InvalidClientsFile(
            f"{where}: the token must be a string of at least {MIN_TOKEN_LENGTH} characters"
        )
    if not _TOKEN_PATTERN.fullmatch(token):
        raise InvalidClientsFile(
            f"{where}: the token must be printable ASCII without spaces (it is sent in a header)"
        )
    return token.encode()


def _scopes(scopes: object, where: str) -> frozenset[str]:
    if not (isinstance(scopes, list) and all(isinstance(scope, str) for scope in scopes)):
        raise InvalidClientsFile(f"{where}: scopes must be a list of scope names")
    if not scopes:
        raise InvalidClientsFile(f"{where}: no scopes, so it could call nothing")
    if unknown := set(scopes) - SCOPES:
        raise InvalidClientsFile(
            f"{where}: unknown scopes {sorted(unknown)}; known: {sorted(SCOPES)}"
        )
    return frozenset(scopes)


def _owners(owners: object, where: str) -> OwnerScope:
    if not (isinstance(owners, list) and all(isinstance(owner, str) for owner in owners)):
        raise InvalidClientsFile(
            f"{where}: owners must be a list of origin_owner_ids and prefixes ('acme-*')"
        )
    if len(owners) > MAX_FILTER_VALUES:
        # Exact owners become a listing's filter, which takes at most this many values.
        raise InvalidClientsFile(
            f"{where}: at most {MAX_FILTER_VALUES} owners; use prefixes ('acme-*') for more"
        )
    try:
        return OwnerScope.parse(owners)
    except InvalidOwners as error:
        raise InvalidClientsFile(f"{where}: owners: {error}") from error


def _certificate_uri(uri: object, where: str) -> str:
    if not (
        isinstance(uri, str)
        and 0 < len(uri) <= MAX_CERTIFICATE_URI
        and ":" in uri
        and uri.isprintable()
    ):
        raise InvalidClientsFile(
            f"{where}: certificate_uri must be the URI subject alternative name of the "
            "client's certificate (such as 'spiffe://corp.example/billing')"
        )
    return uri


def _calls_per_minute(value: object, where: str, limit: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidClientsFile(f"{where}: calls_per_minute must be a whole number of at least 1")
    if limit is not None and value > limit:
        raise InvalidClientsFile(
            f"{where}: calls_per_minute {value} is more than the whole StackOne budget "
            f"(STACKONE_CONNECT_RATE_LIMIT={limit})"
        )
    return value


def _refuse_ambiguity(clients: list[Client], source: str) -> None:
    """Refuses two clients of one name, token or certificate URI (which one is calling?)."""
    by_name: dict[str, int] = {}
    by_token: dict[bytes, int] = {}
    by_uri: dict[str, int] = {}
    for n, client in enumerate(clients, 1):
        if (first := by_name.setdefault(client.name, n)) != n:
            raise InvalidClientsFile(
                f"{source}: entry {n} ('{client.name}'): entry {first} has the same name"
            )
        _refuse_repeat(by_token, client.token, "token", clients, n, source)
        _refuse_repeat(by_uri, client.certificate_uri, "certificate_uri", clients, n, source)


def _refuse_repeat(
    seen: dict[_Key, int], key: _Key | None, what: str, clients: list[Client], n: int, source: str
) -> None:
    if key is not None and (first := seen.setdefault(key, n)) != n:
        raise InvalidClientsFile(
            f"{source}: entry {n} ('{clients[n - 1].name}'): entry {first} "
            f"('{clients[first - 1].name}') has the same {what}"
        )


_Key = TypeVar("_Key", str, bytes)


def read_clients(path: Path, max_calls_per_minute: int | None = None) -> list[Client]:
    """The clients of the file at `path`; `InvalidClientsFile` when it cannot be read or used."""
    return parse_clients(read_file(path, InvalidClientsFile), str(path), max_calls_per_minute)


class ClientRegistry:
    """The clients of a file, re-read when the file changes.

    Args:
        path: the clients file.
        max_calls_per_minute: the StackOne budget a client's `calls_per_minute` fits in.
        metrics: where clients' own shares count their calls.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_calls_per_minute: int | None = None,
        metrics: Metrics | None = None,
        reported: Reported | None = None,
    ) -> None:
        self._metrics = metrics
        self._clients: list[Client] = []
        self._by_certificate: dict[str, Client] = {}
        self._by_token: dict[bytes, Client] = {}  # for open streams only: calls use `find`
        # By name, so that a re-read keeps counting the calls a client made.
        self._shares: dict[str, ClientShare] = {}
        self._file = ReloadedFiles(
            "clients",
            read=lambda: read_file(path, InvalidClientsFile),
            load=lambda raw: parse_clients(raw, str(path), max_calls_per_minute),
            describe=lambda clients: f"{len(clients)} client(s) from {path}",
            errors=InvalidClientsFile,
            reported=reported,
        )
        self._streams = HeldStreams(self._verdict, self._refresh, self._file.next_look_in)
        self._use(self._file.current)

    def _use(self, clients: list[Client]) -> None:
        self._clients = clients
        self._by_certificate = {c.certificate_uri: c for c in clients if c.certificate_uri}
        self._by_token = {c.token: c for c in clients if c.token}
        shares: dict[str, ClientShare] = {}
        for client in clients:
            if client.calls_per_minute is None:
                continue
            share = self._shares.get(client.name) or ClientShare(
                client.name, client.calls_per_minute, self._metrics
            )
            share.calls_per_minute = client.calls_per_minute
            shares[client.name] = share
        self._shares = shares
        self._streams.judge()

    def _refresh(self) -> None:
        if self._file.refresh():
            self._use(self._file.current)

    def find(self, token: bytes) -> Client | None:
        """The client holding `token`, comparing against every client in constant time."""
        self._refresh()
        found = None
        for client in self._clients:
            if client.token is not None and hmac.compare_digest(client.token, token):
                found = client
        return found

    @property
    def knows_certificates(self) -> bool:
        """True when some client is known by its certificate."""
        self._refresh()
        return bool(self._by_certificate)

    def find_by_certificate(self, uris: Iterable[bytes]) -> Client | None:
        """The one client named by the URI subject alternative names of a peer's
        certificate; None when none is, or when they name several (which one calls?)."""
        found: Client | None = None
        for uri in uris:
            client = self._by_certificate.get(uri.decode(errors="replace"))
            if client is not None and found is not None and client is not found:
                return None
            found = client or found
        return found

    def share(self, client: Client) -> ClientShare | None:
        """The client's own share of the callers' StackOne calls, if it has one."""
        return self._shares.get(client.name) if client.calls_per_minute is not None else None

    def hold(self, client: Client, by_certificate: bool, feed: Interruptible) -> Standing[Client]:
        """Holds an open stream of `client`, known by its certificate or its token: its
        `feed` is interrupted when a new version of the file withdraws or re-scopes it."""
        return self._streams.hold(client, by_certificate, feed)

    def _verdict(self, was: Client, by_certificate: bool) -> Client | Ending:
        """The entry a stream opened as `was` goes on under in the version in force while
        what it may read is unchanged (a name, calls_per_minute or another scope may
        differ), or the status that ends it."""
        current = (
            self._by_certificate.get(was.certificate_uri or "")
            if by_certificate
            else self._by_token.get(was.token or b"")
        )
        if current is None:
            credential = "certificate URI" if by_certificate else "token"
            return (
                grpc.StatusCode.UNAUTHENTICATED,
                f"the {credential} this stream was opened with (client '{was.name}') was "
                "withdrawn from the clients file; reconnect with a current credential",
            )
        if current.owners == was.owners and _STREAM_SCOPE in current.scopes:
            return current
        return (
            grpc.StatusCode.PERMISSION_DENIED,
            f"the clients file changed the scope (owners or scopes) of client '{was.name}' "
            "after this stream opened; reconnect to continue with the new scope",
        )


_STREAM_SCOPE = "events:read"


@dataclass(frozen=True, slots=True)
class _StreamCaller:
    registry: ClientRegistry
    client: Client
    by_certificate: bool


STREAM_CALLER: ContextVar[_StreamCaller | None] = ContextVar("STREAM_CALLER", default=None)
"""The client a stream serves, set by `AuthInterceptor` for a streaming call."""


def hold_caller(feed: Interruptible) -> Standing[Client] | None:
    """Registers the stream following `feed` under its caller's entry of the clients file,
    so that a change to that entry interrupts it; None without a clients file. The stream
    calls `Standing.remove` when it ends."""
    caller = STREAM_CALLER.get()
    if caller is None:
        return None
    return caller.registry.hold(caller.client, caller.by_certificate, feed)


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


_NO_IDENTITY = "a valid bearer token is required: send 'authorization: Bearer <token>'"
_NO_IDENTITY_OR_CERTIFICATE = (
    "a valid bearer token ('authorization: Bearer <token>') or a client certificate whose "
    "URI subject alternative name is a certificate_uri of the clients file is required"
)
PEER_URI = "peer_uri"
"""The auth-context property of grpc listing the URI SANs of the peer's certificate."""


class AuthInterceptor(MethodInterceptor):
    """UNAUTHENTICATED without a known client, PERMISSION_DENIED without the scope.

    A client is known by its bearer token, or (no token sent) by its mutual-TLS
    certificate. For the call it serves, the client's owners and StackOne share are set
    in `CALLER_OWNERS` and `CALLER_SHARE`: the interceptor runs in the call's own task,
    before its handler, so the handler sees them.
    """

    def __init__(self, registry: ClientRegistry, service_name: str) -> None:
        super().__init__(service_name)
        self._registry = registry
        # Wrapped once per method, as the call interceptor does: not a closure per call.
        self._certificate_handlers: dict[str, tuple[Handler, Handler]] = {}

    def intercept_method(
        self, method: str, handler: Handler, details: grpc.HandlerCallDetails
    ) -> Handler:
        """Lets the call through only for a client holding the method's scope."""
        scope = METHOD_SCOPES[method]
        token = _bearer(details.invocation_metadata)
        if not token:
            if self._registry.knows_certificates:
                # The peer's certificate is only known to the call's context, in the handler.
                return self._certificate_handler(method, handler)
            return _deny(handler, grpc.StatusCode.UNAUTHENTICATED, _NO_IDENTITY)
        client = self._registry.find(token)
        if client is None:
            return _deny(handler, grpc.StatusCode.UNAUTHENTICATED, _NO_IDENTITY)
        CALLER.set(client.name)  # for the audit record, denied or not
        if scope not in client.scopes:
            return _deny(handler, grpc.StatusCode.PERMISSION_DENIED, _lacks(client, scope))
        self._act_as(client, by_certificate=False, streaming=handler.unary_stream is not None)
        return handler

    def _act_as(self, client: Client, *, by_certificate: bool, streaming: bool) -> None:
        CALLER_OWNERS.set(client.owners)
        CALLER_SHARE.set(self._registry.share(client))
        if streaming:
            STREAM_CALLER.set(_StreamCaller(self._registry, client, by_certificate))

    def _certificate_handler(self, method: str, handler: Handler) -> Handler:
        wrapped = self._certificate_handlers.get(method)
        if wrapped is None or wrapped[0] is not handler:
            behaviour = self._checking_certificate(METHOD_SCOPES[method], handler)
            wrapped = self._certificate_handlers[method] = (handler, behaviour)
        return wrapped[1]

    def _checking_certificate(self, scope: str, handler: Handler) -> Handler:
        streaming = handler.unary_stream or handler.stream_stream
        if streaming is not None:
            admit = self._admitter(scope, streaming=handler.unary_stream is not None)
            return replace_behaviour(handler, stream=_admitted_stream(admit, streaming))
        if handler.unary_unary is not None:
            admit = self._admitter(scope, streaming=False)
            return replace_behaviour(handler, unary=_admitted_unary(admit, handler.unary_unary))
        return handler  # ConnectService has no client-streaming methods

    def _admitter(self, scope: str, *, streaming: bool) -> Callable[[Context], Awaitable[None]]:
        async def admit(context: Context) -> None:
            uris = context.auth_context().get(PEER_URI, ())
            client = self._registry.find_by_certificate(uris)
            if client is None:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, _NO_IDENTITY_OR_CERTIFICATE)
            CALLER.set(client.name)  # for the audit record, denied or not
            if scope not in client.scopes:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, _lacks(client, scope))
            else:
                self._act_as(client, by_certificate=True, streaming=streaming)

        return admit


def _admitted_unary(
    admit: Callable[[Context], Awaitable[None]], inner: Callable[..., Any]
) -> Callable[..., Awaitable[Any]]:
    async def unary(request: Any, context: Context) -> Any:
        await admit(context)
        return await inner(request, context)

    return unary


def _admitted_stream(
    admit: Callable[[Context], Awaitable[None]], inner: Callable[..., Any]
) -> Callable[..., AsyncIterator[Any]]:
    async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
        await admit(context)
        async for item in inner(request, context):
            yield item

    return stream


def _lacks(client: Client, scope: str) -> str:
    return f"client '{client.name}' lacks the scope '{scope}' this method needs"
