"""`accounts reconnect ID [--auth-link]`: the re-connect session for a broken account in
one step, for its owner, its provider and its id, as StackOne's Hub expects it."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

import grpc

from service.api.convert import AUTH_LINK_SECONDS
from service.cli.errors import CommandFailed
from service.cli.output import Output
from stackone_connect.v1 import stackone_connect_pb2 as pb

if TYPE_CHECKING:  # the async stub type exists only in the generated .pyi
    from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc


class NothingToReconnect(CommandFailed):
    """The account does not exist (or was deleted): no session can re-open it."""


def reconnect_request(account: pb.Account, auth_link: bool) -> pb.CreateSessionRequest:
    """The session that re-opens `account` in the Hub: its owner, provider and id; with
    `auth_link`, lasting as long as an Auth Link sent to a person should."""
    request = pb.CreateSessionRequest(
        origin_owner_id=account.origin_owner_id,
        origin_owner_name=account.origin_owner_name,
        origin_username=account.origin_username,
        provider=account.provider,
        account_id=account.id,
    )
    if auth_link:
        request.expires_in = AUTH_LINK_SECONDS
    return request


async def reconnect_account(
    stub: pb_grpc.ConnectServiceAsyncStub, args: argparse.Namespace, out: Output
) -> None:
    """`accounts reconnect ID [--auth-link]`."""
    metadata = (("authorization", f"Bearer {args.token}"),) if args.token else ()
    try:
        # StackOne, not the registry: the session must be for the account as it is now.
        account = await stub.GetAccount(
            pb.GetAccountRequest(account_id=args.account_id), metadata=metadata
        )
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            raise NothingToReconnect(
                f"account {args.account_id} does not exist or was deleted: there is nothing "
                "to reconnect; link it anew with `sessions create`"
            ) from None
        raise
    session = await stub.CreateSession(
        reconnect_request(account, args.auth_link), metadata=metadata
    )
    out.message(session)
    if not out.as_json:
        status = account.raw_status or "unknown"
        where = "send auth_link_url to" if args.auth_link else "open the Hub with this token for"
        out.note(f"account {account.id} is {status}: {where} {account.origin_owner_name}")


def add_reconnect_command(accounts: Any, common: argparse.ArgumentParser) -> None:
    """Adds `reconnect` to the `accounts` subcommands."""
    parser = accounts.add_parser(
        "reconnect",
        parents=[common],
        help="a session that re-connects an account (e.g. one in error or expired)",
    )
    parser.add_argument("account_id", help="StackOne account id")
    parser.add_argument(
        "--auth-link",
        action="store_true",
        help=f"an Auth Link to send to a person: valid {AUTH_LINK_SECONDS // 86400} days",
    )
    parser.set_defaults(command=reconnect_account)
