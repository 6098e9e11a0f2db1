"""`make bench`: the service's figures as ratios against baselines measured in the same run.

The systems under test (a real `serve`, or a bare baseline server) run on CPU 0; load
generators, subscribers and the instant upstream run on CPU 1 (the `BENCH_CPU` of each
role), so both sides of every ratio had the same core. Prints a table and writes
`bench-results.json`. Bounded: every role has a time limit and the run takes a few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from service.api.v1 import stackone_connect_pb2 as pb
from service.events.ingest import event_record
from service.events.sqlite import SqliteEventLog
from tests.processes import ServeProcess, rss_kib, serve_env, serve_process

SERVER_CPU, LOAD_CPU = 0, 1
SECRET = "bench-webhook-secret"
RESULTS = Path("bench-results.json")
REPLAY_BATCH = 256  # max_events_per_message of the replaying subscriber
VERIFIED_INGEST_ACCOUNTS = 1000
# The burst: StackOne as slow and as strict as in production, and a budget that matches it.
BURST_ACCOUNTS, BURST_PER_ACCOUNT, BURST_IN_FLIGHT = 400, 5, 64
BURST_RATE_LIMIT, BURST_CALLER_RESERVE, BURST_LATENCY = 600, 0.2, 0.1
BURST_GIVE_UP = 180.0  # seconds from the first webhook
VERIFICATIONS = "stackone_connect_verifications_total"
INBOX_DEPTH = "stackone_connect_inbox_depth"


@dataclass
class Row:
    """One line of the table."""

    figure: str
    value: float
    unit: str
    baseline: str
    baseline_value: float | None
    ratio: float | None
    target: str
    met: bool | None  # None: a figure shown for context, with no target of its own
    detail: str = ""


@dataclass
class Role:
    """A running `tests.bench.roles` process."""

    process: asyncio.subprocess.Process
    port: int

    async def result(self, timeout: float) -> dict[str, Any]:
        """Waits for the role's JSON line."""
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            line = await self.process.stdout.readline()
            await self.process.wait()
        if not line:
            raise RuntimeError(f"bench role exited with {self.process.returncode} and no result")
        parsed: dict[str, Any] = orjson.loads(line)
        return parsed


async def _spawn(name: str, args: dict[str, Any], cpu: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.bench.roles", name, orjson.dumps(args).decode(),
        env={**os.environ, "BENCH_CPU": str(cpu)},
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip


@asynccontextmanager
async def server_role(name: str, cpu: int = SERVER_CPU, **args: Any) -> AsyncIterator[Role]:
    """Starts a role that prints `READY <port>` and kills it on exit."""
    process = await _spawn(name, args, cpu)
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30):
            line = (await process.stdout.readline()).decode()
        if not line.startswith("READY"):
            raise RuntimeError(f"bench role {name} did not start")
        yield Role(process, int(line.split()[1]))
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def run_role(name: str, timeout: float, **args: Any) -> dict[str, Any]:
    """Runs a load role on the load CPU to completion and returns its result."""
    process = await _spawn(name, args, LOAD_CPU)
    try:
        return await Role(process, 0).result(timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@asynccontextmanager
async def serve(workdir: Path, name: str, **extra: str) -> AsyncIterator[ServeProcess]:
    """A real `stackone-connect serve` on the server CPU with its own event log."""
    directory = workdir / name
    directory.mkdir(exist_ok=True)
    env = serve_env(directory, SECRET, STACKONE_CONNECT_BOOKMARK_INTERVAL="15", **extra)
    async with serve_process(env) as process:
        yield process


def _ingest_load(seconds: float) -> dict[str, Any]:
    return {"secret": SECRET, "seconds": seconds, "concurrency": 32, "count": 200_000}


async def bench_ingest(workdir: Path, seconds: float) -> Row:
    """Webhook ingest throughput vs a bare aiohttp handler answering 204 (account.deleted
    webhooks: the door, then the verifier records them with no StackOne look-up)."""
    load = _ingest_load(seconds)
    async with server_role("bare_http") as bare:
        baseline = await run_role(
            "http_load", seconds + 30, url=f"http://127.0.0.1:{bare.port}", prefix="b", **load
        )
    async with serve(workdir, "ingest") as process:
        measured = await run_role(
            "http_load", seconds + 30, url=process.gateway_url, prefix="i", **load
        )
    ratio = measured["rps"] / baseline["rps"]
    ok = all(status.startswith("2") for status in measured["statuses"])
    return Row(
        "webhook ingest, account.deleted (signed, deduplicated, fsync'd, 2xx), 32 in flight",
        measured["rps"], "req/s", "bare aiohttp 204 handler", baseline["rps"], ratio,
        ">= 0.5x", ratio >= 0.5 and ok, f"statuses {measured['statuses']}",
    )  # fmt: skip


async def bench_verified_ingest(workdir: Path, seconds: float) -> Row:
    """The door's throughput for account.updated webhooks of accounts that exist in a
    StackOne answering in 0.15 s, vs the bare aiohttp handler given the same bodies."""
    load = _ingest_load(seconds)
    samples = [VERIFICATIONS, INBOX_DEPTH]
    latency = {"STACKONE_CONNECT_EMULATOR_LATENCY": "0.15"}
    async with serve(workdir, "verified-ingest", **latency) as process:
        seeded = await run_role(
            "seed_accounts", 120, emulator=process.emulator_url, count=VERIFIED_INGEST_ACCOUNTS
        )
        measured = await run_role(
            "http_load", seconds + 30, url=process.gateway_url, prefix="v",
            account_ids=seeded["ids"], **load,
            probe={"url": process.admin_url + "/metrics", "samples": samples},
        )  # fmt: skip
    async with server_role("bare_http") as bare:
        baseline = await run_role(
            "http_load", seconds + 30, url=f"http://127.0.0.1:{bare.port}", prefix="vb",
            account_ids=seeded["ids"], **load,
        )  # fmt: skip
    ratio = measured["rps"] / baseline["rps"]
    ok = all(status.startswith("2") for status in measured["statuses"])
    samples = measured["probe"]
    verified = samples.get(f'{VERIFICATIONS}{{outcome="verified"}}', 0.0)
    return Row(
        f"webhook ingest, account.updated of {VERIFIED_INGEST_ACCOUNTS:,} existing accounts, "
        "StackOne latency 0.15 s, 32 in flight",
        measured["rps"], "req/s", "bare aiohttp 204 handler, same bodies", baseline["rps"],
        ratio, ">= 0.5x", ratio >= 0.5 and ok,
        f"statuses {measured['statuses']}; by the end of the measured period "
        f"{verified:,.0f} events verified, inbox depth {samples.get(INBOX_DEPTH, 0.0):,.0f}",
    )  # fmt: skip


async def _subscribed_latency(
    target: str,
    pid: int,
    *,
    subscribers: int,
    events: int,
    timeout: float,
    poster: str,
    post: dict[str, Any],
) -> tuple[dict[str, Any], int, int]:
    """Opens `subscribers` streams to `target`, runs the `poster` role with `post`; returns
    what the subscribers measured and the server's RSS before and after they attached."""
    rss_before = rss_kib(pid)
    readers = await _spawn(
        "subscribers",
        {"target": target, "count": subscribers, "events": events,
         "channels": max(1, subscribers // 100), "timeout": timeout},
        LOAD_CPU,
    )  # fmt: skip
    try:
        assert readers.stdout is not None
        async with asyncio.timeout(60):
            ready = await readers.stdout.readline()
        if not ready.startswith(b"READY"):
            raise RuntimeError("subscribers did not attach")
        await asyncio.sleep(1.0)  # let the attached streams settle before measuring memory
        rss_attached = rss_kib(pid)
        await run_role(poster, timeout, count=events, prefix="lat", **post)
        received = await Role(readers, 0).result(timeout + 10)
    finally:
        if readers.returncode is None:
            readers.kill()
            await readers.wait()
    return received, rss_before, rss_attached


async def _webhook_latency(
    process: ServeProcess, *, subscribers: int, rate: float, events: int, timeout: float
) -> tuple[dict[str, Any], int, int]:
    return await _subscribed_latency(
        process.grpc_target, process.pid, subscribers=subscribers, events=events,
        timeout=timeout, poster="paced_post",
        post={"url": process.gateway_url, "secret": SECRET, "rate": rate},
    )  # fmt: skip


async def bench_latency(workdir: Path, seconds: float, rate: float, target: str) -> Row:
    """Webhook → subscriber latency at `rate` events/s with 100 subscribers."""
    subscribers = 100
    async with serve(workdir, f"latency-{rate:.0f}") as process:
        received, _, _ = await _webhook_latency(
            process, subscribers=subscribers, rate=rate, events=int(rate * seconds),
            timeout=seconds * 20 + 30,
        )  # fmt: skip
    return Row(
        f"webhook -> subscriber latency p99, {rate:,.0f} ev/s x 100 subscribers",
        received["p99_ms"], "ms", "-", None, None, target,
        received["p99_ms"] <= 5.0 if rate >= 1000 else None,
        f"{rate * subscribers:,.0f} messages/s; p50 {received['p50_ms']:.2f} ms; "
        f"subscriber process CPU {received['client_cpu']:.0%}",
    )  # fmt: skip


async def bench_fan_out(workdir: Path) -> list[Row]:
    """One event at a time to 1,000 subscribers; memory per idle stream."""
    subscribers, events = 1000, 10
    async with serve(workdir, "fanout") as process:
        received, before, attached = await _webhook_latency(
            process, subscribers=subscribers, rate=4.0, events=events, timeout=120
        )
    async with server_role("bare_broadcast") as bare:
        bare_received, bare_before, bare_attached = await _subscribed_latency(
            f"127.0.0.1:{bare.port}", bare.process.pid, subscribers=subscribers, events=events,
            timeout=120, poster="paced_publish",
            post={"target": f"127.0.0.1:{bare.port}", "rate": 4.0},
        )  # fmt: skip
    per_stream_kib = (attached - before) / subscribers
    floor_kib = (bare_attached - bare_before) / subscribers
    return [
        Row(
            "fan-out of one event to 1,000 subscribers, p99",
            received["p99_ms"], "ms", "bare grpc.aio broadcast, p99 ms", bare_received["p99_ms"],
            received["p99_ms"] / bare_received["p99_ms"], "p99 <= 50 ms", received["p99_ms"] <= 50,
            f"p50 {received['p50_ms']:.1f} ms; bare p50 {bare_received['p50_ms']:.1f} ms",
        ),
        Row(
            "memory per idle stream (RSS growth / 1,000 streams)",
            per_stream_kib, "KiB", "bare grpc.aio idle stream, KiB", floor_kib,
            per_stream_kib / floor_kib, "<= 20 KB", per_stream_kib * 1024 <= 20_000,
            f"serve RSS {before / 1024:.1f} MiB -> {attached / 1024:.1f} MiB",
        ),
    ]  # fmt: skip


async def bench_create_session(workdir: Path, seconds: float) -> list[Row]:
    """CreateSession throughput vs a bare grpc.aio echo; added latency vs direct httpx."""
    load = {"seconds": seconds}
    async with server_role("bare_grpc") as echo:
        echo_target = f"127.0.0.1:{echo.port}"
        baseline = await run_role(
            "grpc_load", seconds + 30, target=echo_target, method="echo", concurrency=16, **load
        )
        echo_alone = await run_role(
            "grpc_load", seconds + 30, target=echo_target, method="echo", concurrency=1, **load
        )
    async with server_role("instant_upstream", cpu=LOAD_CPU) as upstream:
        upstream_url = f"http://127.0.0.1:{upstream.port}"
        async with server_role("bare_grpc", upstream=upstream_url) as relay:
            relay_baseline = await run_role(
                "grpc_load", seconds + 30, target=f"127.0.0.1:{relay.port}", method="echo",
                concurrency=16, **load,
            )  # fmt: skip
        # The instant upstream has no rate limit: a budget this large never makes a call
        # wait (its bookkeeping is still done, as part of what the service costs).
        env = {
            "STACKONE_CONNECT_API_KEY": "bench-key", "STACKONE_CONNECT_BASE_URL": upstream_url,
            "STACKONE_CONNECT_RATE_LIMIT": str(10**9),
        }  # fmt: skip
        async with serve(workdir, "sessions", **env) as process:
            sessions = {"target": process.grpc_target, "method": "create_session", **load}
            measured = await run_role("grpc_load", seconds + 30, concurrency=16, **sessions)
            sequential = await run_role("grpc_load", seconds + 30, concurrency=1, **sessions)
        direct = await run_role("httpx_latency", 60, url=upstream_url, calls=2000)
    ratio = measured["rps"] / baseline["rps"]
    relay_ratio = measured["rps"] / relay_baseline["rps"]
    added = sequential["p50_ms"] - direct["p50_ms"]
    return [
        Row(
            "CreateSession throughput, instant upstream",
            measured["rps"], "calls/s", "bare grpc.aio unary echo", baseline["rps"], ratio,
            ">= 0.7x", ratio >= 0.7, f"p99 {measured['p99_ms']:.2f} ms at 16 in flight",
        ),
        Row(
            "CreateSession throughput vs the same httpx call in a bare grpc.aio method",
            measured["rps"], "calls/s", "bare grpc.aio unary + httpx POST",
            relay_baseline["rps"], relay_ratio, "(what the service adds)", None,
        ),
        Row(
            "CreateSession added latency, p50",
            added, "ms", "direct httpx call, p50", direct["p50_ms"], None,
            "<= 0.5 ms added", added <= 0.5,
            f"CreateSession p50 {sequential['p50_ms']:.3f} ms; a bare grpc.aio echo round trip "
            f"alone: {echo_alone['p50_ms']:.3f} ms",
        ),
    ]  # fmt: skip


async def _seed(path: Path, count: int) -> None:
    log = await SqliteEventLog.open(path)
    try:
        for start in range(0, count, 1000):
            records = []
            for n in range(start, min(count, start + 1000)):
                account = pb.Account(
                    id=f"acc-{n % 5000}", provider="hibob", origin_owner_id=f"owner-{n % 97}",
                    origin_owner_name="Acme", status=pb.ACCOUNT_STATUS_ACTIVE, raw_status="active",
                )  # fmt: skip
                message = pb.AccountEvent(
                    event_id=f"seed-{n}", type="account.updated", account=account
                )
                message.occurred_at.GetCurrentTime()
                message.received_at.GetCurrentTime()
                records.append(event_record(message))
            await log.append(records)
    finally:
        await log.close()


async def bench_replay(workdir: Path, count: int) -> list[Row]:
    """Events per second a subscriber receives replaying from the earliest cursor."""
    directory = workdir / "replay"
    directory.mkdir(exist_ok=True)
    await _seed(directory / "events.db", count)
    async with serve(workdir, "replay") as process:
        batched = await run_role(
            "replay", 120, target=process.grpc_target, count=count, per_message=REPLAY_BATCH
        )
        single = await run_role(
            "replay", 120, target=process.grpc_target, count=count, per_message=1
        )
    async with server_role("bare_stream") as bare:
        flood = await run_role("flood_read", 120, target=f"127.0.0.1:{bare.port}", count=count)
    return [
        Row(
            f"replay from a cursor ({REPLAY_BATCH} events per message)",
            batched["events_per_s"], "events/s", "-", None, None, ">= 50,000 events/s",
            batched["events_per_s"] >= 50_000, f"{batched['events']:,} events",
        ),
        Row(
            "replay from a cursor (one event per message)",
            single["events_per_s"], "events/s", "bare grpc.aio stream, messages/s",
            flood["messages_per_s"], single["events_per_s"] / flood["messages_per_s"],
            "(per-message ceiling)", None,
        ),
    ]  # fmt: skip


async def bench_burst(workdir: Path) -> list[Row]:
    """A burst of account.updated webhooks against a slow, rate-limited StackOne: the door
    answers at once, callers keep their share, the verifier folds and paces look-ups."""
    env = {
        "STACKONE_CONNECT_EMULATOR_LATENCY": str(BURST_LATENCY),
        "STACKONE_CONNECT_EMULATOR_RATE_LIMIT": str(BURST_RATE_LIMIT),
        "STACKONE_CONNECT_RATE_LIMIT": str(BURST_RATE_LIMIT),
        "STACKONE_CONNECT_RATE_CALLER_RESERVE": str(BURST_CALLER_RESERVE),
    }
    async with serve(workdir, "burst", **env) as process:
        seeded = await run_role(
            "seed_accounts", 120, emulator=process.emulator_url, count=BURST_ACCOUNTS
        )
        result = await run_role(
            "burst", BURST_GIVE_UP + 60, url=process.gateway_url, target=process.grpc_target,
            emulator=process.emulator_url, secret=SECRET, account_ids=seeded["ids"],
            per_account=BURST_PER_ACCOUNT, concurrency=BURST_IN_FLIGHT, session_interval=1.0,
            give_up=BURST_GIVE_UP,
        )  # fmt: skip
    webhooks = result["webhooks"]
    all_accepted = result["results"].get("accepted", 0) == webhooks
    attempts, succeeded = result["session_attempts"], result["sessions"].get("OK", 0)
    lookups = result["stats"]["calls"].get("GET /accounts/{account_id}", 0)
    rate_limited = result["stats"]["rate_limited"]
    lookup_target = BURST_ACCOUNTS * 1.05
    per_second = BURST_RATE_LIMIT * (1 - BURST_CALLER_RESERVE) / 60
    paced = lookups / per_second
    seconds = result["seconds"]
    shown = seconds if seconds is not None else result["waited_s"]
    scene = (
        f"{webhooks:,} account.updated for {BURST_ACCOUNTS} accounts, {BURST_IN_FLIGHT} in "
        f"flight; StackOne {BURST_LATENCY:g} s, {BURST_RATE_LIMIT}/min"
    )
    progress = (
        f"{result['covered']:,}/{result['accepted']:,} accepted webhooks covered, "
        f"{result['verified_accounts']}/{BURST_ACCOUNTS} accounts verified"
    )
    return [
        Row(
            f"burst: webhook answer p99 ({scene})",
            result["p99_ms"], "ms", "-", None, None, "p99 <= 50 ms",
            result["p99_ms"] <= 50 and all_accepted,
            f"max {result['max_ms']:.1f} ms, p50 {result['p50_ms']:.1f} ms; all sent in "
            f"{result['posting_s']:.2f} s; answers {result['results']}, "
            f"statuses {result['statuses']}",
        ),
        Row(
            "burst: CreateSession once a second meanwhile, successes",
            succeeded, f"of {attempts}", "-", None, None, "every call succeeds",
            attempts > 0 and succeeded == attempts,
            f"outcomes {result['sessions']}; p99 {result['session_p99_ms']:.0f} ms, "
            f"max {result['session_max_ms']:.0f} ms",
        ),
        Row(
            "burst: 429s received from StackOne", rate_limited, "received", "-", None, None,
            "0", rate_limited == 0, f"StackOne calls {result['stats']['calls']}",
        ),
        Row(
            "burst: account look-ups (GET /accounts/{id})",
            lookups, "calls", "accounts", BURST_ACCOUNTS, lookups / BURST_ACCOUNTS,
            f"<= {lookup_target:,.0f} (accounts + 5%)", lookups <= lookup_target,
            f"events {result['events']}; at most {result['most_folded']} webhooks in one event",
        ),
        Row(
            "burst: first webhook sent -> every webhook covered by an event and every "
            "account's last event VERIFIED",
            shown, "s", f"look-ups / background budget ({per_second:g}/s), s", paced,
            shown / paced if paced else None, "<= 1.2x",
            seconds is not None and paced > 0 and seconds <= 1.2 * paced,
            (progress if seconds is not None else f"gave up after {shown:.0f} s: {progress}")
            + (f"; unverified: {result['unverified_reasons']}"
               if result["unverified_reasons"] else "")
            + (f"; the stream failed: {result['stream_error']}" if result["stream_error"] else ""),
        ),
    ]  # fmt: skip


_MET = {True: "yes", False: "NO", None: "-"}


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def _format(rows: list[Row]) -> str:
    header = "| figure | measured | baseline (same run) | ratio | target | met |"
    lines = [header, "|---|---|---|---|---|---|"]
    for row in rows:
        baseline = (
            row.baseline
            if row.baseline_value is None
            else (f"{row.baseline}: {_number(row.baseline_value)}")
        )
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}x"
        detail = f" ({row.detail})" if row.detail else ""
        lines.append(
            f"| {row.figure} | {_number(row.value)} {row.unit}{detail} | {baseline} | {ratio} "
            f"| {row.target} | {_MET[row.met]} |"
        )
    return "\n".join(lines)


def _machine() -> str:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.machine(),
    )  # fmt: skip
    return f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}"


SCENARIOS = (
    "ingest", "verified_ingest", "create_session", "latency", "fan_out", "replay", "burst",
)  # fmt: skip


async def main(seconds: float, replay_events: int, only: set[str]) -> dict[str, Any]:
    """Runs the chosen benchmarks (all by default) and prints the table."""
    if os.cpu_count() is not None and os.cpu_count() >= 2:  # type: ignore[operator]
        os.sched_setaffinity(0, {SERVER_CPU})  # inherited by every server this run starts
    started = time.perf_counter()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="stackone-bench-") as tmp:
        workdir = Path(tmp)
        if "ingest" in only:
            rows.append(await bench_ingest(workdir, seconds))
        if "verified_ingest" in only:
            rows.append(await bench_verified_ingest(workdir, seconds))
        if "create_session" in only:
            rows += await bench_create_session(workdir, seconds)
        if "latency" in only:
            rows.append(await bench_latency(workdir, seconds, 1000.0, "p99 <= 5 ms"))
            rows.append(await bench_latency(workdir, seconds, 100.0, "(for context)"))
        if "fan_out" in only:
            rows += await bench_fan_out(workdir)
        if "replay" in only:
            rows += await bench_replay(workdir, replay_events)
        if "burst" in only:
            rows += await bench_burst(workdir)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    took = time.perf_counter() - started
    print(f"\nstackone-connect benchmarks, {when}, {_machine()}, {took:.0f} s\n")
    print(_format(rows))
    return {"date": when, "machine": _machine(), "rows": [asdict(row) for row in rows]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each load phase")
    parser.add_argument("--replay-events", type=int, default=100_000)
    parser.add_argument(
        "--only", default=",".join(SCENARIOS), help=f"comma-separated, of: {', '.join(SCENARIOS)}"
    )
    options = parser.parse_args()
    chosen = set(options.only.split(","))
    if unknown := chosen - set(SCENARIOS):
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    results = asyncio.run(main(options.seconds, options.replay_events, chosen))
    RESULTS.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(f"\nwritten to {RESULTS}")
