"""Every gRPC input has a bound, checked before work proportional to it, and past it the
caller gets a small INVALID_ARGUMENT naming the field (`service.rpc.limits`)."""

from __future__ import annotations

import base64
import gc
import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, urlencode

import grpc
import httpx
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from service.events.model import EventRecord
from service.rpc import limits
from service.rpc.methods import CONNECT_METHODS
from service.rpc.server import SERVICE_NAME
from service.runtime import Runtime
from service.stackone.client import MAX_REQUEST_TARGET_BYTES, list_target_bytes
from service.stackone.models import AccountListQuery
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.processes import serve_env, serve_process
from tests.harness.streams import next_item
from tests.harness.support import WEBHOOK_SECRET, loop_lag_counts, trailer_bytes

pytestmark = pytest.mark.asyncio

MILLION_EMPTY = [""] * 1_000_000  # 2 MB on the wire: a key byte and a zero length each
REQUEST_NAMES = {m.name: m.request.DESCRIPTOR.full_name for m in CONNECT_METHODS}


def status_of(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The `google.rpc.Status` an error carries in its trailers."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "the error carries google.rpc details"
    return status


def violations_of(error: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    """(field, description) of every BadRequest field violation of an INVALID_ARGUMENT."""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    found = []
    for detail in status_of(error).details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            found += [(v.field, v.description) for v in bad_request.field_violations]
    return found


async def refusal(call: Any) -> grpc.aio.AioRpcError:
    """The error a unary call or a stream's first read ends with."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await (call.read() if isinstance(call, grpc.aio.UnaryStreamCall) else call)
    return caught.value


def raw_call(channel: grpc.aio.Channel, method: str, raw: bytes) -> Any:
    """A call of `method` sending `raw` as its request bytes."""
    path = f"/{SERVICE_NAME}/{method}"
    if method == "StreamAccountEvents":
        return channel.unary_stream(path, request_serializer=None, response_deserializer=None)(raw)
    return channel.unary_unary(path, request_serializer=None, response_deserializer=None)(raw)


def call_with(stub: pb_grpc.ConnectServiceAsyncStub, method: str, **fields: Any) -> Any:
    """A call of `method` with a request holding `fields`."""
    requests = {
        "CreateSession": pb.CreateSessionRequest,
        "GetAccount": pb.GetAccountRequest,
        "DeleteAccount": pb.DeleteAccountRequest,
        "ListAccounts": pb.ListAccountsRequest,
        "StreamAccountEvents": pb.StreamAccountEventsRequest,
    }
    if method == "CreateSession":
        fields = {"origin_owner_id": "o", "origin_owner_name": "O"} | fields
    return getattr(stub, method)(requests[method](**fields))


REPEATED_FIELDS = [
    ("ListAccounts", "origin_owner_ids", "owner"),
    ("ListAccounts", "providers", "hibob"),
    ("ListAccounts", "account_ids", "1"),
    ("ListAccounts", "statuses", "active"),
    ("StreamAccountEvents", "providers", "hibob"),
    ("StreamAccountEvents", "origin_owner_ids", "owner"),
    ("StreamAccountEvents", "account_ids", "1"),
    ("StreamAccountEvents", "event_types", "account.created"),
    ("CreateSession", "categories", "hris"),
]


@pytest.mark.parametrize(("method", "name", "valid"), REPEATED_FIELDS)
async def test_a_repeated_field_over_its_count_is_refused_by_count_alone(
    stub: pb_grpc.ConnectServiceAsyncStub, method: str, name: str, valid: str
) -> None:
    """One value over the bound: one violation naming the field and the count, and not one
    per value (so the values themselves were not looked at)."""
    limit = limits.MAX_CATEGORIES if name == "categories" else limits.MAX_FILTER_VALUES
    error = await refusal(call_with(stub, method, **{name: [""] * (limit + 1)}))
    assert violations_of(error) == [(name, f"must have at most {limit} values (got {limit + 1})")]
    within = call_with(stub, method, **{name: [valid] * limit})
    if method == "StreamAccountEvents":
        assert (await next_item(within)).HasField("bookmark")
        within.cancel()
    else:
        await within


STRING_FIELDS = [
    ("CreateSession", "origin_owner_id"),
    ("CreateSession", "origin_owner_name"),
    ("CreateSession", "origin_username"),
    ("CreateSession", "account_id"),
    ("CreateSession", "label"),
    ("GetAccount", "account_id"),
    ("DeleteAccount", "account_id"),
]


@pytest.mark.parametrize(("method", "name"), STRING_FIELDS)
async def test_a_string_over_its_length_is_refused_naming_the_field(
    stub: pb_grpc.ConnectServiceAsyncStub, method: str, name: str
) -> None:
    """A string one character too long (in any script) is INVALID_ARGUMENT naming it."""
    too_long = "é" * (limits.MAX_TEXT_CHARS + 1)
    error = await refusal(call_with(stub, method, **{name: too_long}))
    assert violations_of(error) == [
        (name, f"must be at most {limits.MAX_TEXT_CHARS} characters (got 256)")
    ]


async def test_a_huge_string_is_not_echoed_back(stub: pb_grpc.ConnectServiceAsyncStub) -> None:
    """A 60 kB provider and a 500 kB filter value come back as a short quote, not whole."""
    for call in (
        call_with(stub, "CreateSession", provider="X" * 60_000),
        call_with(stub, "ListAccounts", providers=["X" * 500_000]),
    ):
        error = await refusal(call)
        (violation,) = violations_of(error)
        assert violation[0] in {"provider", "providers[0]"}
        assert len(status_of(error).SerializeToString()) < 1000


def nested(depth: int) -> struct_pb2.Struct:
    """Metadata whose innermost key is `depth` levels deep."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"n": value}
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


async def test_metadata_is_bounded_in_size_and_depth_and_must_be_json(
    stub: pb_grpc.ConnectServiceAsyncStub,
) -> None:
    """Metadata over 16 KiB, nested deeper than 8, or holding NaN: refused, naming where."""
    big = struct_pb2.Struct()
    big.update({"blob": "x" * limits.MAX_METADATA_BYTES})
    not_a_number = struct_pb2.Struct()
    not_a_number.update({"a": {"b": [1, float("nan")]}})
    not_finite = "must be a finite number (JSON has no NaN or Infinity)"
    cases = [
        (big, [("metadata", f"must be at most 16384 bytes (got {big.ByteSize()})")]),
        (nested(9), [("metadata" + ".n" * 8, "nests deeper than 8 levels")]),
        (not_a_number, [("metadata.a.b[1]", not_finite)]),
    ]
    for metadata, expected in cases:
        error = await refusal(call_with(stub, "CreateSession", metadata=metadata))
        assert violations_of(error) == expected
    session = await call_with(stub, "CreateSession", metadata=nested(8))
    assert session.token


@pytest.mark.parametrize("method", sorted(REQUEST_NAMES))
async def test_a_request_over_its_size_is_refused_before_parsing(
    service: Runtime, method: str
) -> None:
    """A request over its method's bound (empty strings: quick to send, slow to parse) is
    INVALID_ARGUMENT saying so, unparsed."""
    limit = limits.MAX_REQUEST_BYTES_BY_METHOD.get(method, limits.MAX_REQUEST_BYTES)
    raw = b"\x0a\x00" * (limit // 2 + 1)
    async with grpc.aio.insecure_channel(service.grpc_target) as channel:
        error = await refusal(raw_call(channel, method, raw))
    size = f"the request is {limit + 2} bytes; a {REQUEST_NAMES[method]} is at most {limit}"
    assert violations_of(error) == [("", size)]


async def test_violations_past_ten_are_counted_not_listed(
    stub: pb_grpc.ConnectServiceAsyncStub,
) -> None:
    """400 bad values: the first ten violations, then one 'and 390 more'; small message."""
    error = await refusal(
        call_with(
            stub,
            "ListAccounts",
            origin_owner_ids=[""] * 100,
            providers=["BAD!"] * 100,
            account_ids=[" "] * 100,
            statuses=["nope"] * 100,
        )
    )
    violations = violations_of(error)
    assert [field for field, _ in violations[:10]] == [f"origin_owner_ids[{i}]" for i in range(10)]
    assert violations[10:] == [("", "and 390 more")]
    assert (error.details() or "").endswith("; and 390 more")
    assert len((error.details() or "").encode()) <= limits.MAX_ERROR_MESSAGE_BYTES


async def test_the_largest_error_stays_far_under_grpc_trailer_limits(
    stub: pb_grpc.ConnectServiceAsyncStub,
) -> None:
    """Violations with the longest field paths, or the longest quotes, in 4-byte characters:
    the status is at most 4 KiB and all trailers far under 8 KiB."""
    key = "\U0001d518" * limits.MAX_TEXT_CHARS  # 4 bytes of UTF-8 each
    metadata = struct_pb2.Struct()
    metadata.update({key: {key: [float("nan")] * 20}})
    for fields in ({"metadata": metadata}, {"categories": [key] * limits.MAX_CATEGORIES}):
        error = await refusal(call_with(stub, "CreateSession", **fields))
        assert len(violations_of(error)) == 11
        assert len((error.details() or "").encode()) <= limits.MAX_ERROR_MESSAGE_BYTES
        assert len(status_of(error).SerializeToString()) <= limits.MAX_ERROR_STATUS_BYTES
        assert trailer_bytes(error.details(), error.trailing_metadata()) <= 8 << 10


ARABIC_INDIC_123, SUPERSCRIPT_2, FULLWIDTH_1 = "\u0661\u0662\u0663", "\u00b2", "\uff11"


@pytest.mark.parametrize(
    "cursor",
    [ARABIC_INDIC_123, SUPERSCRIPT_2, FULLWIDTH_1, "-1", "+1", "1 ", str(2**63), "9" * 5000],
)
async def test_cursors_are_ascii_digits_within_range(
    stub: pb_grpc.ConnectServiceAsyncStub, cursor: str
) -> None:
    """Other scripts' digits, signs, spaces and numbers past 2^63-1 are not cursors."""
    error = await refusal(call_with(stub, "StreamAccountEvents", after_cursor=cursor))
    assert violations_of(error) == [("after_cursor", "is not a cursor from an event or a bookmark")]


@pytest.mark.parametrize(
    "number", [ARABIC_INDIC_123, SUPERSCRIPT_2, FULLWIDTH_1, "9" * 5000, "1" * 11]
)
async def test_page_tokens_hold_ascii_page_numbers_only(
    stub: pb_grpc.ConnectServiceAsyncStub, number: str
) -> None:
    """A page token made up of another script's digits or a huge number is refused."""
    token = base64.urlsafe_b64encode(f"page:{number}".encode()).decode().rstrip("=")
    for page_token in (token, ARABIC_INDIC_123 * 3):
        error = await refusal(call_with(stub, "ListAccounts", page_token=page_token))
        assert violations_of(error) == [
            ("page_token", "is not a next_page_token this service returned")
        ]


@pytest.mark.parametrize("account_id", [".", ".."])
async def test_dot_segments_are_not_account_ids(
    stub: pb_grpc.ConnectServiceAsyncStub, account_id: str
) -> None:
    """'.' and '..' would survive percent-encoding and change StackOne's path."""
    for method in ("GetAccount", "DeleteAccount"):
        error = await refusal(call_with(stub, method, account_id=account_id))
        assert violations_of(error) == [("account_id", f"'{account_id}' is not an account id")]


async def test_bytes_that_are_not_the_request_are_invalid_argument_without_an_error_log(
    service: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage or cut-short request bytes: INVALID_ARGUMENT for every RPC, no ERROR line."""
    cut = pb.ListAccountsRequest(account_ids=["12345"]).SerializeToString()[:-2]
    async with grpc.aio.insecure_channel(service.grpc_target) as channel:
        for method, name in REQUEST_NAMES.items():
            for raw in (b"\xff\xff\xff", cut):
                error = await refusal(raw_call(channel, method, raw))
                assert violations_of(error) == [
                    ("", f"the request bytes are not a valid {name} message")
                ]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_refused_request_is_freed_at_once(service: Runtime) -> None:
    """A refused request (up to 512 KiB parsed into ~10 MB of message) is not kept alive by
    its error's traceback until the garbage collector happens to find the cycle."""
    raw = pb.ListAccountsRequest(account_ids=[""] * 200_000).SerializeToString()
    gc.collect()
    gc.disable()  # so that only reference counting frees anything
    try:
        async with grpc.aio.insecure_channel(service.grpc_target) as channel:
            error = await refusal(raw_call(channel, "ListAccounts", raw))
        alive = [o for o in gc.get_objects() if isinstance(o, pb.ListAccountsRequest)]
    finally:
        gc.enable()
    assert violations_of(error) == [("account_ids", "must have at most 100 values (got 200000)")]
    assert alive == []


@pytest.mark.slow
async def test_the_two_megabyte_request_is_refused_at_once_in_a_small_status(
    tmp_path: Path,
) -> None:
    """A million empty filter values (2 MB) to ListAccounts and StreamAccountEvents of a
    real `serve`: INVALID_ARGUMENT within 1 s, unparsed (it took ~6 s and 1.5 GB), a small
    status, the process barely grows, its loop never lags 100 ms, no ERROR line."""
    async with serve_process(serve_env(tmp_path, WEBHOOK_SECRET)) as serve:
        async with (
            grpc.aio.insecure_channel(serve.grpc_target) as channel,
            httpx.AsyncClient(base_url=serve.admin_url) as http,
        ):
            stub = pb_grpc.ConnectServiceStub(channel)
            rss_before = serve.rss_kib()
            for method in ("ListAccounts", "StreamAccountEvents", "ListAccounts"):
                started = time.monotonic()
                error = await refusal(call_with(stub, method, account_ids=MILLION_EMPTY))
                assert time.monotonic() - started < 1.0
                size = f"the request is 2000000 bytes; a {REQUEST_NAMES[method]} is at most 524288"
                assert violations_of(error) == [("", size)]
                assert len(status_of(error).SerializeToString()) < 300
            assert serve.rss_kib() - rss_before < 50 << 10
            measured, lagging = loop_lag_counts((await http.get("/metrics")).text, 0.1)
        assert measured > 0
        assert lagging == 0
        await serve.stop()
    assert [line for line in serve.log_lines if line.get("level") == "ERROR"] == []


async def test_event_batches_are_bounded_by_bytes(service: Runtime) -> None:
    """Sixteen 300 kB events and one of 1.5 MiB, asked for 1000 per message: batches of at
    most 1 MiB (the big event alone), all within a default client's 4 MiB limit, in order."""
    sizes = [300_000] * 8 + [1_500_000] + [300_000] * 8
    records = []
    for number, size in enumerate(sizes):
        account = pb.Account(id=f"acct-{number}", provider="hibob", label="x" * size)
        body = pb.AccountEvent(event_id=f"evt-{number}", type="account.updated", account=account)
        records.append(
            EventRecord(f"evt-{number}", "account.updated", f"acct-{number}", "hibob", "o",
                        body.SerializeToString(), "active", f"2026-01-01T00:00:{number:02}Z")
        )  # fmt: skip
    await service.event_log.append(records)
    request = pb.StreamAccountEventsRequest(max_events_per_message=1000)
    request.from_earliest.SetInParent()
    async with grpc.aio.insecure_channel(service.grpc_target) as channel:
        stream = pb_grpc.ConnectServiceStub(channel).StreamAccountEvents(request)
        batches: list[list[str]] = []
        while sum(map(len, batches)) < len(sizes):
            item = await next_item(stream)
            if item.HasField("events"):
                if len(item.events.events) > 1:
                    assert item.ByteSize() <= limits.MAX_BATCH_BYTES + 16
                batches.append([event.event_id for event in item.events.events])
        stream.cancel()
    assert [event_id for batch in batches for event_id in batch] == [
        f"evt-{n}" for n in range(len(sizes))
    ]
    assert ["evt-8"] in batches
    assert len(batches) == 7  # 3 + 3 + 2, the big one, 3 + 3 + 2


def list_target(**filters: list[str]) -> int:
    """Bytes of the `GET /accounts` request target a first page of `filters` takes,
    encoded as a form (UTF-8, then %XX), independently of the client's own encoder."""
    query = [("page", "0"), ("page_size", str(limits.DEFAULT_PAGE_SIZE))]
    query += [(name, value) for name, values in filters.items() for value in values]
    return len("/accounts?" + urlencode(query))


def ids_filling(room: int) -> list[str]:
    """Account ids that, as `&account_ids=…`, take exactly `room` bytes (300 or more):
    two of 255 'é' (6 bytes each once encoded) if there is room, then ASCII ones."""
    ids: list[str] = []
    while room > 300:
        value = "é" * 255 if room > 2000 and len(ids) < 2 else "x" * 200
        ids.append(value)
        room -= 13 + len(quote_plus(value))
    if room > 268:  # too much for one value of 255 characters
        ids.append("x" * (room - 27))
        room = 14
    assert room >= 14, "too little room for a value"
    return [*ids, "x" * (room - 13)]


# Worst cases within the documented bounds (100 values of 255 characters): each value
# of 255 two-, three- or four-byte characters takes 1,530 to 3,060 bytes once encoded.
FILTERS_AT_THEIR_BOUNDS = [
    ({"account_ids": ["é" * 255] * 100}, "account_ids"),
    ({"account_ids": ["😀" * 255] * 100}, "account_ids"),
    ({"origin_owner_ids": ["中" * 255] * 100, "account_ids": ["é" * 255] * 5}, "origin_owner_ids"),
    ({"providers": ["p" * 64] * 100, "statuses": ["inactive"] * 100}, "providers"),
]


@pytest.mark.parametrize(("filters", "named"), FILTERS_AT_THEIR_BOUNDS)
async def test_list_filters_at_their_bounds_are_refused_naming_the_field_not_internal(
    stub: pb_grpc.ConnectServiceAsyncStub,
    emulator_http: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    filters: dict[str, list[str]],
    named: str,
) -> None:
    """Filters too long for StackOne's URL once encoded: INVALID_ARGUMENT naming the field
    taking most room (it was INTERNAL past httpx's 64 KiB), before any StackOne call."""
    error = await refusal(call_with(stub, "ListAccounts", **filters))
    [(field, description)] = violations_of(error)
    assert field == named
    assert f"at most {MAX_REQUEST_TARGET_BYTES}" in description
    requests = (await emulator_http.get("/emulator/requests")).json()
    assert [r for r in requests if r["path"] == "/accounts"] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_list_query_reaches_stackone_up_to_its_url_limit_and_not_a_byte_past(
    stub: pb_grpc.ConnectServiceAsyncStub, emulator_http: httpx.AsyncClient
) -> None:
    """A query of exactly MAX_REQUEST_TARGET_BYTES (8,000, what RFC 9110 asks every party
    to take) is sent and answered by StackOne's emulator; one byte more is refused."""
    created = await emulator_http.post("/emulator/accounts", json={"origin_owner_id": "o"})
    account_id = created.json()["id"]
    room = MAX_REQUEST_TARGET_BYTES - list_target(account_ids=[account_id])
    ids = [account_id, *ids_filling(room)]
    assert list_target(account_ids=ids) == MAX_REQUEST_TARGET_BYTES
    listed = await call_with(stub, "ListAccounts", account_ids=ids)
    assert [account.id for account in listed.accounts] == [account_id]
    sent = [r for r in (await emulator_http.get("/emulator/requests")).json()
            if r["path"] == "/accounts"]  # fmt: skip
    assert [value for key, value in sent[-1]["query"] if key == "account_ids"] == ids
    ids[-1] += "x"
    error = await refusal(call_with(stub, "ListAccounts", account_ids=ids))
    assert [field for field, _ in violations_of(error)] == ["account_ids"]


@pytest.mark.parametrize("method", ["GetAccount", "DeleteAccount"])
async def test_an_account_id_at_its_bound_in_four_byte_characters_reaches_stackone(
    stub: pb_grpc.ConnectServiceAsyncStub, method: str
) -> None:
    """255 four-byte characters are 3,070 bytes of path: StackOne answers (404), well
    within the URL limit, so account ids need no bound beyond their 255 characters."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call_with(stub, method, account_id="😀" * 255)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value.details()


ODD_VALUES = ["a b+c~d*e!f'(g)h", "%20/?#&=;,", "é😀中\t\n\x00", "_.-~" * 3, "1" * 255]


@pytest.mark.parametrize("value", ODD_VALUES)
async def test_the_url_length_counted_is_the_one_httpx_sends(value: str) -> None:
    """The list query's size is counted without encoding it, as httpx would encode it."""
    query = AccountListQuery(
        page=12, page_size=100, origin_owner_ids=[value, value], providers=["a.b-c_d"],
        account_ids=[value], statuses=["active", "error"],
    )  # fmt: skip
    sent = httpx.Request("GET", "https://api.stackone.com/accounts", params=tuple(query.params()))
    assert list_target_bytes(query) == len(sent.url.raw_path)
