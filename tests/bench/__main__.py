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
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from service.config import Settings
from service.events.reconcile import PAGE_SIZE
from service.events.records import event_record
from service.events.sqlite import SqliteEventLog, SqliteOptions
from service.stackone.budget import RateBudget
from stackone_connect.v1 import stackone_connect_pb2 as pb
from tests.bench.harness import (
    LOAD_CPU,
    SECRET,
    SERVER_CPU,
    Role,
    Row,
    run_role,
    serve,
    server_role,
    spawn,
)
from tests.bench.ingest_limit import bench_durable_ingest
from tests.bench.roles import bench_account
from tests.harness.processes import rss_kib

RESULTS = Path("bench-results.json")
REPLAY_BATCH = 256  # max_events_per_message of the replaying subscriber
LIVE_BATCH = 200  # max_events_per_message of batching subscribers, as `events watch` asks
# Reader processes (on the load CPU) for the subscribers: each reads ~50,000 messages/s
# at a third of a core (tests/bench/h2streams.py), and 1, 2 or 4 give the same p99, so
# reading is not the limit (the README's Benchmarks section has the figures).
SUBSCRIBER_PROCESSES = 2
RATIO_TARGET = 1.5  # the service's p99 at most this many times the bare broadcast's
VERIFIED_INGEST_ACCOUNTS = 1000
# The burst: StackOne as slow and as strict as in production, and a budget that matches it.
BURST_ACCOUNTS, BURST_PER_ACCOUNT, BURST_IN_FLIGHT = 400, 5, 64
BURST_RATE_LIMIT, BURST_CALLER_RESERVE, BURST_LATENCY = 600, 0.2, 0.1
BURST_GIVE_UP = 180.0  # seconds from the first webhook
# The registry: 100,000 accounts, ten for each customer; reads from 16 callers; a snapshot
# in batches of 1,000; a first start against a StackOne holding 10,000 accounts.
REGISTRY_ACCOUNTS, REGISTRY_PER_OWNER, REGISTRY_IN_FLIGHT = 100_000, 10, 16
REGISTRY_READS, SNAPSHOT_BATCH, FIRST_START_ACCOUNTS = 10_000, 1000, 10_000
FIRST_START_LATENCY = BURST_LATENCY  # StackOne's latency in the first start's second run
REGISTRY_SAMPLES = 4096  # accounts (and their owners) the readers ask for, spread evenly
VERIFICATIONS = "stackone_connect_verifications_total"
INBOX_DEPTH = "stackone_connect_inbox_depth"


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


@dataclass
class Delivery:
    """What the subscribers of one run measured: every event's latency at every stream."""

    latencies_us: list[int]  # from the event's send time to its arrival, per stream
    numbers: list[int]  # the event (n of its account id) of each latency
    messages: int  # messages that carried events, over all streams
    seconds: float  # how long the poster took to send every event
    cpu: list[float]  # each subscriber process's CPU use while reading
    incomplete: int  # streams that ended before every event arrived
    duplicates: int  # events a stream received more than once

    def percentile_ms(self, fraction: float) -> float:
        """The latency (ms) below which `fraction` of the deliveries were."""
        return percentile(self.latencies_us, fraction) / 1e3

    def from_recorded(self, recorded: dict[int, float]) -> list[float]:
        """Latencies (µs) from the moment each event was recorded: `recorded` maps an
        event's n to its recording time, as µs after its send time."""
        pairs = zip(self.latencies_us, self.numbers, strict=True)
        return [latency - recorded[n] for latency, n in pairs]


def percentile(values: list[int] | list[float], fraction: float) -> float:
    """The value below which `fraction` of `values` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


async def _subscribed(
    target: str,
    pid: int,
    *,
    subscribers: int,
    per_message: int,
    events: int,
    timeout: float,
    poster: str,
    post: dict[str, Any],
) -> tuple[Delivery, int, int]:
    """Opens `subscribers` streams to `target` from `SUBSCRIBER_PROCESSES` processes, runs
    the `poster` role with `post`; returns what the subscribers measured and the server's
    RSS before and after they attached."""
    rss_before = rss_kib(pid)
    processes = min(SUBSCRIBER_PROCESSES, subscribers)
    readers = []
    try:
        for index in range(processes):
            count = subscribers // processes + (index < subscribers % processes)
            readers.append(await spawn(
                "subscribers",
                {"target": target, "count": count, "events": events, "per_message": per_message,
                 "channels": max(1, count // 100), "timeout": timeout},
                LOAD_CPU,
            ))  # fmt: skip
        for reader in readers:
            assert reader.stdout is not None
            async with asyncio.timeout(60):
                ready = await reader.stdout.readline()
            if not ready.startswith(b"READY"):
                raise RuntimeError("subscribers did not attach")
        await asyncio.sleep(1.0)  # let the attached streams settle before measuring memory
        rss_attached = rss_kib(pid)
        posted = await run_role(poster, timeout, count=events, prefix="lat", **post)
        results = await asyncio.gather(
            *(Role(reader, 0).result(timeout + 10) for reader in readers)
        )
    finally:
        for reader in readers:
            if reader.returncode is None:
                reader.kill()
                await reader.wait()
    delivery = Delivery(
        [lat for result in results for lat in result["latencies_us"]],
        [n for result in results for n in result["numbers"]],
        sum(result["messages"] for result in results),
        posted["seconds"],
        [result["cpu"] for result in results],
        sum(result["incomplete"] for result in results),
        sum(result["duplicates"] for result in results),
    )
    return delivery, rss_before, rss_attached


def _recorded_after_send(db: Path) -> dict[int, float]:
    """For each event of a latency run, µs from its send time (in its account id
    `lat-<ns>-<n>`) to its recording, read from the stopped service's log."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT account_id, recorded_at FROM events").fetchall()
    recorded: dict[int, float] = {}
    for account_id, recorded_at in rows:
        _, sent_ns, n = account_id.split("-")
        recorded[int(n)] = recorded_at * 1e6 - int(sent_ns) / 1e3
    return recorded


@dataclass
class LatencyRun:
    """One run of a latency scenario: the service, and the bare broadcast under the same
    load, given the same webhooks over HTTP and, for delivery alone, the same events over
    a raw TCP socket."""

    service: Delivery
    bare: Delivery  # fed the same signed webhooks by the same poster, over HTTP
    bare_tcp: Delivery  # fed the events over TCP: delivery with no intake to speak of
    from_recorded_us: list[float]  # the service's latencies from each event's recording
    until_recorded_us: list[float]  # each event's time from its send to its recording

    @property
    def ratio(self) -> float:
        """The service's p99 over the bare broadcast's, both fed webhooks."""
        return self.service.percentile_ms(0.99) / self.bare.percentile_ms(0.99)

    @property
    def delivery_ratio(self) -> float:
        """The service's p99 from recording over the TCP-fed bare broadcast's p99."""
        return percentile(self.from_recorded_us, 0.99) / 1e3 / self.bare_tcp.percentile_ms(0.99)


async def _latency_run(
    workdir: Path, name: str, *, rate: float, subscribers: int, per_message: int, events: int,
    timeout: float,
) -> LatencyRun:  # fmt: skip
    async with serve(workdir, name) as process:
        service, _, _ = await _subscribed(
            process.grpc_target, process.pid, subscribers=subscribers, per_message=per_message,
            events=events, timeout=timeout, poster="paced_post",
            post={"url": process.gateway_url, "secret": SECRET, "rate": rate},
        )  # fmt: skip
    recorded = _recorded_after_send(workdir / name / "events.db")
    bare: list[Delivery] = []
    for over_http in (True, False):
        async with server_role("bare_broadcast") as bare_server:
            post: dict[str, Any] = {"rate": rate}
            if over_http:  # the same poster and signed webhooks as the service's
                post |= {"url": f"http://127.0.0.1:{bare_server.more_ports[1]}", "secret": SECRET}
            else:
                post |= {"port": bare_server.more_ports[0]}
            delivered, _, _ = await _subscribed(
                f"127.0.0.1:{bare_server.port}", bare_server.process.pid,
                subscribers=subscribers, per_message=per_message, events=events,
                timeout=timeout, poster="paced_post" if over_http else "paced_publish", post=post,
            )  # fmt: skip
        bare.append(delivered)
    return LatencyRun(
        service, bare[0], bare[1], service.from_recorded(recorded), list(recorded.values())
    )


def _spread(values: list[float], unit: str = "ms", digits: int = 1) -> str:
    """Every run's value, for the spread: "8.1 / 9.0 / 12.3 ms"."""
    return " / ".join(f"{value:,.{digits}f}" for value in values) + f" {unit}"


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


async def bench_latency(
    workdir: Path, seconds: float, rate: float, per_message: int, target_ms: float, runs: int
) -> list[Row]:
    """Webhook → subscriber latency at `rate` events/s with 100 subscribers, against the bare
    grpc.aio broadcast under the same load with the same batching, `runs` times: fed the
    same webhooks over HTTP by a bare aiohttp handler (the baseline of the end-to-end
    figure), and fed over raw TCP (the baseline of delivery alone, from recording)."""
    subscribers = 100
    results = [
        await _latency_run(
            workdir,
            f"latency-{rate:.0f}-{per_message}-{run}",
            rate=rate,
            subscribers=subscribers,
            per_message=per_message,
            events=int(rate * seconds),
            timeout=seconds * 20 + 30,
        )
        for run in range(runs)
    ]
    p99 = [run.service.percentile_ms(0.99) for run in results]
    p50 = [run.service.percentile_ms(0.5) for run in results]
    bare_p99 = [run.bare.percentile_ms(0.99) for run in results]
    bare_p50 = [run.bare.percentile_ms(0.5) for run in results]
    tcp_p99 = [run.bare_tcp.percentile_ms(0.99) for run in results]
    ratios = [run.ratio for run in results]
    delivery_ratios = [run.delivery_ratio for run in results]
    recorded_p99 = [percentile(run.from_recorded_us, 0.99) / 1e3 for run in results]
    recorded_p50 = [percentile(run.from_recorded_us, 0.5) / 1e3 for run in results]
    until_p50 = [percentile(run.until_recorded_us, 0.5) / 1e3 for run in results]
    until_p99 = [percentile(run.until_recorded_us, 0.99) / 1e3 for run in results]
    per_s = [run.service.messages / run.service.seconds for run in results]
    per_message_seen = [
        len(run.service.latencies_us) / max(1, run.service.messages) for run in results
    ]
    cpu = [max(run.service.cpu + run.bare.cpu + run.bare_tcp.cpu) for run in results]
    anomalies = sum(
        delivery.incomplete + delivery.duplicates
        for run in results
        for delivery in (run.service, run.bare, run.bare_tcp)
    )
    batching = f"batching allowed ({per_message}/message)" if per_message > 1 else "no batching"
    scene = f"{rate:,.0f} ev/s x {subscribers} subscribers, {batching}"
    ratio_target = f"<= {RATIO_TARGET}x bare" if per_message > 1 else ""
    met = _median(p99) <= target_ms and (per_message <= 1 or _median(ratios) <= RATIO_TARGET)
    return [
        Row(
            f"webhook -> subscriber latency p99, {scene} (median of {runs} runs)",
            _median(p99), "ms",
            "bare aiohttp handler + grpc.aio broadcast, same webhooks and batching, p99 ms",
            _median(bare_p99), _median(ratios),
            f"p99 <= {target_ms:g} ms" + (f", {ratio_target}" if ratio_target else ""), met,
            f"p99 per run {_spread(p99)}, p50 {_spread(p50)}; bare p99 {_spread(bare_p99)}, "
            f"p50 {_spread(bare_p50)}; "
            f"ratio per run {_spread(ratios, 'x', 2)}; {_spread(per_s, 'messages/s')} sent, "
            f"{_spread(per_message_seen, 'events/message')}; busiest subscriber process CPU "
            f"{max(cpu):.0%}"
            + (f"; {anomalies} incomplete streams or duplicates" if anomalies else ""),
        ),
        Row(
            f"recorded -> subscriber latency p99, {scene} (delivery alone: from the "
            "recording transaction, fsync included)",
            _median(recorded_p99), "ms", "bare grpc.aio broadcast fed over TCP, p99 ms",
            _median(tcp_p99), _median(delivery_ratios), "(what delivery adds)", None,
            f"p99 per run {_spread(recorded_p99)}, p50 {_spread(recorded_p50)}; TCP-fed bare "
            f"p99 {_spread(tcp_p99)}; before it, webhook sent -> recorded p50 "
            f"{_spread(until_p50)}, p99 {_spread(until_p99)}",
        ),
    ]  # fmt: skip


async def bench_fan_out(workdir: Path, runs: int) -> list[Row]:
    """One event at a time to 1,000 subscribers; memory per idle stream; `runs` times."""
    subscribers, events = 1000, 10
    p99: list[float] = []
    bare_p99: list[float] = []
    per_stream: list[float] = []
    bare_per_stream: list[float] = []
    for run in range(runs):
        async with serve(workdir, f"fanout-{run}") as process:
            received, before, attached = await _subscribed(
                process.grpc_target, process.pid, subscribers=subscribers, per_message=1,
                events=events, timeout=120, poster="paced_post",
                post={"url": process.gateway_url, "secret": SECRET, "rate": 4.0},
            )  # fmt: skip
        async with server_role("bare_broadcast") as bare:
            target = f"127.0.0.1:{bare.port}"
            bare_received, bare_before, bare_attached = await _subscribed(
                target, bare.process.pid, subscribers=subscribers, per_message=1,
                events=events, timeout=120, poster="paced_publish",
                post={"port": bare.more_ports[0], "rate": 4.0},
            )  # fmt: skip
        p99.append(received.percentile_ms(0.99))
        bare_p99.append(bare_received.percentile_ms(0.99))
        per_stream.append((attached - before) / subscribers)
        bare_per_stream.append((bare_attached - bare_before) / subscribers)
    ratios = [ours / bare for ours, bare in zip(per_stream, bare_per_stream, strict=True)]
    return [
        Row(
            f"fan-out of one event to 1,000 subscribers, p99 (median of {runs} runs)",
            _median(p99), "ms", "bare grpc.aio broadcast, p99 ms", _median(bare_p99),
            _median(p99) / _median(bare_p99), "p99 <= 50 ms", _median(p99) <= 50,
            f"p99 per run {_spread(p99)}; bare {_spread(bare_p99)}",
        ),
        Row(
            f"memory per idle stream (RSS growth / 1,000 streams, median of {runs} runs)",
            _median(per_stream), "KiB", "bare grpc.aio idle stream, KiB",
            _median(bare_per_stream), _median(ratios), "<= 1.1x bare", _median(ratios) <= 1.1,
            f"per run {_spread(per_stream, 'KiB')}; bare {_spread(bare_per_stream, 'KiB')}; "
            f"ratio per run {_spread(ratios, 'x', 2)}",
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


# Client shares: a budget as production's, a batch client with a tenth of it calling
# CreateSession 200 times a second (or flooding, 16 in flight), a person's client well
# within what is left.
SHARES_RATE_LIMIT, NOISY_SHARE, QUIET_RATE = 1000, 100, 20.0
NOISY_RATE, NOISY_IN_FLIGHT = 200.0, 16
NOISY_TOKEN, QUIET_TOKEN = "bench-noisy-token-0123456789", "bench-quiet-token-0123456789"


async def bench_client_shares(workdir: Path, seconds: float) -> list[Row]:
    """A quiet client's CreateSession beside a noisy client past its calls_per_minute
    (paced, then flooding), against the quiet client alone: both clients' successes, p99."""
    clients = workdir / "share-clients.json"
    scopes = ["sessions:create"]
    clients.write_bytes(orjson.dumps({"clients": [
        {"name": "noisy", "token": NOISY_TOKEN, "scopes": scopes, "calls_per_minute": NOISY_SHARE},
        {"name": "quiet", "token": QUIET_TOKEN, "scopes": scopes},
    ]}))  # fmt: skip
    runs = {"alone": (0.0, 0), "paced": (NOISY_RATE, 0), "flood": (0.0, NOISY_IN_FLIGHT)}
    figures: dict[str, dict[str, Any]] = {}
    async with server_role("instant_upstream", cpu=LOAD_CPU) as upstream:
        env = {
            "STACKONE_CONNECT_API_KEY": "bench-key",
            "STACKONE_CONNECT_BASE_URL": f"http://127.0.0.1:{upstream.port}",
            "STACKONE_CONNECT_RATE_LIMIT": str(SHARES_RATE_LIMIT),
            "STACKONE_CONNECT_CLIENTS_FILE": str(clients),
        }
        for run, (rate, in_flight) in runs.items():  # a fresh service (and budget) each
            async with serve(workdir, f"shares-{run}", **env) as process:
                figures[run] = await run_role(
                    "client_shares", seconds + 30, target=process.grpc_target,
                    seconds=seconds, noisy_rate=rate, noisy_concurrency=in_flight,
                    quiet_rate=QUIET_RATE, noisy_token=NOISY_TOKEN, quiet_token=QUIET_TOKEN,
                )  # fmt: skip
    alone = figures["alone"]["quiet"]
    rows = []
    for run, how in (("paced", f"{NOISY_RATE:g}/s"), ("flood", f"{NOISY_IN_FLIGHT} in flight")):
        quiet, noisy = figures[run]["quiet"], figures[run]["noisy"]
        quiet_ok, noisy_ok = quiet["outcomes"].get("OK", 0), noisy["outcomes"].get("OK", 0)
        ratio = quiet["p99_ms"] / alone["p99_ms"]
        paced = run == "paced"
        rows.append(Row(
            f"Quiet client's CreateSession p99 beside a noisy client past its limit ({how})",
            quiet["p99_ms"], "ms", "the quiet client alone, p99", alone["p99_ms"], ratio,
            "all OK, noisy its share, <= 2x" if paced else "(a flood: what it costs)",
            quiet_ok == quiet["calls"] and noisy_ok == NOISY_SHARE and ratio <= 2.0
            if paced else None,
            f"quiet {quiet_ok}/{quiet['calls']} OK at {QUIET_RATE:g}/s, p50 "
            f"{quiet['p50_ms']:.2f} ms (alone {alone['p50_ms']:.2f}); noisy {noisy_ok}/"
            f"{noisy['calls']} OK (its share {NOISY_SHARE}/min), "
            f"{noisy['outcomes'].get('RESOURCE_EXHAUSTED', 0)} RESOURCE_EXHAUSTED, "
            f"p99 {noisy['p99_ms']:.2f} ms",
        ))  # fmt: skip
    return rows


async def bench_tracing(workdir: Path, seconds: float, runs: int) -> list[Row]:
    """CreateSession and webhook ingest with tracing off (no OTEL_* variable) and on (every
    trace sampled, exported over OTLP/HTTP to a collector's intake on the load CPU), in
    alternating rounds; the ratio is on/off, the median of the rounds."""
    off: dict[str, list[float]] = {"sessions": [], "ingest": []}
    on: dict[str, list[float]] = {"sessions": [], "ingest": []}
    spans = 0
    async with (
        server_role("instant_upstream", cpu=LOAD_CPU) as upstream,
        server_role("otlp_sink", cpu=LOAD_CPU) as sink,
    ):
        upstream_env = {
            "STACKONE_CONNECT_API_KEY": "bench-key",
            "STACKONE_CONNECT_BASE_URL": f"http://127.0.0.1:{upstream.port}",
            "STACKONE_CONNECT_RATE_LIMIT": str(10**9),
        }
        tracing_env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_TRACES_SAMPLER": "always_on",
            # A queue that holds a few seconds of spans: none dropped at these rates.
            "OTEL_BSP_MAX_QUEUE_SIZE": "65536",
        }
        for run in range(runs):
            for traced, into in ((False, off), (True, on)):
                env = upstream_env | (tracing_env if traced else {})
                name = f"tracing-{run}-{'on' if traced else 'off'}"
                async with serve(workdir, name, **env) as process:
                    sessions = await run_role(
                        "grpc_load", seconds + 30, target=process.grpc_target,
                        method="create_session", concurrency=16, seconds=seconds,
                    )  # fmt: skip
                    ingest = await run_role(
                        "http_load", seconds + 30, url=process.gateway_url, prefix=name,
                        **_ingest_load(seconds),
                    )  # fmt: skip
                    await process.stop()  # graceful: the exporter sends what it holds
                into["sessions"].append(sessions["rps"])
                into["ingest"].append(ingest["rps"])
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{sink.port}") as http:
            spans = (await http.get("/spans")).json()["spans"]
    rows = []
    for key, figure, unit in (
        ("sessions", "CreateSession throughput, tracing on (all sampled, OTLP/HTTP)", "calls/s"),
        ("ingest", "webhook ingest, account.deleted, tracing on (all sampled, OTLP/HTTP)", "req/s"),
    ):
        ratio = _median([a / b for a, b in zip(on[key], off[key], strict=True)])
        rows.append(Row(
            figure, _median(on[key]), unit, "the same, tracing off (no OTEL_* variable)",
            _median(off[key]), ratio, "(the cost of tracing)", None,
            f"on {_spread(on[key], unit, 0)}; off {_spread(off[key], unit, 0)}; "
            f"{spans:,} spans received in all",
        ))  # fmt: skip
    return rows


async def _append_events(
    log: SqliteEventLog, count: int, batch: int, event_of: Callable[[int], pb.AccountEvent]
) -> None:
    """Appends the events `event_of(0)` to `event_of(count - 1)`, `batch` to an append."""
    for start in range(0, count, batch):
        events = map(event_of, range(start, min(count, start + batch)))
        await log.append([event_record(event) for event in events])


def _updated_event(n: int) -> pb.AccountEvent:
    """The `n`th event `_seed` writes: an account.updated of one of 5,000 accounts."""
    account = pb.Account(
        id=f"acc-{n % 5000}", provider="hibob", origin_owner_id=f"owner-{n % 97}",
        origin_owner_name="Acme", status=pb.ACCOUNT_STATUS_ACTIVE, raw_status="active",
    )  # fmt: skip
    message = pb.AccountEvent(event_id=f"seed-{n}", type="account.updated", account=account)
    message.occurred_at.GetCurrentTime()
    message.received_at.GetCurrentTime()
    return message


async def _seed(path: Path, count: int) -> None:
    log = await SqliteEventLog.open(SqliteOptions(path))
    try:
        await _append_events(log, count, 1000, _updated_event)
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


WATCH_TARGET = 0.8  # the client library's watch at least this share of a bare reader's rate


async def bench_client_watch(workdir: Path, count: int, runs: int) -> Row:
    """The Python client's `watch` against a bare grpc.aio reader of the same stream (from
    the earliest, `LIVE_BATCH` events per message, each event's cursor kept), on one
    `serve`, in alternating runs; the median of each."""
    directory = workdir / "client_watch"
    directory.mkdir(exist_ok=True)
    await _seed(directory / "events.db", count)
    client: list[float] = []
    bare: list[float] = []
    async with serve(workdir, "client_watch") as process:
        args = {"target": process.grpc_target, "count": count, "per_message": LIVE_BATCH}
        for _ in range(runs):
            bare.append((await run_role("bare_watch", 120, **args))["events_per_s"])
            client.append((await run_role("client_watch", 120, **args))["events_per_s"])
    ratio = _median(client) / _median(bare)
    return Row(
        "Python client watch throughput (from the earliest)",
        _median(client), "events/s", "bare grpc.aio reader, events/s", _median(bare), ratio,
        f">= {WATCH_TARGET}x", ratio >= WATCH_TARGET,
        f"{count:,} events, {LIVE_BATCH} per message, median of {runs}: client "
        f"{_spread(client, 'events/s', 0)}, bare {_spread(bare, 'events/s', 0)}",
    )  # fmt: skip


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


async def _seed_registry(path: Path, count: int, owners: int) -> float:
    """Writes `count` account.created events (`bench_account`) to a new SQLite log, which
    fills the registry, and marks it complete; returns the seconds it took."""

    def created(n: int) -> pb.AccountEvent:
        message = pb.AccountEvent(
            event_id=f"seed-{n}", type="account.created", account=bench_account(n, owners),
            source=pb.EVENT_SOURCE_RECONCILIATION, verification=pb.VERIFICATION_VERIFIED,
        )  # fmt: skip
        message.occurred_at.CopyFrom(message.account.updated_at)
        message.received_at.GetCurrentTime()
        return message

    started = time.perf_counter()
    log = await SqliteEventLog.open(SqliteOptions(path))
    try:
        await _append_events(log, count, 5000, created)
        await log.mark_registry_complete()
    finally:
        await log.close()
    return time.perf_counter() - started


def _background_per_second() -> float:
    """The background share of the default STACKONE_CONNECT_RATE_LIMIT, calls per second."""
    fields = Settings.model_fields
    limit, reserve = fields["rate_limit"].default, fields["rate_caller_reserve"].default
    return RateBudget(limit, caller_reserve=reserve).background_limit / 60


async def _first_start(workdir: Path, latency: float) -> Row:
    """A first start against a StackOne holding `FIRST_START_ACCOUNTS` accounts and
    answering after `latency` s: the time from `serve`'s launch until the registry is
    complete (its first reconciliation sweep listed them all), against the time the listing
    takes at the background budget's pace. With a latency, a figure for context."""
    key = "bench-key"
    async with server_role(
        "registry_emulator", cpu=LOAD_CPU, api_key=key, count=FIRST_START_ACCOUNTS,
        latency=latency,
    ) as emulator:  # fmt: skip
        emulator_url = f"http://127.0.0.1:{emulator.port}"
        env = {
            "STACKONE_CONNECT_API_KEY": key, "STACKONE_CONNECT_BASE_URL": emulator_url,
            "STACKONE_CONNECT_RECONCILE_INTERVAL": "300",
        }  # fmt: skip
        launched = time.time()
        async with serve(workdir, f"registry-first-start-{latency:g}", **env) as process:
            ready = time.time()
            waited = await run_role(
                "registry_wait", 90, admin=process.admin_url, target=process.grpc_target,
                emulator=emulator_url, give_up=60, poll=0.05,
            )  # fmt: skip
    pages = FIRST_START_ACCOUNTS / PAGE_SIZE
    per_second = _background_per_second()
    paced = pages / per_second
    complete_at = waited["complete_at"]
    seconds = complete_at - launched if complete_at is not None else None
    calls = waited["stackone_calls"]
    shown = seconds if seconds is not None else time.time() - launched
    complete = (
        seconds is not None and waited["listed"] == FIRST_START_ACCOUNTS
        and waited["answered_from"] == "READ_FROM_REGISTRY"
    )  # fmt: skip
    if latency:
        figure = f"same, StackOne answering in {latency:g} s (as the burst's)"
        target, met = "(context: 4 pages in flight)", None if complete else False
    else:
        figure = (
            f"first start against a StackOne of {FIRST_START_ACCOUNTS:,} accounts: serve "
            "launched -> registry complete (stackone_connect_registry_complete = 1)"
        )
        target, met = "<= 1.2x (as the burst's)", complete and shown <= 1.2 * paced
    return Row(
        f"registry: {figure}", shown, "s", f"pages ({pages:,.0f} of {PAGE_SIZE}) / background "
        f"budget ({per_second:.2f}/s), s", paced, shown / paced, target, met,
        (f"{complete_at - ready:.2f} s after ready" if complete_at is not None
         else "never complete within 60 s")
        + f"; a registry listing then answered from {waited['answered_from'] or '-'}: "
        f"{waited['listed']:,} accounts in {waited['pages']} pages; StackOne calls {calls}",
    )  # fmt: skip


async def _alternating(
    role: str, targets: tuple[str, str], rounds: int, timeout: float, **args: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Runs `role` against the service and the bare server (`targets`, both up) in turn,
    `rounds` times each, the first of each pair alternating: on a shared machine the load
    of others drifts, and both sides of every ratio then see the same drift."""
    results: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ([], [])
    for round_ in range(rounds):
        for side in (0, 1) if round_ % 2 == 0 else (1, 0):
            results[side].append(await run_role(role, timeout, target=targets[side], **args))
    return results


def _ratios(measured: list[dict[str, Any]], bare: list[dict[str, Any]], key: str) -> list[float]:
    return [ours[key] / theirs[key] for ours, theirs in zip(measured, bare, strict=True)]


def _differences(
    measured: list[dict[str, Any]], bare: list[dict[str, Any]], key: str
) -> list[float]:
    return [ours[key] - theirs[key] for ours, theirs in zip(measured, bare, strict=True)]


async def bench_registry(workdir: Path, seconds: float, runs: int) -> list[Row]:
    """Reads from the account registry (100,000 accounts) against bare grpc.aio methods
    answering the same bytes, in `runs` alternating rounds of `seconds / runs` each; the
    StackOne calls they make; a snapshot stream; and the time a first start takes to make
    the registry complete."""
    directory = workdir / "registry"
    directory.mkdir(exist_ok=True)
    owners = REGISTRY_ACCOUNTS // REGISTRY_PER_OWNER
    seeded = await _seed_registry(directory / "events.db", REGISTRY_ACCOUNTS, owners)
    step = REGISTRY_ACCOUNTS // REGISTRY_SAMPLES
    reads = {
        "numbers": list(range(0, REGISTRY_ACCOUNTS, step))[:REGISTRY_SAMPLES], "owners": owners,
        "concurrency": REGISTRY_IN_FLIGHT,
    }  # fmt: skip
    timed = {"seconds": seconds / runs, **reads}
    alone = {**timed, "seconds": seconds / runs / 2, "concurrency": 1}
    timeout = seconds + 30
    async with serve(workdir, "registry") as process:
        # The service's own answers, which the bare methods send back (the same bytes).
        sampled = await run_role(
            "registry_reads", timeout, target=process.grpc_target, method="mixed", calls=64,
            **reads,
        )  # fmt: skip
        samples = sampled["samples"]
        async with server_role(
            "bare_registry", get_account=samples["GetAccount"],
            list_accounts=samples["ListAccounts"], snapshot=REGISTRY_ACCOUNTS, owners=owners,
            per_message=SNAPSHOT_BATCH,
        ) as bare:  # fmt: skip
            targets = (process.grpc_target, f"127.0.0.1:{bare.port}")
            get, bare_get = await _alternating(
                "registry_reads", targets, runs, timeout, method="get_account", **timed
            )
            get_alone, bare_alone = await _alternating(
                "registry_reads", targets, runs, timeout, method="get_account", **alone
            )
            listing, bare_list = await _alternating(
                "registry_reads", targets, runs, timeout, method="list_accounts", **timed
            )
            snapshot, bare_snapshot = await _alternating(
                "snapshot_read", targets, runs, 120, per_message=SNAPSHOT_BATCH
            )
        counted = await run_role(
            "registry_reads", 120, target=process.grpc_target, method="mixed",
            calls=REGISTRY_READS, emulator=process.emulator_url, **reads,
        )  # fmt: skip
    first_start = [await _first_start(workdir, latency) for latency in (0.0, FIRST_START_LATENCY)]

    def median(results: list[dict[str, Any]], key: str) -> float:
        return _median([result[key] for result in results])

    def each(results: list[dict[str, Any]], key: str, unit: str, digits: int = 0) -> str:
        return _spread([result[key] for result in results], unit, digits)

    get_ratios = _ratios(get, bare_get, "rps")
    get_added = _differences(get, bare_get, "p50_ms")
    alone_added = _differences(get_alone, bare_alone, "p50_ms")
    list_ratios = _ratios(listing, bare_list, "rps")
    snapshot_ratios = _ratios(snapshot, bare_snapshot, "accounts_per_s")
    stackone_calls = sum(counted["stackone_calls"].values())
    snapshot_ok = all(result["accounts"] == REGISTRY_ACCOUNTS for result in snapshot)
    listed_ok = all(
        result["listed"] == REGISTRY_PER_OWNER and result["answered_from"] == "READ_FROM_REGISTRY"
        for result in listing
    )
    scene = f"{REGISTRY_ACCOUNTS:,} accounts, {REGISTRY_IN_FLIGHT} in flight"
    rounds = f"median of {runs} alternating rounds of {seconds / runs:g} s"
    sizes = (
        f"answers of {len(samples['GetAccount']) // 2} and {len(samples['ListAccounts']) // 2} "
        "bytes"
    )
    snapshot_rate = median(snapshot, "accounts_per_s")
    return [
        Row(
            f"registry: GetAccount(read_from=REGISTRY), {scene} ({rounds})",
            median(get, "rps"), "calls/s", "bare grpc.aio unary answering the same Account bytes",
            median(bare_get, "rps"), _median(get_ratios), ">= 0.7x", _median(get_ratios) >= 0.7,
            f"per round {each(get, 'rps', 'calls/s')}, bare "
            f"{each(bare_get, 'rps', 'calls/s')}, ratio "
            f"{_spread(get_ratios, 'x', 2)}; p99 {median(get, 'p99_ms'):.2f} ms, bare "
            f"{median(bare_get, 'p99_ms'):.2f} ms; {sizes}; log seeded in {seeded:.1f} s",
        ),
        Row(
            "registry: GetAccount p50 at the same load",
            median(get, "p50_ms"), "ms", "bare grpc.aio unary, p50 ms", median(bare_get, "p50_ms"),
            median(get, "p50_ms") / median(bare_get, "p50_ms"), "<= bare + 0.3 ms",
            _median(get_added) <= 0.3,
            f"added per round {_spread(get_added, 'ms', 3)}; one call at a time: p50 "
            f"{median(get_alone, 'p50_ms'):.3f} ms, bare {median(bare_alone, 'p50_ms'):.3f} ms, "
            f"added per round {_spread(alone_added, 'ms', 3)}",
        ),
        Row(
            f"registry: ListAccounts(read_from=REGISTRY) of one customer's "
            f"{REGISTRY_PER_OWNER} accounts, {scene} ({rounds})",
            median(listing, "rps"), "calls/s",
            "bare grpc.aio unary answering the same 10 accounts", median(bare_list, "rps"),
            _median(list_ratios), ">= 0.5x", _median(list_ratios) >= 0.5 and listed_ok,
            f"per round {each(listing, 'rps', 'calls/s')}, bare "
            f"{each(bare_list, 'rps', 'calls/s')}, ratio "
            f"{_spread(list_ratios, 'x', 2)}; p50 {median(listing, 'p50_ms'):.2f} ms, bare "
            f"{median(bare_list, 'p50_ms'):.2f} ms; {listing[0]['listed']} accounts a page, "
            f"answered from {listing[0]['answered_from']}",
        ),
        Row(
            f"registry: StackOne calls made by {counted['calls']:,} registry reads "
            "(GetAccount and ListAccounts alternately)",
            stackone_calls, "calls", "-", None, None, "0",
            stackone_calls == 0 and counted["calls"] == REGISTRY_READS,
            f"the emulator's count; {counted['rps']:,.0f} reads/s",
        ),
        Row(
            f"registry: StreamAccountEvents(from_snapshot) of {REGISTRY_ACCOUNTS:,} accounts, "
            f"{SNAPSHOT_BATCH} a message, until the bookmark that ends it (median of {runs})",
            snapshot_rate, "accounts/s", "bare grpc.aio stream of the same messages, accounts/s",
            median(bare_snapshot, "accounts_per_s"), _median(snapshot_ratios), ">= 100,000/s",
            snapshot_ok and snapshot_rate >= 100_000,
            f"{snapshot[0]['accounts']:,} accounts in {snapshot[0]['messages']} messages; "
            f"per run {each(snapshot, 'seconds', 's', 2)}, bare "
            f"{each(bare_snapshot, 'seconds', 's', 2)}",
        ),
        *first_start,
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
    "ingest", "verified_ingest", "durable_ingest", "create_session", "client_shares", "latency",
    "fan_out", "replay", "burst", "registry", "tracing", "client_watch",
)  # fmt: skip


async def main(seconds: float, replay_events: int, only: set[str], runs: int) -> dict[str, Any]:
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
        if "durable_ingest" in only:
            rows += await bench_durable_ingest(workdir, seconds, runs)
        if "create_session" in only:
            rows += await bench_create_session(workdir, seconds)
        if "client_shares" in only:
            rows += await bench_client_shares(workdir, seconds)
        if "latency" in only:
            rows += await bench_latency(workdir, seconds, 1000.0, LIVE_BATCH, 50.0, runs)
            rows += await bench_latency(workdir, seconds, 100.0, 1, 16.9, runs)
        if "fan_out" in only:
            rows += await bench_fan_out(workdir, runs)
        if "replay" in only:
            rows += await bench_replay(workdir, replay_events)
        if "burst" in only:
            rows += await bench_burst(workdir)
        if "registry" in only:
            rows += await bench_registry(workdir, seconds, runs)
        if "tracing" in only:
            rows += await bench_tracing(workdir, seconds, runs)
        if "client_watch" in only:
            rows.append(await bench_client_watch(workdir, replay_events, runs))
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
        "--runs",
        type=int,
        default=3,
        help="runs of each latency and fan-out scenario; alternating rounds of registry reads",
    )
    parser.add_argument(
        "--only", default=",".join(SCENARIOS), help=f"comma-separated, of: {', '.join(SCENARIOS)}"
    )
    options = parser.parse_args()
    chosen = set(options.only.split(","))
    if unknown := chosen - set(SCENARIOS):
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    results = asyncio.run(main(options.seconds, options.replay_events, chosen, options.runs))
    RESULTS.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(f"\nwritten to {RESULTS}")
