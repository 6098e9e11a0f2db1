"""The processes a benchmark run starts: baselines, an instant upstream, load generators.

Each role is `python -m tests.bench.roles ROLE [JSON ARGS]`; servers print `READY <port>`,
load generators print one JSON line of results.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import sqlite3
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import httpx
import orjson
import uvloop
from aiohttp import ClientSession, TCPConnector, web
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from gateway.signature import sign
from service.emulator import EMULATOR_STATE, EmulatorConfig, build_emulator_app
from service.emulator.accounts import new_account
from service.emulator.bodies import AccountSpec
from service.emulator.state import iso
from service.events.model import StoredEvent
from service.events.registry import RegisteredAccount
from service.rpc import wire
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from stackone_connect_client import Client
from tests.bench import durable, h2streams

SESSION_BODY = orjson.dumps(
    {"id": 1, "token": "cst_bench", "auth_link_url": "https://hub.example/connect?token=cst_bench",
     "origin_owner_id": "t", "origin_owner_name": "T", "created_at": "2026-11-24T14:02:11.406Z"}
)  # fmt: skip


def percentile(values: list[float], fraction: float) -> float:
    """The value below which `fraction` of `values` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def webhook_bodies(count: int, prefix: str) -> list[bytes]:
    """Distinct account.deleted bodies (recorded by the verifier with no StackOne look-up)."""
    return [
        orjson.dumps(
            {"event": "account.deleted", "account_id": f"{prefix}-{n}", "provider": "hibob"}
        )
        for n in range(count)
    ]


def updated_bodies(count: int, account_ids: list[str]) -> list[bytes]:
    """Distinct account.updated bodies cycling over `account_ids`: body `n` is for account
    `n % len(account_ids)`, made distinct by its `event_date` (n ms after now)."""
    now = datetime.now(UTC)
    return [
        orjson.dumps({
            "event": "account.updated", "account_id": account_ids[n % len(account_ids)],
            "provider": "hibob", "origin_owner_id": "bench-owner", "origin_owner_name": "Bench",
            "event_date": (now + timedelta(milliseconds=n)).isoformat(timespec="milliseconds"),
        })
        for n in range(count)
    ]  # fmt: skip


def prometheus_samples(text: str, names: list[str]) -> dict[str, float]:
    """The samples of the Prometheus exposition `text` whose name is one of `names`,
    keyed by name and labels as written (e.g. `x_total{outcome="verified"}`)."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key.partition("{")[0] in names:
            samples[key] = float(value)
    return samples


async def _start_app(app: web.Application) -> int:
    """Serves `app` on a free loopback port (until the process ends); returns the port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port: int = runner.addresses[0][1]
    return port


async def _serve_app(app: web.Application) -> None:
    print(f"READY {await _start_app(app)}", flush=True)
    await asyncio.Event().wait()


async def _serve_grpc(*handlers: grpc.GenericRpcHandler[Any, Any], also: str = "") -> None:
    """Serves `handlers`; prints `READY <port>` (then `also`, other ports to announce)."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(handlers)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"READY {port} {also}".rstrip(), flush=True)
    await server.wait_for_termination()


async def bare_http(_: dict[str, Any]) -> None:
    """Baseline: an aiohttp handler that reads the body and answers 204."""

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/webhooks/stackone", handler)
    await _serve_app(app)


async def instant_upstream(_: dict[str, Any]) -> None:
    """A StackOne that answers POST /connect_sessions at once with a fixed 201."""

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=201, body=SESSION_BODY, content_type="application/json")

    app = web.Application()
    app.router.add_post("/connect_sessions", handler)
    await _serve_app(app)


async def otlp_sink(_: dict[str, Any]) -> None:
    """A collector's intake: `POST /v1/traces` decodes each OTLP/HTTP export (as a
    collector does) and counts its spans; `GET /spans` answers the count."""
    spans = 0

    async def export(request: web.Request) -> web.Response:
        nonlocal spans
        exported = ExportTraceServiceRequest.FromString(await request.read())
        spans += sum(
            len(scope.spans)
            for resource in exported.resource_spans
            for scope in resource.scope_spans
        )
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    async def count(_: web.Request) -> web.Response:
        return web.json_response({"spans": spans})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", export)
    app.router.add_get("/spans", count)
    await _serve_app(app)


async def bare_grpc(args: dict[str, Any]) -> None:
    """Baseline: a grpc.aio server whose one unary method echoes the request bytes.

    With `upstream`, the method first makes the same httpx call CreateSession makes, so the
    ratio against it isolates what the service adds around that call.
    """
    upstream = httpx.AsyncClient(base_url=args["upstream"]) if args.get("upstream") else None

    async def echo(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        if upstream is not None:
            body = {"origin_owner_id": "t", "origin_owner_name": "T"}
            (await upstream.post("/connect_sessions", json=body)).json()
        return request

    handler = grpc.unary_unary_rpc_method_handler(echo)  # bytes in, bytes out
    await _serve_grpc(grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler}))


async def bare_stream(_: dict[str, Any]) -> None:
    """Baseline: `/bench.Stream/Flood` sends the requested number of 300-byte messages as
    fast as grpc.aio can (the ceiling of messages per second of one stream on this core).
    """
    payload = b"x" * 300

    async def flood(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        for _ in range(int(request)):
            yield payload

    handler = grpc.unary_stream_rpc_method_handler(flood)
    await _serve_grpc(grpc.method_handlers_generic_handler("bench.Stream", {"Flood": handler}))


class _Publications(asyncio.Protocol):
    """Events published to a bare_broadcast over TCP, each a 4-byte big-endian length and a
    serialized `AccountEvent`: all that arrived are taken at once, as the service's
    gateway takes all waiting webhooks, so publishing is never what holds the streams."""

    def __init__(self, on_events: Any) -> None:
        self._buffer = bytearray()
        self._on_events = on_events

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        events = []
        while len(self._buffer) >= 4:
            size = int.from_bytes(self._buffer[:4], "big")
            if len(self._buffer) < 4 + size:
                break
            events.append(bytes(self._buffer[4 : 4 + size]))
            del self._buffer[: 4 + size]
        if events:
            self._on_events(events)


async def bare_broadcast(_: dict[str, Any]) -> None:
    """Baseline fan-out: bare grpc.aio pushing each published event to every open stream.

    It serves StreamAccountEvents' method name (bytes in, bytes out), so the same
    `subscribers` role reads it: a bookmark first, then every event published, encoded
    once. Events come over a TCP port (see `_Publications`), or as the service's webhooks
    to `POST /webhooks/stackone` on an HTTP port, where a bare aiohttp handler makes the
    event of each (no signature check, nothing stored); the two ports are printed after
    the gRPC port, in that order.
    A stream that asked for `max_events_per_message` > 1 batches as the service does:
    whatever was published since its last message goes, up to that many, in one message.
    """
    attached = pb.StreamAccountEventsResponse(bookmark=pb.Bookmark(cursor="0")).SerializeToString()
    published: list[wire.EncodedEvent] = []
    wake = asyncio.Event()

    async def follow(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        per_message = pb.StreamAccountEventsRequest.FromString(request).max_events_per_message
        yield attached
        sent = len(published)
        while True:
            if sent == len(published):
                await wake.wait()
            ready, sent = published[sent:], len(published)
            if per_message <= 1:
                for event in ready:
                    yield event.single
                continue
            for start in range(0, len(ready), per_message):
                yield wire.batch_frame([event.item for event in ready[start : start + per_message]])

    def publish(events: list[bytes]) -> None:
        nonlocal wake
        published.extend(wire.EncodedEvent(event) for event in events)
        woken, wake = wake, asyncio.Event()
        woken.set()

    async def webhook(request: web.Request) -> web.Response:
        # What any webhook-to-stream relay does: read the body, make an event of it.
        account_id = orjson.loads(await request.read())["account_id"]
        publish([_broadcast_event(account_id, len(published) + 1).SerializeToString()])
        return web.Response(body=b'{"result":"accepted"}', content_type="application/json")

    loop = asyncio.get_running_loop()
    publications = await loop.create_server(lambda: _Publications(publish), "127.0.0.1", 0)
    intake = web.Application()
    intake.router.add_post("/webhooks/stackone", webhook)
    intake_port = await _start_app(intake)
    await _serve_grpc(
        grpc.method_handlers_generic_handler(
            "stackone_connect.v1.ConnectService",
            {"StreamAccountEvents": grpc.unary_stream_rpc_method_handler(follow)}),
        also=f"{publications.sockets[0].getsockname()[1]} {intake_port}",
    )  # fmt: skip


async def bare_replay(args: dict[str, Any]) -> None:
    """Baseline replay: bare grpc.aio sending, on StreamAccountEvents' method name, every
    event of the SQLite log at `db` in batches of `per_message`, framed by the service's own
    `wire` before serving (the same bytes a replay from the earliest sends, none of the
    reading), then staying open."""
    with contextlib.closing(sqlite3.connect(f"file:{args['db']}?mode=ro", uri=True)) as conn:
        rows = conn.execute(
            "SELECT cursor, event_id, type, account_id, provider, origin_owner_id,"
            " recorded_at, body FROM events ORDER BY cursor"
        ).fetchall()
    events = [StoredEvent(*row) for row in rows]
    frames = wire.event_frames(events, args["per_message"], wire.FrameCache())

    async def replay_all(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        for frame in frames:
            yield frame
        await asyncio.Event().wait()

    await _serve_grpc(grpc.method_handlers_generic_handler(SERVICE, {
        "StreamAccountEvents": grpc.unary_stream_rpc_method_handler(replay_all),
    }))  # fmt: skip


def _broadcast_event(account_id: str, cursor: int) -> pb.AccountEvent:
    """An event shaped like the service's recorded account.deleted (same fields, same size)."""
    event_id = hashlib.sha256(account_id.encode()).hexdigest()
    event = pb.AccountEvent(
        event_id=event_id, cursor=str(cursor), type="account.deleted",
        account=pb.Account(id=account_id, provider="hibob"),
        source=pb.EVENT_SOURCE_WEBHOOK, verification=pb.VERIFICATION_NOT_APPLICABLE,
        covered_event_ids=[event_id],
    )  # fmt: skip
    event.occurred_at.GetCurrentTime()
    event.received_at.GetCurrentTime()
    return event


async def paced_publish(args: dict[str, Any]) -> None:
    """Publishes `count` events to a bare_broadcast's TCP `port` at `rate` per second (ids
    as paced_post)."""
    _, writer = await asyncio.open_connection("127.0.0.1", args["port"])
    started = time.perf_counter()
    for n in range(args["count"]):
        await asyncio.sleep(max(0.0, started + n / args["rate"] - time.perf_counter()))
        event = _broadcast_event(f"{args['prefix']}-{time.time_ns()}-{n}", n + 1)
        payload = event.SerializeToString()
        writer.write(len(payload).to_bytes(4, "big") + payload)
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    print(orjson.dumps({"seconds": time.perf_counter() - started}).decode())


async def flood_read(args: dict[str, Any]) -> None:
    """Reads `count` messages from a bare_stream Flood; reports messages per second."""
    async with grpc.aio.insecure_channel(args["target"]) as channel:
        call = channel.unary_stream("/bench.Stream/Flood", None, None)(str(args["count"]).encode())
        seen = 0
        started = time.perf_counter()
        async for _ in call:
            seen += 1
        elapsed = time.perf_counter() - started
    print(orjson.dumps({"messages_per_s": seen / elapsed, "messages": seen}).decode())


async def http_load(args: dict[str, Any]) -> None:
    """Posts distinct signed webhooks from `concurrency` workers for `seconds`.

    account.deleted ones, or account.updated ones cycling over `account_ids` when given,
    or (`mix`) the two in turn.
    With `probe` ({"url", "samples"}), GETs that URL right after the measured period
    and reports the named Prometheus samples it answers.
    """
    if args.get("mix"):  # account.updated and account.deleted in turn
        half = args["count"] // 2
        updated = updated_bodies(half, args["account_ids"])
        pairs = zip(updated, webhook_bodies(half, args["prefix"]), strict=True)
        bodies = [body for pair in pairs for body in pair]
    elif args.get("account_ids"):
        bodies = updated_bodies(args["count"], args["account_ids"])
    else:
        bodies = webhook_bodies(args["count"], args["prefix"])
    signed = [(body, sign(args["secret"], body)) for body in bodies]
    statuses: dict[str, int] = {}
    next_index = 0
    deadline = time.perf_counter() + args["seconds"]
    connector = TCPConnector(limit=args["concurrency"])
    async with ClientSession(args["url"], connector=connector) as http:

        async def worker() -> None:
            nonlocal next_index
            while time.perf_counter() < deadline and next_index < len(signed):
                body, signature = signed[next_index]
                next_index += 1
                headers = {"content-type": "application/json", "x-stackone-signature": signature}
                async with http.post("/webhooks/stackone", data=body, headers=headers) as response:
                    await response.read()
                    statuses[str(response.status)] = statuses.get(str(response.status), 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args["concurrency"])))
        elapsed = time.perf_counter() - started
        probed: dict[str, float] = {}
        if probe := args.get("probe"):
            async with http.get(probe["url"]) as response:
                probed = prometheus_samples(await response.text(), probe["samples"])
    done = sum(statuses.values())
    print(orjson.dumps({
        "rps": done / elapsed, "requests": done, "statuses": statuses, "probe": probed,
    }).decode())  # fmt: skip


async def paced_post(args: dict[str, Any]) -> None:
    """Posts `count` signed webhooks at `rate` per second; each account id carries its send time.

    Each account id is `<prefix>-<send time in ns>-<n>`, so subscribers can measure how long
    the event took from the moment it was sent.
    """
    statuses: dict[str, int] = {}
    connector = TCPConnector(limit=0)
    async with ClientSession(args["url"], connector=connector) as http:

        async def post(n: int) -> None:
            account_id = f"{args['prefix']}-{time.time_ns()}-{n}"
            body = orjson.dumps(
                {"event": "account.deleted", "account_id": account_id, "provider": "hibob"}
            )
            headers = {
                "content-type": "application/json",
                "x-stackone-signature": sign(args["secret"], body),
            }
            async with http.post("/webhooks/stackone", data=body, headers=headers) as response:
                await response.read()
                statuses[str(response.status)] = statuses.get(str(response.status), 0) + 1

        started = time.perf_counter()
        sends = []
        for n in range(args["count"]):
            await asyncio.sleep(max(0.0, started + n / args["rate"] - time.perf_counter()))
            sends.append(asyncio.create_task(post(n)))
        await asyncio.gather(*sends)
    print(orjson.dumps({"statuses": statuses, "seconds": time.perf_counter() - started}).decode())


async def grpc_load(args: dict[str, Any]) -> None:
    """Unary calls from `concurrency` callers for `seconds` (CreateSession or the echo)."""
    latencies: list[float] = []
    deadline = time.perf_counter() + args["seconds"]
    async with grpc.aio.insecure_channel(args["target"]) as channel:
        if args["method"] == "echo":
            call = channel.unary_unary("/bench.Echo/Echo", None, None)
            payload: Any = pb.CreateSessionRequest(
                origin_owner_id="t", origin_owner_name="T"
            ).SerializeToString()
        else:
            call = pb_grpc.ConnectServiceStub(channel).CreateSession
            payload = pb.CreateSessionRequest(origin_owner_id="t", origin_owner_name="T")

        async def caller() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                await call(payload)
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(args["concurrency"])))
        elapsed = time.perf_counter() - started
    print(orjson.dumps({
        "rps": len(latencies) / elapsed, "calls": len(latencies),
        "p50_ms": percentile(latencies, 0.5) * 1e3, "p99_ms": percentile(latencies, 0.99) * 1e3,
    }).decode())  # fmt: skip


async def httpx_latency(args: dict[str, Any]) -> None:
    """Baseline latency: sequential direct httpx calls to the instant upstream."""
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=args["url"]) as http:
        body = {"origin_owner_id": "t", "origin_owner_name": "T"}
        for _ in range(args["calls"]):
            started = time.perf_counter()
            (await http.post("/connect_sessions", json=body)).json()
            latencies.append(time.perf_counter() - started)
    print(orjson.dumps({"p50_ms": percentile(latencies, 0.5) * 1e3}).decode())


async def client_shares(args: dict[str, Any]) -> None:
    """Two clients of one service for `seconds`: a quiet one calling CreateSession
    `quiet_rate` times a second (a person waiting on a Hub), and a noisy one (a batch job,
    refused past its own calls per minute) calling `noisy_rate` times a second, or
    flooding with `noisy_concurrency` calls in flight (neither: the quiet one alone).
    Reports each one's outcomes and latencies."""
    outcomes: dict[str, Counter[str]] = {"quiet": Counter(), "noisy": Counter()}
    latencies: dict[str, list[float]] = {"quiet": [], "noisy": []}
    request = pb.CreateSessionRequest(origin_owner_id="t", origin_owner_name="T")
    async with grpc.aio.insecure_channel(args["target"]) as channel:
        create = pb_grpc.ConnectServiceStub(channel).CreateSession

        async def call(who: str) -> None:
            metadata = (("authorization", f"Bearer {args[who + '_token']}"),)
            started = time.perf_counter()
            try:
                await create(request, metadata=metadata, timeout=10)
                outcomes[who]["OK"] += 1
            except grpc.aio.AioRpcError as error:
                outcomes[who][error.code().name] += 1
            latencies[who].append(time.perf_counter() - started)

        async def flood() -> None:
            while time.perf_counter() < deadline:
                await call("noisy")

        async def paced(who: str, rate: float) -> None:
            first, calls = time.perf_counter(), []
            while rate and time.perf_counter() < deadline:
                calls.append(asyncio.create_task(call(who)))
                await asyncio.sleep(first + len(calls) / rate - time.perf_counter())
            await asyncio.gather(*calls)

        # Connected and warm first (channel, the service's upstream pool), not timed.
        quiet_metadata = (("authorization", f"Bearer {args['quiet_token']}"),)
        await create(request, metadata=quiet_metadata, timeout=10)
        deadline = time.perf_counter() + args["seconds"]
        await asyncio.gather(
            paced("quiet", args["quiet_rate"]),
            paced("noisy", args["noisy_rate"]),
            *(flood() for _ in range(args["noisy_concurrency"])),
        )
    print(orjson.dumps({
        who: {
            "outcomes": outcomes[who], "calls": len(latencies[who]),
            "p50_ms": percentile(latencies[who], 0.5) * 1e3 if latencies[who] else None,
            "p99_ms": percentile(latencies[who], 0.99) * 1e3 if latencies[who] else None,
        }
        for who in outcomes
    }).decode())  # fmt: skip


STREAM_METHOD = "/stackone_connect.v1.ConnectService/StreamAccountEvents"
# The account ids the latency posters give events: `lat-<send time in ns>-<n>`.
_LATENCY_ID = re.compile(rb"lat-(\d+)-(\d+)")


async def subscribers(args: dict[str, Any]) -> None:
    """`count` streams asking for `per_message` events per message, over `channels`
    connections; reports each event's latency from its send time (its account id
    `lat-<send ns>-<n>`), the messages that carried events, and this process's CPU.

    Read with `tests.bench.h2streams` (a few µs a message, where a grpc client spends
    ~25) and the ids found by a regular expression, not by parsing messages: what is
    measured is when each message reached this process.
    """
    request = pb.StreamAccountEventsRequest(max_events_per_message=args.get("per_message", 0))
    count, events = args["count"], args["events"]
    latencies_us: list[int] = []
    numbers: list[int] = []
    seen: list[set[int]] = [set() for _ in range(count)]
    attached = [False] * count
    state = {"attached": 0, "done": 0, "messages": 0, "duplicates": 0}
    started: list[float] = []  # wall and CPU time at the first event
    all_attached, all_done = asyncio.Event(), asyncio.Event()

    def on_message(index: int, message: bytes, now: int) -> None:
        if not attached[index]:  # the first message, a bookmark
            attached[index] = True
            state["attached"] += 1
            if state["attached"] == count:
                all_attached.set()
            return
        found = _LATENCY_ID.findall(message)
        if not found:
            return
        if not started:
            started.extend((time.perf_counter(), time.process_time()))
        state["messages"] += 1
        received = seen[index]
        before = len(received)
        for sent, number in found:
            latencies_us.append((now - int(sent)) // 1000)
            numbers.append(int(number))
            received.add(int(number))
        state["duplicates"] += before + len(found) - len(received)
        if before < events <= len(received):
            state["done"] += 1
            if state["done"] == count:
                all_done.set()

    def shifted(offset: int) -> h2streams.OnMessage:
        return lambda index, message, now: on_message(offset + index, message, now)

    connections: list[h2streams.StreamingCalls] = []
    for index in range(args["channels"]):
        share = count // args["channels"] + (index < count % args["channels"])
        offset = sum(call.count for call in connections)
        connections.append(await h2streams.open_calls(
            args["target"], STREAM_METHOD, request.SerializeToString(), share, shifted(offset)
        ))  # fmt: skip
    await asyncio.wait_for(all_attached.wait(), 60)
    print("READY 0", flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_done.wait(), timeout=args["timeout"])
    wall, cpu = started or (time.perf_counter(), time.process_time())
    busy = (time.process_time() - cpu) / max(1e-9, time.perf_counter() - wall)
    for connection in connections:
        connection.close()
    print(orjson.dumps({
        "latencies_us": latencies_us, "numbers": numbers, "messages": state["messages"],
        "incomplete": count - state["done"], "duplicates": state["duplicates"], "cpu": busy,
    }).decode())  # fmt: skip


async def read_from_earliest(target: str, count: int, per_message: int) -> tuple[int, float]:
    """Reads `count` events from the earliest, `per_message` a message at most; returns
    the events read and the seconds it took."""
    request = pb.StreamAccountEventsRequest(max_events_per_message=per_message)
    request.from_earliest.SetInParent()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ConnectServiceStub(channel)
        seen = 0
        started = time.perf_counter()
        async for item in stub.StreamAccountEvents(request):
            seen += 1 if item.HasField("event") else len(item.events.events)
            if seen >= count:
                break
        return seen, time.perf_counter() - started


async def replay(args: dict[str, Any]) -> None:
    """Reads `count` events from the earliest, in batches; reports events per second."""
    seen, elapsed = await read_from_earliest(args["target"], args["count"], args["per_message"])
    print(orjson.dumps({"events_per_s": seen / elapsed, "events": seen}).decode())


async def bare_watch(args: dict[str, Any]) -> None:
    """Reads `count` events from the earliest with grpc.aio alone, keeping each event's
    cursor (what any reader that resumes must do); reports events per second."""
    request = pb.StreamAccountEventsRequest(max_events_per_message=args["per_message"])
    request.from_earliest.SetInParent()
    async with grpc.aio.insecure_channel(args["target"]) as channel:
        stub = pb_grpc.ConnectServiceStub(channel)
        seen, cursor = 0, ""
        started = time.perf_counter()
        async for item in stub.StreamAccountEvents(request):
            for event in item.events.events if item.HasField("events") else (item.event,):
                cursor = event.cursor
                seen += 1
            if seen >= args["count"]:
                break
        _print_watched(seen, cursor, started)


async def client_watch(args: dict[str, Any]) -> None:
    """The same read with the client library's `watch` (which keeps each cursor itself)."""
    async with Client.connect(args["target"]) as client:
        watch = client.watch(start="earliest", max_events_per_message=args["per_message"])
        seen, cursor = 0, ""
        started = time.perf_counter()
        async for item in watch:
            if isinstance(item, pb.AccountEvent):
                cursor = item.cursor
                seen += 1
                if seen >= args["count"]:
                    break
        _print_watched(seen, cursor, started)


def _print_watched(seen: int, cursor: str, started: float) -> None:
    """Reports a watch's pace: events per second since `started`, and the last cursor."""
    elapsed = time.perf_counter() - started
    print(orjson.dumps({"events_per_s": seen / elapsed, "events": seen, "last": cursor}).decode())


async def seed_accounts(args: dict[str, Any]) -> None:
    """Switches the emulator's webhook delivery off, then creates `count` accounts in it
    (emulator-only calls: not counted, not rate limited); reports their ids in order."""
    async with ClientSession(args["emulator"]) as http:
        async with http.put("/emulator/webhooks", json={"enabled": False}) as response:
            response.raise_for_status()
        ids: list[str] = [""] * args["count"]
        next_index = 0

        async def creator() -> None:
            nonlocal next_index
            while next_index < len(ids):
                n, next_index = next_index, next_index + 1
                spec = {"provider": "hibob", "origin_owner_id": "bench-owner",
                        "origin_owner_name": "Bench"}  # fmt: skip
                async with http.post("/emulator/accounts", json=spec) as response:
                    response.raise_for_status()
                    ids[n] = (await response.json())["id"]

        await asyncio.gather(*(creator() for _ in range(16)))
    print(orjson.dumps({"ids": ids}).decode())


class _Coverage:
    """What the subscriber of a burst has seen: which accepted webhooks are covered by an
    event, and whether each account's last event is verified."""

    def __init__(self, accounts: list[str]) -> None:
        self.accounts = set(accounts)
        self.accepted: set[str] = set()  # event ids the gateway answered 2xx
        self.covered: set[str] = set()  # event ids listed by an event on the stream
        self.uncovered: set[str] = set()  # accepted and not yet covered
        self.verified: set[str] = set()  # accounts whose last event is VERIFIED
        self.events: Counter[str] = Counter()  # events by verification
        self.reasons: Counter[str] = Counter()  # verification_error of unverified events
        self.most_folded = 0
        self.stream_error = ""
        self.posting_done = False
        self.finished = asyncio.Event()
        self.finished_at = 0.0

    def on_accepted(self, event_id: str) -> None:
        self.accepted.add(event_id)
        if event_id not in self.covered:
            self.uncovered.add(event_id)

    def on_event(self, event: pb.AccountEvent) -> None:
        ids = {event.event_id, *event.covered_event_ids}
        self.covered |= ids
        self.uncovered -= ids
        self.most_folded = max(self.most_folded, len(event.covered_event_ids))
        self.events[pb.Verification.Name(event.verification)] += 1
        if event.verification == pb.VERIFICATION_VERIFIED:
            self.verified.add(event.account.id)
        else:
            self.verified.discard(event.account.id)
            self.reasons[event.verification_error[:80]] += 1

    def check(self) -> None:
        done = self.posting_done and not self.uncovered and self.verified >= self.accounts
        if done and not self.finished.is_set():
            self.finished_at = time.perf_counter()
            self.finished.set()


async def burst(args: dict[str, Any]) -> None:
    """A burst of signed account.updated webhooks for existing accounts (`per_account` for
    each of `account_ids`, interleaved: webhook n is for account n % len(account_ids)),
    `concurrency` in flight, while one subscriber (from now, batched) watches them being
    covered and verified, and a caller does CreateSession every `session_interval` seconds.

    Reports the webhooks' answer times, the callers' outcomes, the seconds from the first
    webhook sent until every accepted webhook is covered by an event on the stream and
    every account's last event is VERIFIED (null if not within `give_up` seconds), and
    the emulator's stats.
    """
    ids: list[str] = args["account_ids"]
    bodies = updated_bodies(len(ids) * args["per_account"], ids)
    signed = [(body, sign(args["secret"], body)) for body in bodies]
    coverage = _Coverage(ids)
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    results: Counter[str] = Counter()
    sessions: Counter[str] = Counter()
    session_latencies: list[float] = []
    connector = TCPConnector(limit=args["concurrency"])
    async with (
        ClientSession(args["url"], connector=connector) as http,
        ClientSession(args["emulator"]) as emulator,
        grpc.aio.insecure_channel(args["target"]) as channel,
    ):
        stub = pb_grpc.ConnectServiceStub(channel)
        request = pb.StreamAccountEventsRequest(max_events_per_message=256)
        request.from_now.SetInParent()
        stream = stub.StreamAccountEvents(request)
        attached = asyncio.Event()

        async def follow() -> None:
            try:
                async for item in stream:
                    attached.set()  # by the first message, a bookmark
                    if item.HasField("event"):
                        coverage.on_event(item.event)
                    for event in item.events.events:
                        coverage.on_event(event)
                    coverage.check()
            except grpc.aio.AioRpcError as error:  # reported: the figures stop there
                coverage.stream_error = f"{error.code().name}: {error.details()}"

        async def create_session() -> None:
            started = time.perf_counter()
            session = pb.CreateSessionRequest(origin_owner_id="t", origin_owner_name="T")
            try:
                await stub.CreateSession(session, timeout=10)
                sessions["OK"] += 1
            except grpc.aio.AioRpcError as error:
                sessions[error.code().name] += 1
            session_latencies.append(time.perf_counter() - started)

        async def caller(stop: asyncio.Event) -> None:
            calls: list[asyncio.Task[None]] = []
            while not stop.is_set():
                calls.append(asyncio.create_task(create_session()))
                wake_at = first + len(calls) * args["session_interval"]
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, wake_at - time.perf_counter())):
                        await stop.wait()
            await asyncio.gather(*calls)

        next_index = 0

        async def poster() -> None:
            nonlocal next_index
            while next_index < len(signed):
                body, signature = signed[next_index]
                next_index += 1
                headers = {"content-type": "application/json", "x-stackone-signature": signature}
                started = time.perf_counter()
                async with http.post("/webhooks/stackone", data=body, headers=headers) as response:
                    answer = await response.read()
                latencies.append(time.perf_counter() - started)
                statuses[str(response.status)] += 1
                if response.status == 200:
                    parsed = orjson.loads(answer)
                    results[parsed["result"]] += 1
                    coverage.on_accepted(parsed["event_id"])

        reader = asyncio.create_task(follow())
        async with asyncio.timeout(30):
            await attached.wait()
        stop = asyncio.Event()
        first = time.perf_counter()
        callers = asyncio.create_task(caller(stop))
        await asyncio.gather(*(poster() for _ in range(args["concurrency"])))
        posted = time.perf_counter() - first
        coverage.posting_done = True
        coverage.check()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, first + args["give_up"] - time.perf_counter())):
                await coverage.finished.wait()
        waited = time.perf_counter() - first
        stop.set()
        await callers
        reader.cancel()
        stream.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        async with emulator.get("/emulator/stats") as response:
            stats = await response.json()
    finished = coverage.finished.is_set()
    print(orjson.dumps({
        "webhooks": len(signed), "statuses": statuses, "results": results,
        "p50_ms": percentile(latencies, 0.5) * 1e3, "p99_ms": percentile(latencies, 0.99) * 1e3,
        "max_ms": max(latencies, default=0.0) * 1e3, "posting_s": posted,
        "sessions": sessions, "session_attempts": sum(sessions.values()),
        "session_p99_ms": percentile(session_latencies, 0.99) * 1e3,
        "session_max_ms": max(session_latencies, default=0.0) * 1e3,
        "seconds": coverage.finished_at - first if finished else None, "waited_s": waited,
        "accepted": len(coverage.accepted), "covered": len(coverage.accepted & coverage.covered),
        "verified_accounts": len(coverage.verified & coverage.accounts),
        "events": coverage.events, "most_folded": coverage.most_folded,
        "unverified_reasons": dict(coverage.reasons.most_common(3)), "stats": stats,
        "stream_error": coverage.stream_error,
    }).decode())  # fmt: skip


# --- The account registry (`registry` scenario) ---------------------------------------
SERVICE = "stackone_connect.v1.ConnectService"
_PROVIDERS = ("hibob", "bamboohr", "workday", "greenhouse")
_ACCOUNT_ID_BASE = 48810347712093400000  # 20-digit ids, as StackOne's: sorted as numbers


def bench_account_id(n: int) -> str:
    """The id of registry account `n`."""
    return str(_ACCOUNT_ID_BASE + n)


def bench_owner(n: int, owners: int) -> str:
    """The owner of registry account `n` when `owners` customers share the accounts."""
    return f"customer-{n % owners:05d}"


def bench_account(n: int, owners: int) -> pb.Account:
    """Registry account `n`, shaped like a linked account's (every field StackOne fills)."""
    provider = _PROVIDERS[n % len(_PROVIDERS)]
    owner = bench_owner(n, owners)
    linked = 1_760_000_000 + n
    return pb.Account(
        id=bench_account_id(n), provider=provider, provider_name=provider.title(),
        origin_owner_id=owner, origin_owner_name=f"Customer {owner[-5:]}",
        origin_username=f"it-admin@{owner}.example.com", status=pb.ACCOUNT_STATUS_ACTIVE,
        raw_status="active", label=f"{provider.title()} production", type="production",
        created_at=Timestamp(seconds=linked), updated_at=Timestamp(seconds=linked + 3600),
    )  # fmt: skip


async def bare_registry(args: dict[str, Any]) -> None:
    """Baseline registry reads: bare grpc.aio methods with the service's method names
    answering pre-built bytes. GetAccount and ListAccounts answer the `get_account` and
    `list_accounts` responses given (hex: the service's own answers, so the same size);
    StreamAccountEvents sends `snapshot` accounts (`bench_account`, encoded and batched by
    the service's `wire.account_frames`, all built before serving) then the bookmark that
    ends a snapshot, and stays open."""
    get_account = bytes.fromhex(args["get_account"])
    list_accounts = bytes.fromhex(args["list_accounts"])
    owners, count = args["owners"], args["snapshot"]
    frames = wire.account_frames(
        [RegisteredAccount(bench_account_id(n), n + 1, False,
                           bench_account(n, owners).SerializeToString()) for n in range(count)],
        args["per_message"],
    )  # fmt: skip

    async def get(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return get_account

    async def listing(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return list_accounts

    async def snapshot(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        for frame in frames:
            yield frame
        yield wire.bookmark_frame(str(len(frames)), initial_state_end=True)
        await asyncio.Event().wait()

    await _serve_grpc(grpc.method_handlers_generic_handler(SERVICE, {
        "GetAccount": grpc.unary_unary_rpc_method_handler(get),
        "ListAccounts": grpc.unary_unary_rpc_method_handler(listing),
        "StreamAccountEvents": grpc.unary_stream_rpc_method_handler(snapshot),
    }))  # fmt: skip


def _registry_requests(args: dict[str, Any]) -> list[tuple[str, bytes]]:
    """The (method, serialized request) pairs `registry_reads` cycles through: GetAccount of
    each of `numbers`, ListAccounts of each of `owners` (as `bench_account` assigns them),
    or both alternately (`method` "mixed"), all from the registry."""
    gets = [
        ("GetAccount", pb.GetAccountRequest(
            account_id=bench_account_id(n), read_from=pb.READ_FROM_REGISTRY
        ).SerializeToString())
        for n in args["numbers"]
    ]  # fmt: skip
    lists = [
        ("ListAccounts", pb.ListAccountsRequest(
            origin_owner_ids=[bench_owner(n, args["owners"])], read_from=pb.READ_FROM_REGISTRY
        ).SerializeToString())
        for n in args["numbers"]
    ]  # fmt: skip
    if args["method"] == "get_account":
        return gets
    if args["method"] == "list_accounts":
        return lists
    return [pair for both in zip(gets, lists, strict=True) for pair in both]


async def _emulator_calls(http: ClientSession | None) -> dict[str, int]:
    if http is None:
        return {}
    async with http.get("/emulator/stats") as response:
        response.raise_for_status()
        calls: dict[str, int] = (await response.json())["calls"]
    return calls


async def registry_reads(args: dict[str, Any]) -> None:
    """Registry reads (see `_registry_requests`) from `concurrency` callers, for `seconds`
    or until `calls` were made; bytes in and out, so that the service and the bare
    methods cost this client the same. Reports calls/s and latencies, the first answer of
    each method (hex) with what it held, and, given an `emulator`, the StackOne calls the
    emulator counted meanwhile."""
    requests = _registry_requests(args)
    latencies: list[float] = []
    samples: dict[str, bytes] = {}
    limit = args.get("calls") or 1 << 62
    deadline = time.perf_counter() + (args.get("seconds") or 1e9)
    emulator = ClientSession(args["emulator"]) if args.get("emulator") else None
    try:
        calls_before = await _emulator_calls(emulator)
        async with grpc.aio.insecure_channel(args["target"]) as channel:
            methods = {
                name: channel.unary_unary(f"/{SERVICE}/{name}", None, None)
                for name in ("GetAccount", "ListAccounts")
            }
            made = 0

            async def caller() -> None:
                nonlocal made
                while made < limit and time.perf_counter() < deadline:
                    name, request = requests[made % len(requests)]
                    made += 1
                    started = time.perf_counter()
                    answer = await methods[name](request)
                    latencies.append(time.perf_counter() - started)
                    samples.setdefault(name, answer)

            started = time.perf_counter()
            await asyncio.gather(*(caller() for _ in range(args["concurrency"])))
            elapsed = time.perf_counter() - started
        calls_after = await _emulator_calls(emulator)
    finally:
        if emulator is not None:
            await emulator.close()
    listed = pb.ListAccountsResponse.FromString(samples.get("ListAccounts", b""))
    print(orjson.dumps({
        "rps": len(latencies) / elapsed, "calls": len(latencies),
        "p50_ms": percentile(latencies, 0.5) * 1e3, "p99_ms": percentile(latencies, 0.99) * 1e3,
        "samples": {name: answer.hex() for name, answer in samples.items()},
        "listed": len(listed.accounts),
        "answered_from": pb.ReadFrom.Name(listed.answered_from),
        "stackone_calls": {
            route: count - calls_before.get(route, 0)
            for route, count in calls_after.items() if count > calls_before.get(route, 0)
        },
    }).decode())  # fmt: skip


async def snapshot_read(args: dict[str, Any]) -> None:
    """A `from_snapshot` stream (`per_message` accounts a message) read until the bookmark
    that ends the initial state; reports accounts per second and the end's cursor."""
    request = pb.StreamAccountEventsRequest(max_events_per_message=args["per_message"])
    request.from_snapshot.SetInParent()
    accounts = messages = 0
    end = ""
    async with grpc.aio.insecure_channel(args["target"]) as channel:
        stream = pb_grpc.ConnectServiceStub(channel).StreamAccountEvents(request)
        started = time.perf_counter()
        async for item in stream:
            messages += 1
            if item.HasField("account"):
                accounts += 1
            elif item.HasField("accounts"):
                accounts += len(item.accounts.accounts)
            elif item.HasField("bookmark") and item.bookmark.initial_state_end:
                end = item.bookmark.cursor
                break
        elapsed = time.perf_counter() - started
        stream.cancel()
    print(orjson.dumps({
        "accounts": accounts, "messages": messages, "seconds": elapsed,
        "accounts_per_s": accounts / elapsed, "end_cursor": end,
    }).decode())  # fmt: skip


async def registry_emulator(args: dict[str, Any]) -> None:
    """A StackOne emulator (accepting `api_key`, answering after `latency` s) holding
    `count` accounts linked a day ago (before any reconciliation grace), with no webhook
    delivery: the StackOne a first start lists."""
    config = EmulatorConfig(api_key=args["api_key"], latency=args.get("latency", 0.0))
    app = build_emulator_app(config)
    state = app[EMULATOR_STATE]
    linked = iso(datetime.now(UTC) - timedelta(days=1))
    for n in range(args["count"]):
        owner = bench_owner(n, max(1, args["count"] // 10))
        spec = AccountSpec(provider=_PROVIDERS[n % len(_PROVIDERS)], origin_owner_id=owner,
                           origin_owner_name=owner.title())  # fmt: skip
        account = new_account(state, spec)
        account.created_at = account.updated_at = linked
    await _serve_app(app)


async def registry_wait(args: dict[str, Any]) -> None:
    """Polls the service's `stackone_connect_registry_complete` every `poll` s (the
    metric, not an RPC: a registry read that falls back would call StackOne) until it is
    1 or `give_up` seconds pass; reports the wall-clock time it turned 1, then what a registry
    listing answers (pages of 100) and the StackOne calls the emulator counted."""
    name = "stackone_connect_registry_complete"
    complete_at = None
    polls = 0
    async with ClientSession(args["admin"]) as admin, ClientSession(args["emulator"]) as emulator:
        ends = time.perf_counter() + args["give_up"]
        while time.perf_counter() < ends:
            polls += 1
            async with admin.get("/metrics") as response:
                text = await response.text()
            if prometheus_samples(text, [name]).get(name) == 1.0:
                complete_at = time.time()
                break
            await asyncio.sleep(args["poll"])
        calls = await _emulator_calls(emulator)
    listed, pages, answered_from, token = 0, 0, "", ""
    async with grpc.aio.insecure_channel(args["target"]) as channel:
        stub = pb_grpc.ConnectServiceStub(channel)
        while complete_at is not None:
            page = await stub.ListAccounts(pb.ListAccountsRequest(
                read_from=pb.READ_FROM_REGISTRY, page_size=100, page_token=token
            ))  # fmt: skip
            answered_from = answered_from or pb.ReadFrom.Name(page.answered_from)
            listed, pages, token = listed + len(page.accounts), pages + 1, page.next_page_token
            if not token or page.answered_from != pb.READ_FROM_REGISTRY:
                break
    print(orjson.dumps({
        "complete_at": complete_at, "polls": polls, "listed": listed, "pages": pages,
        "answered_from": answered_from, "stackone_calls": calls,
    }).decode())  # fmt: skip


ROLES = {
    "bare_http": bare_http, "instant_upstream": instant_upstream, "bare_grpc": bare_grpc,
    "http_load": http_load, "paced_post": paced_post, "grpc_load": grpc_load,
    "httpx_latency": httpx_latency, "subscribers": subscribers, "replay": replay,
    "client_shares": client_shares,
    "bare_stream": bare_stream, "flood_read": flood_read, "bare_replay": bare_replay,
    "bare_broadcast": bare_broadcast, "paced_publish": paced_publish,
    "seed_accounts": seed_accounts, "burst": burst, "bare_registry": bare_registry,
    "registry_reads": registry_reads, "snapshot_read": snapshot_read,
    "registry_emulator": registry_emulator, "registry_wait": registry_wait,
    "otlp_sink": otlp_sink, "bare_watch": bare_watch, "client_watch": client_watch,
    **durable.ROLES,
}  # fmt: skip

if __name__ == "__main__":
    if cpu := os.environ.get("BENCH_CPU"):
        os.sched_setaffinity(0, {int(cpu)})
    arguments = orjson.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    uvloop.run(ROLES[sys.argv[1]](arguments))
