"""The account event types are named in one place (`AccountEventType`): the gateway's
labels, the verifier, reconciliation and the emulator use it, so they cannot disagree."""

from __future__ import annotations

import re
from pathlib import Path

from service.events.model import AccountEventType

REPOSITORY = Path(__file__).resolve().parents[1]
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
