"""Property-based fuzzing of the real gRPC server: whatever a caller sends to any
ConnectService RPC, the answer is never INTERNAL or UNKNOWN (nor a deadline passing), an
error stays small, the server logs no error, and no call makes its event loop lag 100 ms.

The server is the real `serve` in a process of its own (on the bundled emulator), so the
lag it reports is its own and not this process's building of huge requests. The default
run throws a few hundred generated calls; `make fuzz` (`--fuzz`) throws 10,000.

A client scoped to some owners (`acme-*`, `globex`) throws generated calls too, aimed at
accounts and events of its owners and of others: no answer carries another owner's
account, session or event, and no other owner's account is deleted.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import httpx
import orjson
import pytest
from google.protobuf import struct_pb2
from google.protobuf.empty_pb2 import Empty
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from service.metrics import LOOP_LAG_TICK
from service.rpc.methods import CONNECT_METHODS
from service.rpc.server import SERVICE_NAME
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.processes import ServeProcess, serve_env, serve_process
from tests.harness.support import in_a_thread, loop_lag_counts, trailer_bytes

MAX_LAG = 0.1
# A loop that measures every LOOP_LAG_TICK has a new sample well within this.
SAMPLE_WITHIN = 30.0
LAG_ATTEMPTS = 3
CALL_TIMEOUT = 10.0
# grpc refuses trailers past 8 KiB (soft) or 16 KiB; an error must stay far under.
MAX_TRAILER_BYTES = 8 << 10
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}
ALL_SCOPES = ["sessions:create", "accounts:read", "accounts:write", "events:read"]
ADMIN = "fuzz-admin-token-0123456789"
SCOPED = "fuzz-scoped-token-0123456789"
SCOPED_OWNERS = ["acme-*", "globex"]
SEEDED_OWNERS = ["acme-1", "acme-2", "globex", "initech", "acme", "globex-2", "acme-"]


def scoped_allows(owner: str) -> bool:
    """Whether the scoped client acts for `owner`."""
    return owner == "globex" or owner.startswith("acme-")  # 'acme-' too: '*' may be empty


@dataclass
class Server:
    """A `serve` process run from a thread's own loop, and sync clients of it."""

    process: ServeProcess
    channel: grpc.Channel
    http: httpx.Client
    accounts: dict[str, str]  # seeded owner -> account id
    latest: int  # the cursor of the last seeded event

    def call(self, method: str, raw: bytes, token: str = ADMIN) -> grpc.Call | None:
        """Sends `raw` as the request of `method`; the failed call, if it failed. A stream
        is read up to its first message (a valid one starts with a bookmark), then cancelled."""
        path = f"/{SERVICE_NAME}/{method}"
        metadata = (("authorization", f"Bearer {token}"),)
        try:
            if method == "StreamAccountEvents":
                stream = self.channel.unary_stream(path, None, None)(
                    raw, timeout=CALL_TIMEOUT, metadata=metadata
                )
                next(iter(stream))
                stream.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leave it untyped
            elif method == "ConsumeSubscription":  # one message sent, the first answer read
                consumer = self.channel.stream_stream(path, None, None)(
                    iter([raw]), timeout=CALL_TIMEOUT, metadata=metadata
                )
                next(iter(consumer), None)
                consumer.cancel()  # type: ignore[no-untyped-call]
            else:
                self.channel.unary_unary(path, None, None)(
                    raw, timeout=CALL_TIMEOUT, metadata=metadata
                )
        except grpc.RpcError as error:
            return cast("grpc.Call", error)  # grpc raises the failed call itself
        return None

    def scoped_answers(self, method: str, request: Any) -> tuple[list[Any], grpc.Call | None]:
        """The scoped client's call: its answers (a stream's up to the seeded events'
        latest cursor) and the failed call, if it failed."""
        stub = pb_grpc.ConnectServiceStub(self.channel)
        metadata = (("authorization", f"Bearer {SCOPED}"),)
        answers: list[Any] = []
        try:
            if method != "StreamAccountEvents":
                call = getattr(stub, method)
                answers.append(call(request, timeout=CALL_TIMEOUT, metadata=metadata))
                return answers, None
            stream = stub.StreamAccountEvents(request, timeout=CALL_TIMEOUT, metadata=metadata)
            for item in stream:
                answers.append(item)
                if item.HasField("bookmark") and int(item.bookmark.cursor) >= self.latest:
                    break
            stream.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leave it untyped
        except grpc.RpcError as error:
            return answers, cast("grpc.Call", error)
        return answers, None

    def loop_lag(self) -> tuple[int, int]:
        """Lag measurements the server made so far, and how many exceeded `MAX_LAG`."""
        return loop_lag_counts(self.http.get("/metrics").text, MAX_LAG)

    def loop_lag_after(self, measured: int) -> tuple[int, int]:
        """`loop_lag` once the server has made two measurements past `measured`: the
        second began after the first was recorded, so after whatever ran before it (a
        call that blocked the loop is in the counts by then, not still being timed)."""
        deadline = time.monotonic() + SAMPLE_WITHIN
        while (counts := self.loop_lag())[0] < measured + 2:
            assert time.monotonic() < deadline, "the server stopped measuring its loop's lag"
            time.sleep(LOOP_LAG_TICK)
        return counts

    def errors_logged(self) -> list[dict[str, object]]:
        """The server's log lines at ERROR or above."""
        return [
            line for line in self.process.log_lines if line.get("level") in {"ERROR", "CRITICAL"}
        ]


def _clients_file(folder: Path) -> Path:
    clients = [
        {"name": "fuzz-admin", "token": ADMIN, "scopes": ALL_SCOPES},
        {"name": "fuzz-scoped", "token": SCOPED, "scopes": ALL_SCOPES, "owners": SCOPED_OWNERS},
    ]
    path = folder / "clients.json"
    path.write_bytes(orjson.dumps({"clients": clients}))
    return path


def _seeded(channel: grpc.Channel, emulator: httpx.Client) -> tuple[dict[str, str], int]:
    """An account of each of `SEEDED_OWNERS`, once the log holds their events; the
    accounts by owner and the latest cursor."""
    accounts = {}
    for owner in SEEDED_OWNERS:
        spec = {"provider": "hibob", "origin_owner_id": owner, "origin_owner_name": owner}
        accounts[owner] = str(emulator.post("/emulator/accounts", json=spec).json()["id"])
    stub = pb_grpc.ConnectServiceStub(channel)
    request = pb.StreamAccountEventsRequest(from_earliest=Empty())
    metadata = (("authorization", f"Bearer {ADMIN}"),)
    missing = set(accounts.values())
    for item in stub.StreamAccountEvents(request, timeout=30, metadata=metadata):
        if item.HasField("event"):
            missing.discard(item.event.account.id)
            if not missing:
                return accounts, int(item.event.cursor)
    raise AssertionError("the seeded accounts' events never came")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real `serve`, running until the module's tests are done, with an admin client
    and a client scoped to some owners, and an account of each of `SEEDED_OWNERS`."""
    folder = tmp_path_factory.mktemp("grpc-fuzz")
    env = serve_env(
        folder,
        "whsec-fuzz-0123456789",
        # Thousands of calls reach the emulator; the rate budget is not under test here.
        STACKONE_CONNECT_RATE_LIMIT="100000000",
        STACKONE_CONNECT_CLIENTS_FILE=str(_clients_file(folder)),
    )

    @asynccontextmanager
    async def stopped_gracefully() -> AsyncIterator[ServeProcess]:
        async with serve_process(env) as process:
            yield process
            await process.stop()

    with (
        in_a_thread(stopped_gracefully, what="serve", start_within=60) as (process, _),
        grpc.insecure_channel(process.grpc_target) as channel,
        httpx.Client(base_url=process.admin_url, timeout=10) as http,
        httpx.Client(base_url=process.emulator_url, timeout=10) as emulator,
    ):
        accounts, latest = _seeded(channel, emulator)
        yield Server(process, channel, http, accounts, latest)


odd_texts = st.one_of(
    st.text(max_size=20),
    # Long odd text, cheap to generate (every drawn character costs hypothesis a choice).
    st.text(min_size=1, max_size=8).map(lambda text: (text * 300)[: 250 + len(text)]),
    st.sampled_from(
        ["", " ", "\x00", "\n", ".", "..", "/", "%2F", "\u202e", "ﬀ", "١٢٣", "²", "a" * 255]
    ),
    st.integers(256, 3000).map(lambda n: "x" * n),  # huger ones: `with_a_huge_field`
)
numeric_texts = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.text(st.characters(categories=["Nd", "No"]), min_size=1, max_size=25),
    st.sampled_from(["", " 1", "1 ", "+1", "-0", "1e3", "0x10", "1_0", "9" * 19, "9" * 20]),
    st.sampled_from([str(2**63 - 1), str(2**63)]),
    # Digits str.isdigit() takes: Arabic-Indic, fullwidth, superscript, circled, bold.
    st.lists(st.sampled_from("\u0661\uff11\u00b2\u2463\U0001d7d9"), min_size=1, max_size=4).map(
        "".join
    ),
    st.integers(0, 5000).map(lambda n: "9" * n),
)
page_tokens = odd_texts | numeric_texts.map(
    lambda n: base64.urlsafe_b64encode(f"page:{n}".encode()).decode().rstrip("=")
)
int32s = st.integers(-(2**31), 2**31 - 1)


def repeated(values: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    """Lists of odd values, or of one value around the bound of 100 (much longer ones:
    `with_a_huge_field`)."""
    return st.lists(values, max_size=20) | st.tuples(
        st.integers(0, 300), st.sampled_from(["", "x", "hibob", "account.created"])
    ).map(lambda count_value: [count_value[1]] * count_value[0])


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.floats()  # NaN and infinities included: JSON has neither
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=30,
)


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        value = {"n": value}
    return value


metadatas = st.one_of(
    st.dictionaries(st.text(max_size=300), json_values, max_size=6),
    st.integers(1, 30).map(_nested),  # (deeper: `deeply_nested_session`)
    st.integers(0, 5000).map(lambda n: {str(i): "v" * 8 for i in range(n)}),
)


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


sessions = st.builds(
    pb.CreateSessionRequest,
    origin_owner_id=odd_texts,
    origin_owner_name=odd_texts,
    origin_username=odd_texts,
    provider=odd_texts | st.sampled_from(["hibob", "bamboohr"]),
    categories=repeated(odd_texts | st.sampled_from(["hris", "ats"])),
    expires_in=int32s,
    account_id=odd_texts,
    label=odd_texts,
    metadata=metadatas.map(_struct),
    multiple=st.booleans(),
)
account_requests = st.builds(pb.GetAccountRequest, account_id=odd_texts)
deletions = st.builds(pb.DeleteAccountRequest, account_id=odd_texts)
listings = st.builds(
    pb.ListAccountsRequest,
    origin_owner_ids=repeated(odd_texts),
    providers=repeated(odd_texts),
    account_ids=repeated(odd_texts),
    statuses=repeated(odd_texts | st.sampled_from(["active", "error"])),
    page_size=int32s,
    page_token=page_tokens,
)


@st.composite
def stream_requests(draw: st.DrawFn) -> pb.StreamAccountEventsRequest:
    """Filters, any start position (odd cursors included) and batch size."""
    request = pb.StreamAccountEventsRequest(
        providers=draw(repeated(odd_texts)),
        origin_owner_ids=draw(repeated(odd_texts)),
        account_ids=draw(repeated(odd_texts)),
        event_types=draw(repeated(odd_texts | st.just("account.created"))),
        max_events_per_message=draw(st.integers(0, 2**32 - 1)),
    )
    start = draw(st.sampled_from(["none", "from_now", "from_earliest", "after_cursor"]))
    if start == "after_cursor":
        request.after_cursor = draw(numeric_texts)
    elif start != "none":
        getattr(request, start).SetInParent()
    return request


uint32s = st.integers(0, 2**32 - 1)
session_requests = st.builds(pb.GetSessionRequest, session_id=odd_texts)
profile_listings = st.builds(
    pb.ListConnectorProfilesRequest,
    connector_key=odd_texts,
    page_size=int32s,
    page_token=page_tokens,
)
subscription_names = odd_texts | st.sampled_from(["billing-sync", "a", "-", "x" * 200])


@st.composite
def subscription_creations(draw: st.DrawFn) -> pb.CreateSubscriptionRequest:
    """A subscription's filters, deadlines and any start (odd cursors included)."""
    request = pb.CreateSubscriptionRequest(
        subscription=pb.Subscription(
            name=draw(subscription_names),
            providers=draw(repeated(odd_texts)),
            origin_owner_ids=draw(repeated(odd_texts)),
            account_ids=draw(repeated(odd_texts)),
            event_types=draw(repeated(odd_texts | st.just("account.created"))),
            ack_deadline_seconds=draw(uint32s),
            max_deliveries=draw(uint32s),
        )
    )
    start = draw(st.sampled_from(["none", "from_now", "from_earliest", "after_cursor"]))
    if start == "after_cursor":
        request.start.after_cursor = draw(numeric_texts)
    elif start != "none":
        getattr(request.start, start).SetInParent()
    return request


@st.composite
def seeks(draw: st.DrawFn) -> pb.SeekSubscriptionRequest:
    """A seek to an odd cursor or any time."""
    request = pb.SeekSubscriptionRequest(name=draw(subscription_names))
    if draw(st.booleans()):
        request.after_cursor = draw(numeric_texts)
    else:
        request.time.seconds = draw(st.integers(-(2**40), 2**40))
        request.time.nanos = draw(st.integers(-(2**31), 2**31 - 1))
    return request


@st.composite
def consumptions(draw: st.DrawFn) -> pb.ConsumeSubscriptionRequest:
    """A consumer's first message: an attach, or an ack or nack out of turn."""
    kind = draw(st.sampled_from(["attach", "ack", "nack"]))
    if kind == "attach":
        attach = pb.ConsumeAttach(name=draw(subscription_names), max_outstanding=draw(uint32s))
        return pb.ConsumeSubscriptionRequest(attach=attach)
    if kind == "ack":
        return pb.ConsumeSubscriptionRequest(ack=pb.ConsumeAck(delivery_id=draw(odd_texts)))
    delay = draw(st.floats(allow_nan=True, allow_infinity=True))
    nack = pb.ConsumeNack(delivery_id=draw(odd_texts), delay_seconds=delay)
    return pb.ConsumeSubscriptionRequest(nack=nack)


REQUESTS: dict[str, st.SearchStrategy[Any]] = {
    "CreateSession": sessions,
    "GetAccount": account_requests,
    "ListAccounts": listings,
    "DeleteAccount": deletions,
    "StreamAccountEvents": stream_requests(),
    "GetSession": session_requests,
    "ListConnectorProfiles": profile_listings,
    "CreateSubscription": subscription_creations(),
    "GetSubscription": st.builds(pb.GetSubscriptionRequest, name=subscription_names),
    "ListSubscriptions": st.just(pb.ListSubscriptionsRequest()),
    "UpdateSubscription": st.builds(
        pb.UpdateSubscriptionRequest,
        name=subscription_names,
        ack_deadline_seconds=uint32s,
        max_deliveries=uint32s,
        redrive_parked=st.booleans(),
    ),
    "DeleteSubscription": st.builds(pb.DeleteSubscriptionRequest, name=subscription_names),
    "SeekSubscription": seeks(),
    "ConsumeSubscription": consumptions(),
}


@st.composite
def mangled(draw: st.DrawFn, requests: st.SearchStrategy[Any]) -> bytes:
    """A valid request's bytes cut short or with a byte changed."""
    raw: bytes = draw(requests).SerializeToString()[:1000]
    if not raw:
        return b"\x0a"
    at = draw(st.integers(0, len(raw) - 1))
    if draw(st.booleans()):
        return raw[:at]
    return raw[:at] + bytes([draw(st.integers(0, 255))]) + raw[at + 1 :]


def _length_delimited(number: int, payload: bytes) -> bytes:
    def varint(value: int) -> bytes:
        out = bytearray()
        while value > 0x7F:
            out.append(value & 0x7F | 0x80)
            value >>= 7
        return bytes([*out, value])

    return varint(number << 3 | 2) + varint(len(payload)) + payload


def deeply_nested_session(depth: int) -> bytes:
    """A CreateSessionRequest whose metadata nests `depth` Structs (protobuf's own parser
    refuses more than 100, so such a message can only be built as bytes)."""
    struct = b""
    for _ in range(depth):
        value = _length_delimited(5, struct)  # Value.struct_value
        struct = _length_delimited(1, _length_delimited(1, b"n") + _length_delimited(2, value))
    owner = pb.CreateSessionRequest(origin_owner_id="o", origin_owner_name="O")
    return owner.SerializeToString() + _length_delimited(9, struct)


@st.composite
def with_a_huge_field(draw: st.DrawFn, requests: st.SearchStrategy[Any]) -> bytes:
    """A generated request with one string field up to a million characters long, or one
    repeated string field up to a million values long (2 MB of empty strings)."""
    request = draw(requests)
    strings = [f for f in request.DESCRIPTOR.fields if f.type == f.TYPE_STRING]
    size = draw(st.sampled_from([101, 10_000, 300_000, 1_000_000]) | st.integers(0, 1_000_000))
    if not strings:  # strings only in nested messages: a huge field of a number unknown
        return bytes(request.SerializeToString()) + _length_delimited(1000, b"x" * size)
    field = draw(st.sampled_from(strings))
    if field.is_repeated:
        getattr(request, field.name)[:] = [draw(st.sampled_from(["", "x"]))] * size
    else:
        setattr(request, field.name, "x" * size)
    raw: bytes = request.SerializeToString()
    return raw


@st.composite
def calls(draw: st.DrawFn) -> tuple[str, bytes]:
    """A method and the request bytes to send it: a generated message, one with a huge
    field, random bytes, a mangled message, or deeply nested metadata."""
    method = draw(st.sampled_from(sorted(REQUESTS)))
    kind = draw(st.sampled_from(["message"] * 4 + ["huge", "random", "mangled", "deep"]))
    if kind == "huge":
        return method, draw(with_a_huge_field(REQUESTS[method]))
    if kind == "deep":
        return "CreateSession", deeply_nested_session(draw(st.integers(1, 200)))
    if kind == "random":
        return method, draw(st.binary(max_size=300))
    if kind == "mangled":
        return method, draw(mangled(REQUESTS[method]))
    return method, draw(REQUESTS[method]).SerializeToString()


def check_one(server: Server, call: tuple[str, bytes]) -> None:
    """Makes one call and checks its outcome, and whether it made the server's event loop
    lag over `MAX_LAG`: a call that does makes it lag every time, while on a busy machine
    the scheduler sometimes does it alone, so a lag counts only if the call repeats it."""
    method, raw = call
    for _ in range(LAG_ATTEMPTS):
        measured, lagged_before = server.loop_lag_after(0)
        failed = server.call(method, raw)
        if failed is not None:
            assert failed.code() not in NEVER, f"{method}: {failed.code()}: {failed.details()}"
            size = trailer_bytes(failed.details(), failed.trailing_metadata())
            assert size <= MAX_TRAILER_BYTES, f"{method}: {size} bytes of trailers"
        if server.loop_lag_after(measured)[1] == lagged_before:
            break
    else:
        raise AssertionError(f"{method}: the server's event loop lagged over {MAX_LAG} s")


def test_every_rpc_is_fuzzed() -> None:
    """Every method of ConnectService has a request strategy here."""
    assert sorted(REQUESTS) == sorted(method.name for method in CONNECT_METHODS)


_FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _million_empty(message: type[Any], field: str) -> bytes:
    request: bytes = message(**{field: [""] * 1_000_000}).SerializeToString()
    return request


@settings(_FUZZ, max_examples=200)
@given(call=calls())
# The requests the bounds were built for, in every run whatever hypothesis draws.
@example(call=("ListAccounts", _million_empty(pb.ListAccountsRequest, "origin_owner_ids")))
@example(call=("StreamAccountEvents", _million_empty(pb.StreamAccountEventsRequest, "providers")))
@example(call=("CreateSession", _million_empty(pb.CreateSessionRequest, "categories")))
@example(call=("GetAccount", pb.GetAccountRequest(account_id="x" * 4_000_000).SerializeToString()))
def test_generated_calls_never_fail_internally_or_stall(
    server: Server, call: tuple[str, bytes]
) -> None:
    """A few hundred generated calls: no INTERNAL/UNKNOWN, small errors, no loop lag."""
    check_one(server, call)


@pytest.mark.fuzz
@pytest.mark.timeout(1800)
@settings(_FUZZ, max_examples=10_000)
@given(call=calls())
def test_ten_thousand_generated_calls(server: Server, call: tuple[str, bytes]) -> None:
    """The 10,000-call run behind `--fuzz` (`make fuzz`)."""
    check_one(server, call)


def test_the_fuzzed_server_logged_no_error(server: Server) -> None:
    """After the fuzzing, the server has not logged a single ERROR line."""
    assert server.loop_lag_after(0)[0] >= 2
    assert server.errors_logged() == []


# The scoped client's calls name seeded owners and accounts (as `@<owner>`) or odd ones.
seeded_owners = st.sampled_from(SEEDED_OWNERS) | odd_texts
seeded_accounts = st.sampled_from([f"@{owner}" for owner in SEEDED_OWNERS]) | odd_texts


@st.composite
def scoped_streams(draw: st.DrawFn) -> pb.StreamAccountEventsRequest:
    """Stream requests of every start mode, filters drawn among the seeded ones."""
    request = pb.StreamAccountEventsRequest(
        origin_owner_ids=draw(st.lists(seeded_owners, max_size=3)),
        account_ids=draw(st.lists(seeded_accounts, max_size=3)),
        max_events_per_message=draw(st.sampled_from([0, 1, 3, 100])),
    )
    start = draw(st.sampled_from(["from_now", "from_earliest", "from_snapshot", "after_cursor"]))
    if start == "after_cursor":
        request.after_cursor = draw(st.sampled_from(["0", "1", "2", "3"]) | numeric_texts)
    else:
        getattr(request, start).SetInParent()
    return request


SCOPED_REQUESTS: dict[str, st.SearchStrategy[Any]] = {
    "CreateSession": st.builds(
        pb.CreateSessionRequest,
        origin_owner_id=seeded_owners,
        origin_owner_name=st.just("Owner"),
        account_id=st.just("") | seeded_accounts,
    ),
    "GetAccount": st.builds(
        pb.GetAccountRequest,
        account_id=seeded_accounts,
        read_from=st.sampled_from([pb.READ_FROM_STACKONE, pb.READ_FROM_REGISTRY]),
    ),
    "ListAccounts": st.builds(
        pb.ListAccountsRequest,
        origin_owner_ids=st.lists(seeded_owners, max_size=3),
        account_ids=st.lists(seeded_accounts, max_size=3),
        page_size=st.integers(0, 5),
        read_from=st.sampled_from([pb.READ_FROM_STACKONE, pb.READ_FROM_REGISTRY]),
    ),
    "DeleteAccount": st.builds(pb.DeleteAccountRequest, account_id=seeded_accounts),
    "StreamAccountEvents": scoped_streams(),
}


def _resolved(request: Any, accounts: dict[str, str]) -> Any:
    """`request` with each `@<owner>` replaced by that owner's seeded account id."""

    def resolve(value: str) -> str:
        return accounts.get(value[1:], value) if value.startswith("@") else value

    if hasattr(request, "account_ids"):
        request.account_ids[:] = [resolve(value) for value in request.account_ids]
    if hasattr(request, "account_id"):
        request.account_id = resolve(request.account_id)
    return request


def _owners_answered(method: str, answers: list[Any]) -> list[str]:
    """The owners of every account and event in a call's answers."""
    owners: list[str] = []
    for answer in answers:
        if method in ("GetAccount", "DeleteAccount"):
            owners.append(answer.origin_owner_id)
        elif method == "ListAccounts":
            owners += [account.origin_owner_id for account in answer.accounts]
        elif method == "StreamAccountEvents":
            events = [answer.event] if answer.HasField("event") else list(answer.events.events)
            accounts = [answer.account] if answer.HasField("account") else []
            accounts += list(answer.accounts.accounts)
            owners += [event.account.origin_owner_id for event in events]
            owners += [account.origin_owner_id for account in accounts]
    return owners


def _owner_of(accounts: dict[str, str]) -> Callable[[str], str | None]:
    by_id = {account_id: owner for owner, account_id in accounts.items()}
    return by_id.get


@settings(_FUZZ, max_examples=150)
@given(data=st.data())
def test_a_scoped_clients_generated_calls_never_cross_owners(
    server: Server, data: st.DataObject
) -> None:
    """Generated calls of a client scoped to acme-* and globex, at seeded accounts of its
    owners and others': no answer holds another owner's account or event, a session is
    made only for its owners (and their accounts), and nothing fails internally."""
    method = data.draw(st.sampled_from(sorted(SCOPED_REQUESTS)))
    request = _resolved(data.draw(SCOPED_REQUESTS[method]), server.accounts)
    answers, failed = server.scoped_answers(method, request)
    if failed is not None:
        assert failed.code() not in NEVER, f"{method}: {failed.code()}: {failed.details()}"
    owners = _owners_answered(method, answers)
    assert all(scoped_allows(owner) for owner in owners), (method, owners)
    if method == "CreateSession" and failed is None:
        assert scoped_allows(request.origin_owner_id)
        reconnected = _owner_of(server.accounts)(request.account_id)
        assert not request.account_id or (reconnected and scoped_allows(reconnected))


def test_no_other_owners_account_was_deleted(server: Server) -> None:
    """After the scoped fuzzing, every seeded account of another owner is still there."""
    stub = pb_grpc.ConnectServiceStub(server.channel)
    metadata = (("authorization", f"Bearer {ADMIN}"),)
    for owner, account_id in server.accounts.items():
        if not scoped_allows(owner):
            asked = pb.GetAccountRequest(account_id=account_id)
            assert stub.GetAccount(asked, metadata=metadata, timeout=CALL_TIMEOUT).id == account_id
