"""The emulator's own request bodies (faults, behaviour, webhook delivery), validated by
pydantic: a body that is not what an action takes is a 400 naming each field at fault,
never a half-applied change or a 500."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class _Body(BaseModel):
    # strict: `true` is not a number, "5" is not an int; extra: a misspelt key is refused.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class FaultBody(_Body):
    """`POST /emulator/faults` (see `Fault` for what each field does)."""

    path_prefix: str = "/"
    path: str | None = None
    method: str | None = None
    status: Annotated[int, Field(ge=100, le=599)] | None = None
    delay: Seconds = 0.0
    retry_after: float | str | None = None
    reset: bool = False
    malformed: bool = False
    body: str | None = None
    repeat: Annotated[int, Field(ge=1, le=100_000_000)] = 1  # a body past any bound we keep
    times: Annotated[int, Field(ge=1)] | None = None


class BehaviourBody(_Body):
    """`PUT /emulator/behaviour`: only the fields given change."""

    latency: Seconds = 0.0
    rate_limit: Annotated[int, Field(ge=1)] | None = None
    rate_window: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 60.0


class WebhooksBody(_Body):
    """`PUT /emulator/webhooks`: only the fields given change."""

    url: str | None = None
    secret: str | None = None
    enabled: bool = True


class BadBody(ValueError):
    """A body an action does not take; the message names each field and what is wrong."""


_B = TypeVar("_B", bound=_Body)


def parsed(kind: type[_B], body: dict[str, Any]) -> _B:
    """`body` as a `kind`, or `BadBody` saying why not."""
    try:
        return kind.model_validate(body)
    except ValidationError as error:
        problems = [
            f"{'.'.join(map(str, problem['loc'])) or 'body'}: {problem['msg']}"
            for problem in error.errors(include_url=False)
        ]
        raise BadBody("; ".join(problems)) from None
