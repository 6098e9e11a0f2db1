"""The account event types are named in one place (`AccountEventType`): the gateway's
labels, the verifier, reconciliation and the emulator use it, so they cannot disagree; and
what the gateway records is exactly what a stream filter can select."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from gateway.webhook import InvalidWebhook, parse_webhook
from service.events.model import AccountEventType, EventSource
from service.events.records import event_source
from service.rpc.validation import InvalidRequest, stream_request
from stackone_connect.v1 import stackone_connect_pb2 as pb

REPOSITORY = Path(__file__).resolve().parents[2]
_LITERAL = re.compile(r"""["']account\.(created|updated|deleted)["']""")


def test_account_event_types_are_spelled_out_only_where_they_are_defined() -> None:
    """No module of the service spells a type as a string literal but the model's enum."""
    defined_in = REPOSITORY / "service" / "events" / "model.py"
    spelled = [
        f"{path.relative_to(REPOSITORY)}:{number}"
        for package in ("service", "gateway")
        for path in sorted((REPOSITORY / package).rglob("*.py"))
        if path != defined_in and "_pb2" not in path.name
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if _LITERAL.search(line)
    ]
    assert spelled == []
    assert {str(t) for t in AccountEventType} == {
        "account.created",
        "account.updated",
        "account.deleted",
    }


def _recorded_by_the_gateway(event_type: str) -> bool:
    body = orjson.dumps({"event": event_type, "account_id": "acct-1"})
    try:
        return parse_webhook(body).is_account_event
    except InvalidWebhook:
        return False


def _selectable_by_a_filter(event_type: str) -> bool:
    try:
        stream_request(pb.StreamAccountEventsRequest(event_types=[event_type]))
    except InvalidRequest:
        return False
    return True


@pytest.mark.parametrize(
    "event_type",
    [
        *AccountEventType,
        "account.error",
        "account.some_alert",
        "account." + "z" * 64,
        "account." + "z" * 65,
        "account.",
        "account.<b>created</b>",
        "account.up\u0007dated",
        "account.Created",
        "account.created ",
        "hris_employees.created",
    ],
)
def test_the_gateway_records_exactly_the_types_a_stream_filter_can_select(
    event_type: str,
) -> None:
    """A type the gateway records as an account event is one a `StreamAccountEvents`
    filter accepts, and the other way round."""
    assert _recorded_by_the_gateway(event_type) == _selectable_by_a_filter(event_type)


def test_the_types_the_service_records_itself_are_ones_a_filter_can_select() -> None:
    """The types the verifier and reconciliation record (`AccountEventType`) pass the
    same rule as a webhook's, so a subscriber can ask for each."""
    assert all(_recorded_by_the_gateway(t) and _selectable_by_a_filter(t) for t in AccountEventType)


def test_the_log_names_each_event_source_of_the_proto_once() -> None:
    """`EventSource` has one name for each source of the proto's `EventSource`, and an
    event message's source is recorded under its own name."""
    named = {
        value: name.removeprefix("EVENT_SOURCE_").lower()
        for name, value in pb.EventSource.items()
        if value != pb.EVENT_SOURCE_UNSPECIFIED
    }
    assert {str(source) for source in EventSource} == set(named.values())
    assert {event_source(value) for value in named} == set(EventSource)
    assert all(event_source(value) == name for value, name in named.items())
