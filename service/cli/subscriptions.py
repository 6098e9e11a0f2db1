"""`subscriptions create|list|get|update|seek|delete` and `events consume NAME`: the
subscriptions the service keeps, from the command line."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import TYPE_CHECKING, Any

from service.cli.errors import CommandFailed
from service.cli.output import Output
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect_client import Client

if TYPE_CHECKING:  # the async stub type exists only in the generated .pyi
    from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc

    Stub = pb_grpc.ConnectServiceAsyncStub

_HEADERS = ["NAME", "ACK DEADLINE", "MAX DELIVERIES", "FILTERS"]
_DELIVERY_HEADERS = ["CURSOR", "TYPE", "ACCOUNT", "ATTEMPT"]
_DELIVERY_WIDTHS = [20, 18, 24, 7]


def _client(stub: Stub, args: argparse.Namespace) -> Client:
    return Client.on_stub(stub, token=args.token)


def _filters(subscription: pb.Subscription) -> str:
    parts = [
        f"{label}={','.join(values)}"
        for label, values in (
            ("provider", subscription.providers),
            ("owner", subscription.origin_owner_ids),
            ("account", subscription.account_ids),
            ("type", subscription.event_types),
        )
        if values
    ]
    return " ".join(parts) or "-"


def _row(subscription: pb.Subscription) -> list[str]:
    return [
        subscription.name,
        f"{subscription.ack_deadline_seconds}s",
        str(subscription.max_deliveries),
        _filters(subscription),
    ]


async def create_subscription(stub: Stub, args: argparse.Namespace, out: Output) -> None:
    """`subscriptions create NAME`."""
    created = await _client(stub, args).create_subscription(
        args.name,
        providers=args.provider or [],
        origin_owner_ids=args.owner_id or [],
        account_ids=args.account_id or [],
        event_types=args.type or [],
        start="earliest" if args.from_earliest else "now",
        after_cursor=args.from_cursor,
        ack_deadline_seconds=args.ack_deadline,
        max_deliveries=args.max_deliveries,
    )
    out.message(created)


async def list_subscriptions(stub: Stub, args: argparse.Namespace, out: Output) -> None:
    """`subscriptions list`: yours, by name."""
    found = await _client(stub, args).list_subscriptions()
    if out.as_json:
        for subscription in found:
            out.message(subscription)
        return
    out.table(_HEADERS, [_row(subscription) for subscription in found])


async def get_subscription(stub: Stub, args: argparse.Namespace, out: Output) -> None:
    """`subscriptions get NAME`: its settings, position and lag."""
    out.message(await _client(stub, args).get_subscription(args.name))


async def update_subscription(stub: Stub, args: argparse.Namespace, out: Output) -> None:
    """`subscriptions update NAME`: delivery settings, or re-drive the parked events."""
    updated = await _client(stub, args).update_subscription(
        args.name,
        ack_deadline_seconds=args.ack_deadline,
        max_deliveries=args.max_deliveries,
        redrive_parked=args.redrive_parked,
    )
    out.message(updated)


async def seek_subscription(stub: Stub, args: argparse.Namespace, out: Output) -> None:
    """`subscriptions seek NAME --to-cursor C | --to-time ISO`."""
    moment = None
    if args.to_time is not None:
        try:
            moment = datetime.fromisoformat(args.to_time)
        except ValueError as error:
            hint = "use e.g. 2026-12-01T09:00:00+00:00"
            raise CommandFailed(f"--to-time: {error} ({hint})") from None
    position = await _client(stub, args).seek_subscription(
        args.name, after_cursor=args.to_cursor, time=moment
    )
    out.message(pb.SeekSubscriptionResponse(position=position))


async def delete_subscription(stub: Stub, args: argparse.Namespace, out: Output) -> None:
    """`subscriptions delete NAME`."""
    await _client(stub, args).delete_subscription(args.name)
    out.note(f"deleted {args.name}")


async def consume_events(stub: Stub, args: argparse.Namespace, out: Output) -> None:
    """`events consume NAME`: prints each delivery, then acknowledges it (with `--nack`,
    gives it back instead: a dry look that leaves the events to the real consumers)."""
    if not out.as_json:
        out.row(_DELIVERY_HEADERS, _DELIVERY_WIDTHS)
    seen = 0
    if args.max_events is not None and args.max_events <= 0:
        return
    async for delivery in _client(stub, args).consume(args.name):
        if out.as_json:
            out.message(pb.Delivery(event=delivery.event, attempt=delivery.attempt,
                                    delivery_id=delivery.delivery_id))  # fmt: skip
        else:
            event = delivery.event
            row = [event.cursor, event.type, event.account.id, str(delivery.attempt)]
            out.row(row, _DELIVERY_WIDTHS)
        if args.nack:
            await delivery.nack()
        else:
            await delivery.ack()
        seen += 1
        if args.max_events is not None and seen >= args.max_events:
            return


def _settings_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ack-deadline", type=int, default=0, help="seconds to acknowledge a delivery"
    )
    parser.add_argument(
        "--max-deliveries", type=int, default=0, help="deliveries of an event before it parks"
    )


def add_subscription_commands(commands: Any, events: Any, common: argparse.ArgumentParser) -> None:
    """Adds `subscriptions …` to the CLI's subcommands and `consume` to `events`."""
    subscriptions = commands.add_parser(
        "subscriptions", help="subscriptions the service keeps"
    ).add_subparsers(dest="action", required=True)
    create = subscriptions.add_parser("create", parents=[common], help="create a subscription")
    create.add_argument("name", help="its name (letters, digits, '.', '_', '-')")
    create.add_argument("--provider", action="append", help="filter (repeatable)")
    create.add_argument("--owner-id", action="append", help="filter (repeatable)")
    create.add_argument("--account-id", action="append", help="filter (repeatable)")
    create.add_argument("--type", action="append", help="event type filter (repeatable)")
    start = create.add_mutually_exclusive_group()
    start.add_argument("--from", dest="from_cursor", metavar="CURSOR", help="start after CURSOR")
    start.add_argument("--from-earliest", action="store_true", help="every event retained")
    _settings_flags(create)
    create.set_defaults(command=create_subscription)
    listing = subscriptions.add_parser("list", parents=[common], help="your subscriptions")
    listing.set_defaults(command=list_subscriptions)
    for name, function, text in (
        ("get", get_subscription, "a subscription with its position and lag"),
        ("delete", delete_subscription, "delete a subscription"),
    ):
        parser = subscriptions.add_parser(name, parents=[common], help=text)
        parser.add_argument("name")
        parser.set_defaults(command=function)
    update = subscriptions.add_parser("update", parents=[common], help="change a subscription")
    update.add_argument("name")
    _settings_flags(update)
    update.add_argument(
        "--redrive-parked", action="store_true", help="deliver the parked events again"
    )
    update.set_defaults(command=update_subscription)
    seek = subscriptions.add_parser("seek", parents=[common], help="replay, or skip ahead")
    seek.add_argument("name")
    target = seek.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-cursor", metavar="CURSOR", help="deliver the events after CURSOR")
    target.add_argument("--to-time", metavar="ISO", help="deliver the events from this time")
    seek.set_defaults(command=seek_subscription)

    consume = events.add_parser(
        "consume", parents=[common], help="consume a subscription, acknowledging each event"
    )
    consume.add_argument("name", help="the subscription")
    consume.add_argument("--max-events", type=int, help="exit after this many events")
    consume.add_argument(
        "--nack", action="store_true", help="give each event back instead of acknowledging it"
    )
    consume.set_defaults(command=consume_events)
