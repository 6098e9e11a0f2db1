"""What the emulator knows, as typed values: the rooms (`stackone_api`, `hub`, `control`)
import this module and nothing here imports a room.

Each model holds its fields as Python values and builds its JSON shape at the edge
(`to_json`); the shapes are StackOne's, as its 2026-06 models answer them unless the config's
`sdk_shapes` names an older SDK (see `stackone_api`). `memory` persists the `Lasting` part.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp import web
from pydantic import JsonValue

from service.events.model import AccountEventType
from service.tracing import current_traceparent

CURRENT_SHAPES = "2026-06"
"""StackOne's models of 2026-06 (StackOneHQ/stackone-client-ruby at 500b0df7)."""
SDK_434_SHAPES = "4.34"
SDK_428_SHAPES = "4.28"
SDK_SHAPES = (CURRENT_SHAPES, SDK_434_SHAPES, SDK_428_SHAPES)
"""The SDK versions whose answer shapes the emulator can play, newest first."""
REQUESTS_KEPT = 1000
_FIRST_ACCOUNT_ID = 58810347712093400000  # StackOne's ids are long numeric strings
Json = dict[str, JsonValue]


def now() -> datetime:
    """The emulator's clock."""
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """StackOne's date format: ISO-8601 in UTC with milliseconds and `Z`."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class EmulatorConfig:
    """How the emulator behaves; webhook settings can change at run time."""

    api_key: str
    webhook_url: str | None = None
    webhook_secret: str | None = None
    deliver_webhooks: bool = True
    public_base_url: str | None = None
    project_id: str = "proj_emulator"
    organization_id: int = 41  # answered as text, or as a number in the 4.28 shapes
    sdk_shapes: str = CURRENT_SHAPES  # one of SDK_SHAPES
    latency: float = 0.0
    rate_limit: int | None = None
    rate_window: float = 60.0

    @property
    def legacy_shapes(self) -> bool:
        """True when answers take the SDK 4.28 shapes."""
        return self.sdk_shapes == SDK_428_SHAPES

    @property
    def current_shapes(self) -> bool:
        """True when answers take the 2026-06 shapes (connector profiles, attempts,
        account categories)."""
        return self.sdk_shapes == CURRENT_SHAPES

    def behaviour(self) -> Json:
        """The settings `PUT /emulator/behaviour` changes, as it answers them."""
        return {
            "latency": self.latency,
            "rate_limit": self.rate_limit,
            "rate_window": self.rate_window,
        }


@dataclass
class Fault:
    """A failure injected into StackOne endpoints whose path starts with `path_prefix`.

    Attributes:
        path_prefix: e.g. `/accounts/123` (one account) or `/connect_sessions`.
        path: only this exact path (e.g. `/accounts`, the listing alone), when set.
        method: only this HTTP method, or every method when None.
        status: answer with this status and a StackOne error body.
        delay: seconds to wait before answering (or failing).
        retry_after: the Retry-After header to send with `status`.
        reset: drop the connection without an answer.
        malformed: answer 200 with a body that is not JSON.
        body: answer with this body (status `status`, or 200), repeated `repeat` times: an
            odd or huge answer without a huge fault request.
        times: how many requests it applies to; None for all.

    `retry_after` may be text, sent as it is ("inf", an HTTP date).
    """

    path_prefix: str = "/"
    path: str | None = None
    method: str | None = None
    status: int | None = None
    delay: float = 0.0
    retry_after: float | str | None = None
    reset: bool = False
    malformed: bool = False
    body: str | None = None
    repeat: int = 1
    times: int | None = None

    def matches(self, method: str, path: str) -> bool:
        """True when this fault applies to a request of `method` to `path` and has uses left."""
        return (
            (self.times is None or self.times > 0)
            and path.startswith(self.path_prefix)
            and (self.path is None or self.path == path)
            and (self.method is None or self.method == method)
        )


@dataclass
class StatusReason:
    """Why an account has its status, in StackOne's shape."""

    code: str | None
    description: str | None
    timestamp: str


@dataclass(kw_only=True)
class Account:
    """A linked account."""

    id: str
    provider: str
    provider_name: str
    status: str
    status_reasons: list[StatusReason] | None = None
    origin_owner_id: str
    origin_owner_name: str
    origin_username: str | None = None
    label: str | None = None
    type: str = "production"
    created_at: str
    updated_at: str
    shared: bool = False  # in StackOne's SDK since 4.34.1: not in the 4.28 shapes
    categories: list[str] | None = None  # since the 2026-06 models; None: not known

    def to_json(self, legacy_shapes: bool = False, current_shapes: bool = True) -> Json:
        """The account as `GET /accounts/{id}` answers it (written out, not `asdict`: a
        listing answers thousands, and `asdict` took 30 times as long)."""
        reasons = self.status_reasons
        answer: Json = {
            "id": self.id,
            "provider": self.provider,
            "provider_name": self.provider_name,
            "status": self.status,
            "status_reasons": None if reasons is None else [vars(r).copy() for r in reasons],
            "origin_owner_id": self.origin_owner_id,
            "origin_owner_name": self.origin_owner_name,
            "origin_username": self.origin_username,
            "label": self.label,
            "type": self.type,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }
        if not legacy_shapes:
            answer["shared"] = self.shared
        if current_shapes:
            answer["categories"] = (
                None if self.categories is None else list[JsonValue](self.categories)
            )
        return answer


@dataclass(kw_only=True)
class Session:
    """A connect session, with what StackOne keeps of it but does not answer."""

    id: int
    organization_id: str | int  # as answered: a number in the 4.28 shapes
    project_id: str
    origin_owner_id: str
    origin_owner_name: str
    origin_username: str | None = None
    provider: str | None = None
    account_id: str | None = None
    label: str | None = None
    metadata: Json | None = None
    provider_version: str | None = None  # kept, not answered
    # Answered as `connector_profile_id` and `integration_id` (2026-06), as `integration_id`
    # (4.34), not at all (4.28).
    connector_profile_id: str | None = None
    categories: list[str] = field(default_factory=list)
    type: str = "production"
    multiple: bool = False  # kept, not answered
    external_trigger_token: str
    created_at: str
    expires_at: datetime  # kept, not answered
    token: str
    auth_link_url: str

    def live(self, moment: datetime) -> bool:
        """True while the session can still be completed."""
        return self.expires_at >= moment

    def to_json(
        self,
        config: EmulatorConfig,
        *,
        with_token: bool = True,
        attempt: ConnectionAttempt | None = None,
    ) -> dict[str, Any]:
        """The session as `POST /connect_sessions` answers it (`with_token`) or as
        `/connect_sessions/authenticate` and `GET /connect_sessions/{id}` do (without the
        token and link), in `config`'s shapes; `attempt` is its latest."""
        left_out = {"expires_at", "multiple", "provider_version"}  # what StackOne keeps
        left_out |= set() if with_token else {"token", "auth_link_url"}
        answer = {key: value for key, value in asdict(self).items() if key not in left_out}
        profile_id = answer.pop("connector_profile_id")
        if not config.legacy_shapes:
            answer["integration_id"] = profile_id
        if config.current_shapes:
            answer["connector_profile_id"] = profile_id
            answer["latest_connection_attempt"] = None if attempt is None else attempt.answer()
        return answer


@dataclass
class AttemptError:
    """Why an OAuth connection attempt failed, as the Hub shows it."""

    code: str
    description: str


AttemptStatus = Literal["pending", "authenticated", "error", "cancelled"]


@dataclass
class ConnectionAttempt:
    """An attempt to link an account through a session, bound to the session's token: an
    OAuth attempt the Hub polls, or a credential form the Hub opened and submitted. The
    defaults of `id` and the times read attempts of an earlier state file."""

    token: str
    status: AttemptStatus = "pending"
    account: str | None = None
    error: AttemptError | None = None
    id: str = ""
    created_at: str = ""
    updated_at: str = ""

    def to_json(self) -> dict[str, Any]:
        """The attempt as `GET /hub/connection_attempts/{id}` answers it."""
        return {
            "status": self.status,
            "account": self.account,
            "error": None if self.error is None else asdict(self.error),
        }

    def answer(self) -> Json:
        """The attempt as a session's `latest_connection_attempt` (2026-06 models)."""
        error = self.error
        return {
            "id": self.id,
            "status": self.status,
            "account_secure_id": self.account,
            "oauth_error_code": None if error is None else error.code,
            "oauth_error_description": None if error is None else error.description,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    def settle(
        self, status: AttemptStatus, account: str | None = None, error: AttemptError | None = None
    ) -> None:
        """Ends the attempt with `status`, now."""
        self.status, self.account, self.error = status, account, error
        self.updated_at = iso(now())


@dataclass
class PinnedVersion:
    """The connector version pinned for a connector profile."""

    pinned_version: str
    owner: str | None
    created_at: str
    updated_at: str


@dataclass
class Lasting:
    """What StackOne keeps across a restart, so `memory` persists it: sessions, accounts,
    the account numbers handed out, and the Hub's attempts and setup information."""

    account_numbers: int = 0  # handed out so far: ids never repeat, even across restarts
    sessions: dict[str, Session] = field(default_factory=dict)
    accounts: dict[str, Account] = field(default_factory=dict)
    hub_attempts: dict[str, ConnectionAttempt] = field(default_factory=dict)
    # Non-secret credentials of accounts linked through the Hub, shown when re-opened.
    hub_setup_information: dict[str, dict[str, str]] = field(default_factory=dict)
    pinned_versions: dict[str, PinnedVersion] = field(default_factory=dict)  # by profile id


@dataclass(frozen=True, slots=True)
class Webhook:
    """A webhook StackOne sends about an account."""

    event: AccountEventType
    account_id: str
    provider: str
    origin_owner_id: str
    origin_owner_name: str
    origin_username: str | None
    project_id: str
    event_date: str
    traceparent: str  # the trace the delivery continues ('': none); not in the body

    def to_json(self, sent_at: str) -> dict[str, Any]:
        """The webhook's body as sent at `sent_at`."""
        answer = asdict(self)
        del answer["traceparent"]
        return {**answer, "sent_at": sent_at}


@dataclass
class DeliveryAttempt:
    """One attempt at delivering a webhook: the HTTP status it got, or the error."""

    event: str
    account_id: str
    attempt: int
    status: int | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The attempt as `GET /emulator/deliveries` lists it."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """A StackOne-endpoint request as it arrived, for checking clients against schemas."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: JsonValue

    def to_json(self) -> dict[str, Any]:
        """The request as `GET /emulator/requests` lists it."""
        return asdict(self)


@dataclass
class EmulatorState:
    """Everything the emulator knows: what lasts, and what is about one run (faults,
    counts, deliveries, the requests kept)."""

    config: EmulatorConfig
    lasting: Lasting = field(default_factory=Lasting)
    # Bumped by every change to `lasting`: `memory` writes the file only when it moved.
    lasting_revision: int = 0
    deliveries: list[DeliveryAttempt] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    in_flight: Counter[str] = field(default_factory=Counter)  # by route, being answered now
    most_in_flight: Counter[str] = field(default_factory=Counter)  # the most at once
    rate_limited: int = 0
    arrivals: dict[str, deque[float]] = field(default_factory=dict)
    requests: deque[RecordedRequest] = field(default_factory=lambda: deque(maxlen=REQUESTS_KEPT))
    outbox: asyncio.Queue[Webhook] = field(default_factory=asyncio.Queue)

    @property
    def sessions(self) -> dict[str, Session]:
        """Connect sessions by token."""
        return self.lasting.sessions

    @property
    def accounts(self) -> dict[str, Account]:
        """Linked accounts by id."""
        return self.lasting.accounts

    def changed(self) -> None:
        """Notes that `lasting` changed (see `lasting_revision`)."""
        self.lasting_revision += 1

    def new_account_id(self) -> str:
        """A StackOne-like numeric string id."""
        self.lasting.account_numbers += 1
        self.changed()
        return str(_FIRST_ACCOUNT_ID + self.lasting.account_numbers)

    def live_session(self, token: object) -> Session | None:
        """The session of `token` while it is live, else None."""
        session = self.sessions.get(token) if isinstance(token, str) else None
        return session if session is not None and session.live(now()) else None

    def answer(self, account: Account) -> Json:
        """`account` in the configured SDK's shape."""
        return account.to_json(self.config.legacy_shapes, self.config.current_shapes)

    def session_answer(self, session: Session, *, with_token: bool = True) -> Json:
        """`session` in the configured SDK's shape, with its latest attempt."""
        attempt = self.latest_attempt(session)
        return session.to_json(self.config, with_token=with_token, attempt=attempt)

    def session_numbered(self, session_id: int) -> Session | None:
        """The session whose StackOne id is `session_id`, expired or not."""
        return next((s for s in self.sessions.values() if s.id == session_id), None)

    def latest_attempt(self, session: Session) -> ConnectionAttempt | None:
        """The last attempt made through `session`, if any."""
        attempts = self.lasting.hub_attempts.values()
        return next((a for a in reversed(attempts) if a.token == session.token), None)

    def new_attempt(self, session: Session) -> tuple[str, ConnectionAttempt]:
        """A pending attempt through `session`, begun now, and its id."""
        attempt_id, stamp = "ca_" + secrets.token_urlsafe(12), iso(now())
        attempt = ConnectionAttempt(
            session.token, id=attempt_id, created_at=stamp, updated_at=stamp
        )
        self.lasting.hub_attempts[attempt_id] = attempt
        self.changed()
        return attempt_id, attempt

    def open_attempt(self, session: Session) -> ConnectionAttempt:
        """The pending attempt through `session`, begun now if none is pending."""
        latest = self.latest_attempt(session)
        return (
            latest
            if latest is not None and latest.status == "pending"
            else self.new_attempt(session)[1]
        )

    def queue_webhook(self, event: AccountEventType, account: Account) -> None:
        """Queues a webhook for `account` unless delivery is switched off."""
        if not (self.config.deliver_webhooks and self.config.webhook_url):
            return
        webhook = Webhook(
            event=event,
            account_id=account.id,
            provider=account.provider,
            origin_owner_id=account.origin_owner_id,
            origin_owner_name=account.origin_owner_name,
            origin_username=account.origin_username,
            project_id=self.config.project_id,
            event_date=account.updated_at,
            # The trace of the request that caused it (tracing on), continued by the delivery.
            traceparent=current_traceparent(),
        )
        self.outbox.put_nowait(webhook)

    async def wait_for_deliveries(self) -> None:
        """Returns once every queued webhook was delivered or given up on."""
        await self.outbox.join()

    def admit(self, key: str, moment: float) -> float | None:
        """Counts a call of API key `key` arriving at `moment` against the rate limit.

        Returns None when it is allowed (it then takes a slot), or the seconds until a
        slot frees when it is over the limit (it then takes none).
        """
        limit, window = self.config.rate_limit, self.config.rate_window
        if limit is None:
            return None
        arrivals = self.arrivals.setdefault(key, deque())
        while arrivals and arrivals[0] <= moment - window:
            arrivals.popleft()
        if len(arrivals) >= limit:
            # The oldest call in the window leaves it first; more than `limit` may be
            # listed when the limit was lowered at run time, hence the index.
            return arrivals[len(arrivals) - limit] + window - moment
        arrivals.append(moment)
        return None


EMULATOR_STATE = web.AppKey("emulator_state", EmulatorState)
