"""What one call asked StackOne to change, and what StackOne answered (for the audit trail).

Whoever answers for a call that may change something at StackOne (the gRPC interceptor,
for `CreateSession` and `DeleteAccount`) sets `UPSTREAM_CHANGE` to a fresh
`UpstreamChange`; the client marks it as it sends a request that changes something (any
method but GET: a connect session created, an account deleted) and adds each attempt's
answer. A context variable, as `CALLER_SHARE` is: the servicer between them passes nothing,
and the owner checks' look-ups (GETs) are not counted as changes.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class NoAnswer(StrEnum):
    """What an attempt got when StackOne gave no HTTP status (else the status, "200")."""

    TIMEOUT = "timeout"  # none within the call's time: StackOne may have made the change
    UNREACHABLE = "unreachable"  # the connection failed or was dropped
    UNREADABLE = "unreadable"  # an answer too large to read
    CANCELLED = "cancelled"  # this service stopped waiting (it was shutting down)


@dataclass(slots=True)
class UpstreamChange:
    """Whether StackOne was asked to make a call's change, and each attempt's answer."""

    asked: bool = False
    answers: list[str] = field(default_factory=list)

    def line(self) -> dict[str, Any]:
        """As an audit record writes it."""
        return {"asked": self.asked, "answers": list(self.answers)}


UPSTREAM_CHANGE: ContextVar[UpstreamChange | None] = ContextVar("upstream_change", default=None)
"""The change the current call's StackOne requests are recorded in (None: not recorded)."""
