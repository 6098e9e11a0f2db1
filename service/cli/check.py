"""`stackone-connect check`: proves the settings work against the real StackOne.

Without `--webhook` it reads every setting and file `serve` would (the webhook secrets and
their file, the TLS and clients files, the addresses, the event log, the audit sink, the
emulator's memory, the OTEL_* variables), each problem named on a line of its own, and
checks that StackOne accepts the API key: it lists one account and creates a short-lived
`test` connect session.

With `--webhook` it then asks the running service (`--target`) for a `test` session,
prints its Auth Link, and waits on the event stream for the account someone links with
it: only an event from that account's webhook counts, which exists only if StackOne
delivered it to the gateway and its signature matched a configured secret (an event from
reconciliation proves the link, not the webhook). The test account is deleted afterwards.

With `--registry` it asks the running service whether its account registry is complete
(a reconciliation sweep has folded in StackOne's full listing): until then registry reads
are answered from StackOne and `--from-snapshot` streams are refused.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
from typing import TYPE_CHECKING, Any, TextIO

import grpc

from service.cli import preflight
from service.cli.commands import _auth, _channel
from service.config import ENV_PREFIX, Settings
from service.stackone.client import StackOneClient
from service.stackone.errors import StackOneError
from service.stackone.models import AccountListQuery, ConnectSessionCreate
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    Stub = pb_grpc.ConnectServiceAsyncStub
CHECK_OWNER_ID = "stackone-connect-check"
CHECK_LABEL = "stackone-connect check"
WHAT_TO_CHECK = (
    "check that StackOne's webhook URL is this gateway's public URL ending in "
    f"/webhooks/stackone and that {ENV_PREFIX}WEBHOOK_SECRETS holds its signing secret "
    '(refusals are counted in stackone_connect_webhooks_total{outcome="unauthorized"} '
    "on the admin listener)"
)
CALL_SECONDS = 15.0


class CheckFailed(Exception):
    """A check found a problem; the message says what to fix."""


def secret_problems(settings: Settings) -> list[str]:
    """What is wrong with the configured webhook signing secrets, if anything (`Settings`
    and the secrets file already refuse one that cannot be a secret)."""
    if settings.webhook_secrets or settings.webhook_secrets_file is not None:
        return []
    return [f"{ENV_PREFIX}WEBHOOK_SECRETS is not set: every webhook would be refused"]


async def api_key_findings(settings: Settings) -> list[str]:
    """What StackOne says about the API key; raises CheckFailed when it refuses it."""
    if settings.api_key is None or settings.uses_emulator:
        raise CheckFailed(f"{ENV_PREFIX}API_KEY is not set: nothing to check against StackOne")
    key = settings.api_key.get_secret_value()
    async with StackOneClient(settings.base_url, key, max_retries=1) as stackone:
        try:
            await stackone.list_accounts(AccountListQuery(page_size=1), deadline=CALL_SECONDS)
            session = await stackone.create_connect_session(
                ConnectSessionCreate(
                    origin_owner_id=CHECK_OWNER_ID,
                    origin_owner_name="stackone-connect check",
                    type="test",
                    expires_in=60,
                ),
                deadline=CALL_SECONDS,
            )
        except StackOneError as error:  # an auth error's message names the setting
            raise CheckFailed(f"StackOne at {settings.base_url}: {error}") from error
    return [
        f"StackOne at {settings.base_url} accepts the API key: it lists accounts",
        f"it creates connect sessions (organization {session.organization_id}, "
        f"project {session.project_id})",
    ]


async def webhook_findings(stub: Stub, args: argparse.Namespace, out: TextIO) -> list[str]:
    """Links a test account through the running service and waits for its webhook.

    Only an event from a webhook of that very account counts. The account is known by a
    label of this run's own (StackOne puts a session's label on the account it links), so
    events of the owner's other accounts are skipped.
    """
    metadata = _auth(args)
    owner = pb.StreamAccountEventsRequest(origin_owner_ids=[args.owner_id])
    stream = stub.StreamAccountEvents(owner, metadata=metadata)
    await stream.read()  # the first bookmark: attached before the session exists
    label = f"{CHECK_LABEL} {secrets.token_hex(4)}"
    session = await stub.CreateSession(
        pb.CreateSessionRequest(
            origin_owner_id=args.owner_id,
            origin_owner_name="stackone-connect check",
            type="test",
            expires_in=max(60, int(args.timeout)),
            label=label,
            multiple=True,  # a new account, never a re-connected one of an earlier run
        ),
        metadata=metadata,
    )
    print(
        "Open this Auth Link and connect any provider (a test account):\n"
        f"  {session.auth_link_url}\nwaiting up to {args.timeout:g} s for its webhook...",
        file=out,
        flush=True,
    )
    untied: list[pb.AccountEvent] = []
    try:
        async with asyncio.timeout(args.timeout):
            event = await _first_event_of(stream, label, untied)
    except TimeoutError:
        raise CheckFailed(_nothing_arrived(args.timeout, untied)) from None
    finally:
        stream.cancel()
    account_id = event.account.id
    if event.source != pb.EVENT_SOURCE_WEBHOOK:
        problem = (
            f"StackOne linked account {account_id}, but reconciliation recorded it before "
            f"any webhook of it passed the gateway (a webhook gets {ENV_PREFIX}RECONCILE_GRACE "
            f"to be first, and one recorded later is not announced again): {WHAT_TO_CHECK}"
        )
        if not args.keep:
            problem += "; " + await _deleted(stub, account_id, metadata)
        raise CheckFailed(problem)
    verification = pb.Verification.Name(event.verification).removeprefix("VERIFICATION_")
    findings = [
        f"StackOne's {event.type} webhook for account {account_id} passed the "
        f"signature check and was recorded ({verification.lower()})"
    ]
    if not args.keep:
        await stub.DeleteAccount(pb.DeleteAccountRequest(account_id=account_id), metadata=metadata)
        findings.append(f"deleted the test account {account_id}")
    return findings


async def _first_event_of(
    stream: Any, label: str, untied: list[pb.AccountEvent]
) -> pb.AccountEvent:
    """The first event of the account labelled `label`, from a webhook or reconciliation.

    Its type does not matter (`account.created` is the one expected): a webhook of the
    account recorded at all passed the gateway's signature check. Unverified webhook
    events carry no label (only what the webhook said): they go to `untied`.
    """
    # read() rather than iteration: the first bookmark was read() already.
    while isinstance(item := await stream.read(), pb.StreamAccountEventsResponse):
        if not item.HasField("event"):
            continue
        if item.event.account.label == label:
            return item.event
        if item.event.verification == pb.VERIFICATION_UNVERIFIED:
            untied.append(item.event)
    raise CheckFailed("the service ended the event stream")


def _nothing_arrived(timeout: float, untied: list[pb.AccountEvent]) -> str:
    problem = f"no webhook arrived in {timeout:g} s: {WHAT_TO_CHECK}"
    if untied:  # the webhooks passed, but StackOne did not say whose session they were
        first = untied[0]
        problem += (
            f"; {len(untied)} unverified webhook(s) of the owner's accounts could not be "
            f"tied to the test account (the first, {first.type} of {first.account.id}: "
            f"{first.verification_error}): check {ENV_PREFIX}API_KEY and StackOne's status"
        )
    return problem


async def registry_findings(stub: Stub, args: argparse.Namespace, settings: Settings) -> list[str]:
    """Whether the running service answers registry reads from its registry; raises
    CheckFailed while it falls back to StackOne."""
    page = await stub.ListAccounts(
        pb.ListAccountsRequest(read_from=pb.READ_FROM_REGISTRY, page_size=1),
        metadata=_auth(args),
        timeout=CALL_SECONDS,
    )
    if page.answered_from == pb.READ_FROM_REGISTRY:
        return [f"the service's account registry is complete (as of cursor {page.cursor})"]
    problem = (
        "the service's account registry is not complete yet: registry reads are answered "
        "from StackOne and --from-snapshot streams are refused until a reconciliation sweep "
        "lists StackOne's accounts (see stackone_connect_registry_complete and "
        'stackone_connect_reconcile_sweeps_total{outcome="failed"} on the admin listener)'
    )
    if settings.reconcile_interval == 0:
        problem += f"; {ENV_PREFIX}RECONCILE_INTERVAL is 0 in these settings: sweeps are off"
    raise CheckFailed(problem)


async def _deleted(stub: Stub, account_id: str, metadata: Any) -> str:
    try:
        await stub.DeleteAccount(pb.DeleteAccountRequest(account_id=account_id), metadata=metadata)
    except grpc.aio.AioRpcError as error:
        return f"could not delete the test account {account_id}: {error.code().name}"
    return f"deleted the test account {account_id}"


async def run_check(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    """Runs the checks, printing `ok:` and `problem:` lines; 0 when every check passed."""
    problems = secret_problems(settings) + await preflight.problems(settings)
    for problem in problems:
        print(f"problem: {problem}", file=out, flush=True)
    try:
        _report(await api_key_findings(settings), out)
        if args.webhook or args.registry:
            async with _channel(args) as channel:
                stub: Stub = pb_grpc.ConnectServiceStub(channel)
                if args.webhook:
                    _report(await webhook_findings(stub, args, out), out)
                if args.registry:
                    _report(await registry_findings(stub, args, settings), out)
    except CheckFailed as error:
        print(f"problem: {error}", file=out)
        return 1
    except grpc.aio.AioRpcError as error:
        print(
            f"problem: the service at {args.target}: {error.code().name}: {error.details()}",
            file=out,
        )
        return 1
    return 1 if problems else 0


def _report(findings: list[str], out: TextIO) -> None:
    for finding in findings:
        print(f"ok: {finding}", file=out, flush=True)


def add_check_command(commands: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds `check` to the CLI's subcommands; returns its parser."""
    check: argparse.ArgumentParser = commands.add_parser(
        "check",
        parents=[common],
        help="prove the API key and the webhook secret work against StackOne",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument(
        "--webhook", action="store_true", help="also link a test account and wait for its webhook"
    )
    check.add_argument("--owner-id", default=CHECK_OWNER_ID, help="owner id of the test account")
    check.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for the webhook"
    )
    check.add_argument("--keep", action="store_true", help="keep the test account")
    check.add_argument(
        "--registry",
        action="store_true",
        help="also ask the running service whether its account registry is complete",
    )
    return check


def check_main(settings: Settings, args: argparse.Namespace) -> int:
    """Entry point of `check` once the settings are read."""
    return asyncio.run(run_check(settings, args, sys.stdout))
