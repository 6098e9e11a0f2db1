"""The CLI's client commands: sessions, accounts and events, against a running service."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import orjson

from service.api.convert import AUTH_LINK_SECONDS
from service.cli.errors import CommandFailed
from service.cli.output import Output
from service.cli.reconnect import add_reconnect_command
from service.cli.subscriptions import add_subscription_commands
from service.tracing import Tracing, TracingConfigError
from service.tracing import from_environment as tracing_from_environment
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from stackone_connect_client import (
    Client,
    Connection,
    FileCursorStore,
    Resynced,
    Retry,
    SnapshotEnd,
    Start,
)

if TYPE_CHECKING:  # the async stub type exists only in the generated .pyi
    Stub = pb_grpc.ConnectServiceAsyncStub
    Command = Callable[[Stub, argparse.Namespace, "Output"], Any]
REGISTRY_HELP = "read the service's registry (no StackOne call; StackOne while it is not complete)"


def _auth(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying the bearer token, if one was given."""
    return (("authorization", f"Bearer {args.token}"),) if args.token else ()


def _channel(
    args: argparse.Namespace, interceptors: Sequence[grpc.aio.ClientInterceptor] = ()
) -> grpc.aio.Channel:
    """The client library's channel for `--target`, `--ca-file`, `--cert-file` and
    `--key-file`; `interceptors` wrap its calls (tracing's send the command's trace)."""
    connection = Connection(
        target=args.target, ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file
    )
    return connection.channel(interceptors)


def _status(raw_status: str, status: pb.AccountStatus.ValueType) -> str:
    """StackOne's status string, or the normalised one when StackOne sent none."""
    return raw_status or pb.AccountStatus.Name(status).removeprefix("ACCOUNT_STATUS_").lower()


def _account_row(account: pb.Account) -> list[str]:
    status = _status(account.raw_status, account.status)
    return [account.id, account.provider, account.origin_owner_id, account.origin_owner_name,
            status, account.label]  # fmt: skip


def _read_from(args: argparse.Namespace) -> pb.ReadFrom.ValueType:
    """`--registry`: the service's registry; else StackOne (the API's default)."""
    return pb.READ_FROM_REGISTRY if args.registry else pb.READ_FROM_UNSPECIFIED


_ACCOUNT_HEADERS = ["ID", "PROVIDER", "OWNER ID", "OWNER NAME", "STATUS", "LABEL"]
_EVENT_HEADERS = ["CURSOR", "TYPE", "ACCOUNT", "PROVIDER", "OWNER ID", "STATUS", "SOURCE"]
_EVENT_WIDTHS = [19, 16, 22, 12, 16, 18, 14]  # cursors of 19 digits; `inactive -> active`
FELL_BACK = "answered from StackOne: the service's registry is not complete yet"


async def create_session(stub: Stub, args: argparse.Namespace, out: Output) -> None:
    """`sessions create`."""
    request = pb.CreateSessionRequest(
        origin_owner_id=args.owner_id,
        origin_owner_name=args.owner_name,
        origin_username=args.username or "",
        provider=args.provider or "",
        categories=args.category or [],
        account_id=args.account_id or "",
        label=args.label or "",
        multiple=args.multiple,
        type=args.type or "",
        provider_version=args.provider_version or "",
        connector_profile_id=args.connector_profile_id or "",
    )
    if args.metadata is not None:
        request.metadata.update(args.metadata)
    if args.auth_link:
        request.expires_in = AUTH_LINK_SECONDS
    elif args.expires_in is not None:
        request.expires_in = args.expires_in
    out.message(await stub.CreateSession(request, metadata=_auth(args)))


async def get_session(stub: Stub, args: argparse.Namespace, out: Output) -> None:
    """`sessions get ID`: the session with its latest connection attempt."""
    request = pb.GetSessionRequest(session_id=args.session_id)
    out.message((await stub.GetSession(request, metadata=_auth(args))).session)


def _json_object(text: str) -> dict[str, Any]:
    """`--metadata`: a JSON object."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


async def get_account(stub: Stub, args: argparse.Namespace, out: Output) -> None:
    """`accounts get ID [--registry]`."""
    request = pb.GetAccountRequest(account_id=args.account_id, read_from=_read_from(args))
    account = await stub.GetAccount(request, metadata=_auth(args))
    out.message(account)
    # Read from the registry, an account always carries the cursor that set it.
    if args.registry and not account.registry_cursor and not out.as_json:
        out.note(FELL_BACK)


async def delete_account(stub: Stub, args: argparse.Namespace, out: Output) -> None:
    """`accounts delete ID`."""
    request = pb.DeleteAccountRequest(account_id=args.account_id)
    out.message(await stub.DeleteAccount(request, metadata=_auth(args)))


async def list_accounts(stub: Stub, args: argparse.Namespace, out: Output) -> None:
    """`accounts list`: every page, or one page with --page-token; with --registry, then
    where the answer came from and the cursor it reflects."""
    request = pb.ListAccountsRequest(
        origin_owner_ids=args.owner_id or [],
        providers=args.provider or [],
        statuses=args.status or [],
        page_size=args.page_size,
        page_token=args.page_token or "",
        read_from=_read_from(args),
    )
    accounts: list[pb.Account] = []
    source = pb.ListAccountsResponse()  # the first page's cursor and answered_from
    while True:
        page = await stub.ListAccounts(request, metadata=_auth(args))
        if page.answered_from != source.answered_from:
            # The first page, or StackOne's first page after a fall-back mid-listing.
            accounts.clear()
            source = pb.ListAccountsResponse(cursor=page.cursor, answered_from=page.answered_from)
        accounts.extend(page.accounts)
        if args.page_token or not page.next_page_token:
            break
        request.page_token = page.next_page_token
    if out.as_json:
        for account in accounts:
            out.message(account)
    else:
        out.table(_ACCOUNT_HEADERS, [_account_row(account) for account in accounts])
    if args.registry:
        _print_source(out, source)


def _print_source(out: Output, source: pb.ListAccountsResponse) -> None:
    """The listing's cursor to watch from, or that it fell back to StackOne."""
    if out.as_json:
        out.message(source)  # {"cursor": ..., "answered_from": ...}, the last line
    elif source.answered_from == pb.READ_FROM_REGISTRY:
        out.note(
            f"registry cursor {source.cursor}: follow the changes after this listing with "
            f"`stackone-connect events watch --from {source.cursor}`"
        )
    else:
        out.note(f"{FELL_BACK} (no cursor to watch from)")


async def watch_events(stub: Stub, args: argparse.Namespace, out: Output) -> None:
    """`events watch`: the client library's watch, which resumes, follows a server's
    shutdown and resyncs from a snapshot by itself; with `--cursor-file`, a watch started
    again continues after the last event it printed."""
    start: Start = "earliest" if args.from_earliest else "snapshot" if args.from_snapshot else "now"
    watch = Client.on_stub(stub, token=args.token).watch(
        providers=args.provider or [],
        origin_owner_ids=args.owner_id or [],
        account_ids=args.account_id or [],
        event_types=args.type or [],
        start=start,
        after_cursor=args.from_cursor or None,
        cursor_store=FileCursorStore(args.cursor_file) if args.cursor_file else None,
        on_retry=_print_retry,
    )
    seen = 0
    if not out.as_json:
        out.row(_EVENT_HEADERS, _EVENT_WIDTHS)
    if args.max_events is not None and args.max_events <= 0:
        return
    async for item in watch:
        match item:
            case pb.AccountEvent():
                _print_event(out, item)
                seen += 1
                if args.max_events is not None and seen >= args.max_events:
                    return
            case pb.Account():
                _print_snapshot_account(out, item)
            case SnapshotEnd(cursor=cursor):
                _print_initial_state_end(out, pb.Bookmark(cursor=cursor, initial_state_end=True))
            case Resynced():
                _print_resynced(out, item)


def _print_retry(retry: Retry) -> None:
    again = (
        "asking for the snapshot again"  # e.g. UNAVAILABLE: the registry is not complete
        if retry.snapshot
        else f"resuming after cursor {retry.resume_after or 'now'}"
    )
    print(
        f"stream interrupted ({retry.code.name}: {retry.details}); {again} in {retry.delay:.2g}s",
        file=sys.stderr,
        flush=True,
    )


def _print_resynced(out: Output, resynced: Resynced) -> None:
    if out.as_json:
        out.line(orjson.dumps({"resynced": dataclasses.asdict(resynced)}).decode())
        return
    out.note(
        f"-- cursor {resynced.stale_cursor} is no longer retained (the earliest is "
        f"{resynced.earliest_cursor}): events were missed; the current state follows --"
    )


def _print_event(out: Output, event: pb.AccountEvent) -> None:
    if out.as_json:
        out.message(event)
        return
    account = event.account
    source = pb.EventSource.Name(event.source).removeprefix("EVENT_SOURCE_").lower()
    status = account.raw_status or "-"
    previous = event.previous_raw_status or event.previous_status
    if previous and account.raw_status:  # a deletion leaves no status to move to
        before = _status(event.previous_raw_status, event.previous_status)
        status = status if before == status else f"{before} -> {status}"
    row = [event.cursor, event.type, account.id, account.provider, account.origin_owner_id,
           status, source]  # fmt: skip
    out.row(row, _EVENT_WIDTHS)


def _print_snapshot_account(out: Output, account: pb.Account) -> None:
    """An account of a snapshot's initial state, at the cursor that set it."""
    if out.as_json:
        out.message(pb.StreamAccountEventsResponse(account=account))  # {"account": {...}}
        return
    status = _status(account.raw_status, account.status)
    row = [account.registry_cursor, "snapshot", account.id, account.provider,
           account.origin_owner_id, status, "registry"]  # fmt: skip
    out.row(row, _EVENT_WIDTHS)


def _print_initial_state_end(out: Output, bookmark: pb.Bookmark) -> None:
    if out.as_json:
        out.message(pb.StreamAccountEventsResponse(bookmark=bookmark))  # {"bookmark": {...}}
    else:
        out.note(f"-- initial state as of cursor {bookmark.cursor}; events after it follow --")


async def run_client_command(command: Command, args: argparse.Namespace) -> int:
    """Runs one client command; prints a one-line error and returns 1 on failure."""
    out = Output(args.json)
    try:
        tracing = tracing_from_environment()  # the OTEL_* variables, as for `serve`
    except TracingConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        # One trace per command: its calls carry it to the service (and on to StackOne).
        with tracing.tracer().start_as_current_span(f"stackone-connect {command.__name__}"):
            return await _run(command, args, out, tracing)
    finally:
        await asyncio.to_thread(tracing.shutdown)  # exports the command's spans


async def _run(command: Command, args: argparse.Namespace, out: Output, tracing: Tracing) -> int:
    async with _channel(args, tracing.grpc_client_interceptors()) as channel:
        stub: Stub = pb_grpc.ConnectServiceStub(channel)
        try:
            await command(stub, args, out)
        except grpc.aio.AioRpcError as error:
            print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
        except CommandFailed as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    return 0


def add_client_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Adds `sessions`, `accounts`, `events` and `subscriptions` to the CLI's subcommands."""
    sessions = commands.add_parser("sessions", help="connect sessions").add_subparsers(
        dest="action", required=True
    )
    create = sessions.add_parser("create", parents=[common], help="create a connect session")
    create.add_argument("--owner-id", required=True, help="your customer's id")
    create.add_argument("--owner-name", required=True, help="your customer's name")
    create.add_argument("--username", help="the person linking")
    create.add_argument("--provider", help="provider key, e.g. bamboohr")
    create.add_argument("--category", action="append", help="category (repeatable)")
    lifetime = create.add_mutually_exclusive_group()
    lifetime.add_argument("--expires-in", type=int, help="seconds the session is valid")
    lifetime.add_argument(
        "--auth-link",
        action="store_true",
        help=f"an Auth Link to send to a person: valid {AUTH_LINK_SECONDS // 86400} days",
    )
    create.add_argument("--account-id", help="account to re-connect (re-authenticate)")
    create.add_argument("--label", help="label for the account")
    create.add_argument("--type", choices=["production", "test"], help="the account's type")
    create.add_argument(
        "--connector-profile-id", help="connector profile to connect through (not the default)"
    )
    create.add_argument("--provider-version", help="deprecated by StackOne: leave it out")
    create.add_argument("--metadata", type=_json_object, help="JSON object carried onto it")
    create.add_argument(
        "--multiple", action="store_true", help="allow another account of this owner+provider"
    )
    create.set_defaults(command=create_session)
    fetched = sessions.add_parser(
        "get", parents=[common], help="a session and its latest connection attempt"
    )
    fetched.add_argument("session_id", help="StackOne session id (a number)")
    fetched.set_defaults(command=get_session)

    accounts = commands.add_parser("accounts", help="linked accounts").add_subparsers(
        dest="action", required=True
    )
    for name, function in (("get", get_account), ("delete", delete_account)):
        parser = accounts.add_parser(name, parents=[common], help=f"{name} one account")
        parser.add_argument("account_id", help="StackOne account id")
        if function is get_account:
            parser.add_argument("--registry", action="store_true", help=REGISTRY_HELP)
        parser.set_defaults(command=function)
    listing = accounts.add_parser("list", parents=[common], help="list accounts")
    listing.add_argument("--registry", action="store_true", help=REGISTRY_HELP)
    listing.add_argument("--owner-id", action="append", help="filter (repeatable)")
    listing.add_argument("--provider", action="append", help="filter (repeatable)")
    listing.add_argument("--status", action="append", help="filter (repeatable)")
    listing.add_argument("--page-size", type=int, default=100, help="accounts per request")
    listing.add_argument("--page-token", help="fetch only this page")
    listing.set_defaults(command=list_accounts)
    add_reconnect_command(accounts, common)

    events = commands.add_parser("events", help="the account event stream").add_subparsers(
        dest="action", required=True
    )
    watch = events.add_parser(
        "watch", parents=[common], help="follow events, resuming on reconnect"
    )
    watch.add_argument("--provider", action="append", help="filter (repeatable)")
    watch.add_argument("--owner-id", action="append", help="filter (repeatable)")
    watch.add_argument("--account-id", action="append", help="filter (repeatable)")
    watch.add_argument("--type", action="append", help="event type filter, e.g. account.created")
    start = watch.add_mutually_exclusive_group()
    start.add_argument("--from", dest="from_cursor", metavar="CURSOR", help="start after CURSOR")
    start.add_argument("--from-earliest", action="store_true", help="start at the earliest event")
    start.add_argument(
        "--from-snapshot",
        action="store_true",
        help="first the matching accounts as the registry holds them, then their events",
    )
    watch.add_argument("--max-events", type=int, help="exit after this many events")
    watch.add_argument(
        "--cursor-file",
        metavar="PATH",
        help="keep the cursor in PATH (atomically): started again, the watch continues after "
        "the last event it printed (at least once); it wins over --from*",
    )
    watch.set_defaults(command=watch_events)
    add_subscription_commands(commands, events, common)
