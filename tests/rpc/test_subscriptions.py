"""Subscriptions the service keeps, on real `serve` processes (SQLite): work shared across
consumers in account order, redelivery when a consumer dies, parking, restarts, seek,
filters, ownership and lag figures."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
import httpx
import orjson
import pytest

from stackone_connect_client import Client, Delivery
from tests.harness.processes import ServeProcess, run_to_end, serve_env, serve_process
from tests.harness.support import WEBHOOK_SECRET, deliver, eventually, metric, webhook

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

PROBE = "probe"  # a subscription nobody consumes: its `pending` counts the events recorded
WAIT = 20.0  # seconds any observable state gets to arrive (far above what it takes)


@asynccontextmanager
async def serving(tmp_path: Path, **extra: str) -> AsyncIterator[ServeProcess]:
    """A `serve` on SQLite whose verifier looks webhooks up at once (no quiet period), so
    each webhook is its own event."""
    env = serve_env(tmp_path, WEBHOOK_SECRET, STACKONE_CONNECT_VERIFY_QUIET="0", **extra)
    async with serve_process(env) as serve:
        yield serve


async def recorded_rounds(
    serve: ServeProcess, client: Client, accounts: Iterable[str], rounds: int
) -> None:
    """Records `rounds` events of each account, a round at a time (one event per account
    per round: webhooks of an account waiting together would be folded into one)."""
    accounts = list(accounts)
    start = (await client.get_subscription(PROBE)).state.pending
    async with httpx.AsyncClient(base_url=serve.gateway_url) as http:
        for round_number in range(rounds):
            for account in accounts:
                body = webhook("account.updated", account_id=account, round=str(round_number))
                assert (await deliver(http, body)).status_code == 200
            expected = start + len(accounts) * (round_number + 1)

            async def recorded(expected: int = expected) -> bool:
                return (await client.get_subscription(PROBE)).state.pending >= expected

            await eventually(recorded, WAIT)


@dataclass
class Handling:
    """What consumers of one subscription did, in the order they did it."""

    acked: dict[str, list[int]] = field(default_factory=dict)  # account -> cursors
    in_flight: dict[str, int] = field(default_factory=dict)  # account -> cursor
    by_consumer: dict[str, set[str]] = field(default_factory=dict)  # consumer -> accounts
    overlaps: list[str] = field(default_factory=list)

    def received(self, consumer: str, delivery: Delivery) -> None:
        """Notes a delivery, and an account with two events out at once."""
        account = delivery.event.account.id
        if account in self.in_flight:
            self.overlaps.append(account)
        self.in_flight[account] = int(delivery.event.cursor)
        self.by_consumer.setdefault(consumer, set()).add(account)

    def done(self, delivery: Delivery) -> None:
        """Notes an acknowledgement."""
        account = delivery.event.account.id
        del self.in_flight[account]
        self.acked.setdefault(account, []).append(int(delivery.event.cursor))

    def count(self) -> int:
        """Events acknowledged."""
        return sum(map(len, self.acked.values()))


async def acking(client: Client, name: str, consumer: str, handling: Handling) -> None:
    """Consumes `name`, acknowledging every delivery, noting each in `handling`."""
    async for delivery in client.consume(name):
        handling.received(consumer, delivery)
        handling.done(delivery)
        await delivery.ack()


def in_cursor_order(handling: Handling) -> bool:
    """Each account's events were acknowledged once each, in cursor order."""
    return all(cursors == sorted(set(cursors)) for cursors in handling.acked.values())


async def consumers_attached(client: Client, name: str, count: int) -> None:
    """Returns once `count` consumers are attached to `name`."""

    async def attached() -> bool:
        return (await client.get_subscription(name)).state.consumers == count

    await eventually(attached, WAIT)


async def test_two_consumers_share_the_work_each_account_in_order_at_one_consumer(
    tmp_path: Path,
) -> None:
    """Two consumers of one subscription both get work; each account's events arrive one
    at a time (never two out at once) and are acknowledged in cursor order, none missing."""
    accounts = [f"acct-{n}" for n in range(6)]
    handling = Handling()
    async with serving(tmp_path) as serve, Client.connect(serve.grpc_target) as client:
        await client.create_subscription(PROBE)
        await client.create_subscription("work")
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(acking(client, "work", name, handling)) for name in ("a", "b")
            ]
            await consumers_attached(client, "work", 2)
            await recorded_rounds(serve, client, accounts, rounds=4)
            await eventually(lambda: handling.count() == len(accounts) * 4, WAIT)
            for task in tasks:
                task.cancel()
    assert handling.overlaps == []
    assert in_cursor_order(handling)
    assert set(handling.acked) == set(accounts)
    assert all(handling.by_consumer.get(name) for name in ("a", "b")), handling.by_consumer


async def test_a_killed_consumers_unacknowledged_events_reach_the_other_in_order(
    tmp_path: Path,
) -> None:
    """A consumer process SIGKILLed while holding deliveries: the other consumer gets them
    (long before the ack deadline), with every event acknowledged once, in account order."""
    accounts = ["acct-x", "acct-y", "acct-z"]
    handling = Handling()
    async with serving(tmp_path) as serve, Client.connect(serve.grpc_target) as client:
        await client.create_subscription(PROBE)
        await client.create_subscription("work", ack_deadline_seconds=600)
        holder = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.harness.subscription_consumer", serve.grpc_target, "work",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            await consumers_attached(client, "work", 1)
            await recorded_rounds(serve, client, accounts, rounds=3)
            assert holder.stdout is not None
            held = [orjson.loads(await holder.stdout.readline()) for _ in accounts]
            assert {line["account"] for line in held} == set(accounts)  # one head each
            async with asyncio.TaskGroup() as group:
                other = group.create_task(acking(client, "work", "other", handling))
                await consumers_attached(client, "work", 2)
                holder.send_signal(signal.SIGKILL)
                await holder.wait()
                await eventually(lambda: handling.count() == len(accounts) * 3, WAIT)
                other.cancel()
        finally:
            if holder.returncode is None:
                holder.kill()
                await holder.wait()
        state = (await client.get_subscription("work")).state
    assert in_cursor_order(handling)
    counts = {account: len(cursors) for account, cursors in handling.acked.items()}
    assert counts == dict.fromkeys(accounts, 3)
    assert sorted(int(line["cursor"]) for line in held) == sorted(
        cursors[0] for cursors in handling.acked.values()
    )
    assert state.outstanding_acks == 0
    assert state.redeliveries >= len(accounts)


async def test_an_event_never_acknowledged_is_parked_while_the_others_flow(
    tmp_path: Path,
) -> None:
    """An event whose consumer never acknowledges it is delivered its maximum of times, then
    parked (counted, listed); the other accounts and that account's later events flow;
    re-driving delivers it again."""
    attempts: list[int] = []
    flowed: list[str] = []
    stuck: set[str] = set()  # the cursor of the event left unacknowledged
    redriving = asyncio.Event()
    async with serving(tmp_path) as serve, Client.connect(serve.grpc_target) as client:
        await client.create_subscription(PROBE)
        await client.create_subscription("work", ack_deadline_seconds=1, max_deliveries=2)

        async def consume() -> None:
            async for delivery in client.consume("work"):
                event = delivery.event
                if event.account.id == "acct-bad" and not stuck:
                    stuck.add(event.cursor)
                if event.cursor in stuck and not redriving.is_set():
                    attempts.append(delivery.attempt)  # never acknowledged
                    continue
                flowed.append(event.account.id)
                await delivery.ack()

        async with asyncio.TaskGroup() as group:
            task = group.create_task(consume())
            await consumers_attached(client, "work", 1)
            await recorded_rounds(serve, client, ["acct-bad", "acct-good"], rounds=1)
            await eventually(lambda: "acct-good" in flowed, WAIT)

            async def parked() -> bool:
                return (await client.get_subscription("work")).state.parked_count == 1

            await eventually(parked, WAIT)
            await recorded_rounds(serve, client, ["acct-bad"], rounds=1)
            await eventually(lambda: flowed.count("acct-bad") == 1, WAIT)
            state = (await client.get_subscription("work")).state
            redriving.set()
            await client.update_subscription("work", redrive_parked=True)
            await eventually(lambda: flowed.count("acct-bad") == 2, WAIT)

            async def unparked() -> bool:
                return (await client.get_subscription("work")).state.parked_count == 0

            await eventually(unparked, WAIT)
            task.cancel()
    assert attempts == [1, 2]
    assert [p.account_id for p in state.parked] == ["acct-bad"]
    assert state.parked[0].attempts == 2


async def test_a_subscription_survives_serve_sigkill_with_its_position_and_attempts(
    tmp_path: Path,
) -> None:
    """After `serve` is SIGKILLed and restarted on the same file, the acknowledged events
    are not delivered again, the unacknowledged ones are (their attempt counted on), and
    nothing is lost."""
    accounts = ["acct-1", "acct-2"]
    first: list[Delivery] = []
    async with serving(tmp_path) as serve, Client.connect(serve.grpc_target) as client:
        await client.create_subscription(PROBE)
        await client.create_subscription("work", ack_deadline_seconds=600)
        await recorded_rounds(serve, client, accounts, rounds=3)
        consumption = client.consume("work")
        async for delivery in consumption:
            first.append(delivery)
            if len(first) <= len(accounts):
                await delivery.ack()  # the first round: acknowledged
            elif len(first) == 2 * len(accounts):
                break  # the second round: held when serve dies
        await serve.stop(signal.SIGKILL)
    acked = {int(d.event.cursor) for d in first[: len(accounts)]}
    held = {int(d.event.cursor) for d in first[len(accounts) :]}
    again: list[Delivery] = []
    async with serving(tmp_path) as serve, Client.connect(serve.grpc_target) as client:
        async for delivery in client.consume("work"):
            again.append(delivery)
            await delivery.ack()
            if len(again) == 2 * len(accounts):
                break
    assert {int(d.event.cursor) for d in again}.isdisjoint(acked)
    assert {int(d.event.cursor) for d in again if d.attempt == 2} == held
    assert len({int(d.event.cursor) for d in again}) == 2 * len(accounts)


async def take(client: Client, name: str, count: int) -> list[int]:
    """The cursors of the next `count` deliveries of `name`, each acknowledged."""
    cursors: list[int] = []
    async with asyncio.timeout(WAIT):
        async for delivery in client.consume(name):
            cursors.append(int(delivery.event.cursor))
            await delivery.ack()
            if len(cursors) == count:
                break
    return cursors


async def caught_up(client: Client, name: str) -> None:
    """Returns once `name` has nothing pending and no consumer."""

    async def done() -> bool:
        state = (await client.get_subscription(name)).state
        return state.pending == 0 and state.consumers == 0

    await eventually(done, WAIT)


async def test_seek_replays_the_events_after_a_time_or_a_cursor(tmp_path: Path) -> None:
    """Sought to a time before its events, a subscription delivers them all again; sought
    after a cursor, the events after it."""
    async with serving(tmp_path) as serve, Client.connect(serve.grpc_target) as client:
        before = datetime.now(UTC)
        await client.create_subscription(PROBE)
        await client.create_subscription("work")
        await recorded_rounds(serve, client, ["acct-1", "acct-2"], rounds=2)
        everything = sorted(await take(client, "work", 4))
        await caught_up(client, "work")
        await client.seek_subscription("work", time=before)
        assert sorted(await take(client, "work", 4)) == everything
        await caught_up(client, "work")
        await client.seek_subscription("work", after_cursor=str(everything[1]))
        assert sorted(await take(client, "work", 2)) == everything[2:]


async def test_a_filtered_subscription_moves_past_events_that_do_not_match(
    tmp_path: Path,
) -> None:
    """A subscription of one account reaches the end of the log over other accounts'
    events (nothing pending, nothing delivered), then delivers its account's next event."""
    async with serving(tmp_path) as serve, Client.connect(serve.grpc_target) as client:
        await client.create_subscription(PROBE)
        await client.create_subscription("mine", account_ids=["acct-mine"])
        await recorded_rounds(serve, client, ["acct-other-1", "acct-other-2"], rounds=2)
        await caught_up(client, "mine")
        position = (await client.get_subscription("mine")).state.position
        await recorded_rounds(serve, client, ["acct-mine"], rounds=1)
        (cursor,) = await take(client, "mine", 1)
    assert int(position) == cursor - 1


TOKENS = {"owner": "owner-token-0123456789abcdef", "other": "other-token-0123456789abcdef"}


def clients_file(path: Path) -> Path:
    """Two clients of every subscription scope."""
    scopes = ["events:read", "subscriptions:manage"]
    entries = [{"name": n, "token": t, "scopes": scopes} for n, t in TOKENS.items()]
    path.write_bytes(orjson.dumps({"clients": entries}))
    return path


async def test_another_client_can_neither_see_nor_consume_a_subscription(
    tmp_path: Path,
) -> None:
    """Another client's get, seek, delete and consume of a subscription are NOT_FOUND and
    its list is empty; the owner sees it."""
    extra = {"STACKONE_CONNECT_CLIENTS_FILE": str(clients_file(tmp_path / "clients.json"))}
    async with (
        serving(tmp_path, **extra) as serve,
        Client.connect(serve.grpc_target, token=TOKENS["owner"]) as owner,
        Client.connect(serve.grpc_target, token=TOKENS["other"]) as other,
    ):
        await owner.create_subscription("private")
        codes = []
        for call in (
            other.get_subscription("private"),
            other.seek_subscription("private", after_cursor="0"),
            other.delete_subscription("private"),
            take(other, "private", 1),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            codes.append(refused.value.code())
        assert await other.list_subscriptions() == []
        assert [s.name for s in await owner.list_subscriptions()] == ["private"]
        assert (await owner.get_subscription("private")).subscription.name == "private"
    assert codes == [grpc.StatusCode.NOT_FOUND] * 4


async def test_lag_figures_move_as_events_are_left_unacknowledged(tmp_path: Path) -> None:
    """The metrics of a subscription count pending events, outstanding acks, the oldest
    unacknowledged age and consumers while a consumer holds events, and fall once it acks."""
    labels = '{client="",subscription="work"}'
    held: list[Delivery] = []
    async with (
        serving(tmp_path) as serve,
        Client.connect(serve.grpc_target) as client,
        httpx.AsyncClient(base_url=serve.admin_url) as admin,
    ):
        await client.create_subscription(PROBE)
        await client.create_subscription("work")

        async def sample(name: str) -> float:
            return await metric(admin, f"stackone_connect_subscription_{name}{labels}")

        async def hold() -> None:
            async for delivery in client.consume("work"):
                held.append(delivery)  # noqa: PERF401 - seen as each arrives

        async with asyncio.TaskGroup() as group:
            task = group.create_task(hold())
            await consumers_attached(client, "work", 1)
            await recorded_rounds(serve, client, ["acct-1", "acct-2"], rounds=2)
            await eventually(lambda: len(held) == 2, WAIT)
            lagging = {
                name: await sample(name)
                for name in ("pending_events", "outstanding_acks", "consumers")
            }

            async def aging() -> bool:
                return await sample("oldest_unacked_age_seconds") > 0

            await eventually(aging, WAIT)
            while len(held) < 4:  # each account's second event follows its first's ack
                count = len(held)
                for delivery in held[count - 2 : count]:
                    await delivery.ack()
                await eventually(lambda count=count: len(held) > count, WAIT)  # type: ignore[misc]
            for delivery in held[2:]:
                await delivery.ack()

            async def drained() -> bool:
                return await sample("pending_events") == 0 and await sample("outstanding_acks") == 0

            await eventually(drained, WAIT)
            age = await sample("oldest_unacked_age_seconds")
            task.cancel()
    assert lagging == {"pending_events": 4, "outstanding_acks": 2, "consumers": 1}
    assert age == 0


async def cli(target: str, *args: str) -> tuple[int, str, str]:
    """Runs the console script against `target` to its end."""
    command = [sys.executable, "-m", "service.cli", *args, "--target", target]
    return await run_to_end(command, timeout=WAIT)


async def test_the_cli_creates_lists_consumes_seeks_and_deletes_a_subscription(
    tmp_path: Path,
) -> None:
    """`subscriptions create|list|get|seek|delete` and `events consume NAME` against a real
    serve: the consumed event is acknowledged (the position moves), seek replays it."""
    async with serving(tmp_path) as serve, Client.connect(serve.grpc_target) as client:
        target = serve.grpc_target
        await client.create_subscription(PROBE)
        created = await cli(target, "subscriptions", "create", "billing", "--ack-deadline", "9")
        assert created[0] == 0, created
        listed = await cli(target, "subscriptions", "list")
        await recorded_rounds(serve, client, ["acct-cli"], rounds=1)
        consumed = await cli(target, "events", "consume", "billing", "--max-events", "1", "--json")
        assert consumed[0] == 0, consumed
        delivery = orjson.loads(consumed[1])
        await caught_up(client, "billing")
        got = await cli(target, "subscriptions", "get", "billing", "--json")
        position = orjson.loads(got[1])["state"]["position"]
        sought = await cli(target, "subscriptions", "seek", "billing", "--to-cursor", "0")
        assert (await take(client, "billing", 1)) == [int(delivery["event"]["cursor"])]
        deleted = await cli(target, "subscriptions", "delete", "billing")
        missing = await cli(target, "subscriptions", "get", "billing")
    assert listed[1].splitlines()[1].split()[:2] == ["billing", "9s"]  # under the headers
    assert (delivery["event"]["account"]["id"], delivery["attempt"]) == ("acct-cli", 1)
    assert position == delivery["event"]["cursor"]
    assert (sought[0], deleted[0]) == (0, 0), (sought, deleted)
    assert missing[0] == 1
    assert "NOT_FOUND" in missing[2]
