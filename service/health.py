"""Health declared once: named checks, run together, and one snapshot every surface reads.

The lifecycle owner registers each dependency's check where it makes the dependency (the
event log writable — on JetStream, NATS connected and the streams answering —, the
registry complete), runs them every `STACKONE_CONNECT_READINESS_INTERVAL` and on demand,
and both health surfaces read the same snapshot: gRPC health (per service name, see
`service.runtime`) and the admin listener's `/readyz`, which lists every check by name. A
check is an async callable that returns when the dependency is fine and raises, saying
why, when it is not. Checks marked `readiness` decide whether the service is ready; the
others are reported (the registry answers reads only once complete; until then StackOne
answers them, so the service is ready without it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from service.metrics import Metrics

_log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[None]]
"""Returns when its dependency is fine; raises (its message says why) when it is not."""
Listener = Callable[["HealthSnapshot"], Awaitable[None]]

NOT_CHECKED = "not checked yet"
SHUTTING_DOWN = "shutting down"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check's last answer: passing, or failing with why."""

    name: str
    passing: bool
    readiness: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    """Every check's last answer, as one value both surfaces read."""

    results: tuple[CheckResult, ...] = ()
    shutting_down: bool = False

    @property
    def ready(self) -> bool:
        """Every readiness check passes and the service is not shutting down."""
        return not self.shutting_down and all(r.passing for r in self.results if r.readiness)

    def passing(self, name: str) -> bool:
        """Whether the check `name` passes (and the service is not shutting down)."""
        return not self.shutting_down and any(r.passing for r in self.results if r.name == name)

    def problems(self) -> list[str]:
        """`name: why` of each failing readiness check (or that it is shutting down)."""
        if self.shutting_down:
            return [SHUTTING_DOWN]
        return [f"{r.name}: {r.detail}" for r in self.results if r.readiness and not r.passing]


@dataclass(frozen=True, slots=True)
class _Registered:
    name: str
    check: Check
    readiness: bool


class Health:
    """The service's named checks and their last snapshot.

    Args:
        metrics: counts a check that fails with something other than its dependency's
            own error (`background_failures{task="readiness"}`).
        expected: the errors by which a check says its dependency is down (logged as
            one line); anything else is a fault of the check, logged with its traceback.
    """

    def __init__(
        self, metrics: Metrics | None = None, expected: tuple[type[Exception], ...] = ()
    ) -> None:
        self._metrics = metrics
        self._expected = expected
        self._checks: list[_Registered] = []
        self._listeners: list[Listener] = []
        self._snapshot = HealthSnapshot()
        self._running = asyncio.Lock()

    def register(self, name: str, check: Check, *, readiness: bool = True) -> None:
        """Adds the check `name` (failing, "not checked yet", until it first runs)."""
        self._checks.append(_Registered(name, check, readiness))
        result = CheckResult(name, passing=False, readiness=readiness, detail=NOT_CHECKED)
        self._snapshot = HealthSnapshot((*self._snapshot.results, result))

    def subscribe(self, listener: Listener) -> None:
        """Calls `listener` with each new snapshot (after every run and at shutdown)."""
        self._listeners.append(listener)

    @property
    def snapshot(self) -> HealthSnapshot:
        """The checks' last answers."""
        return self._snapshot

    async def run_checks(self) -> HealthSnapshot:
        """Runs every check now (one run at a time) and publishes the snapshot."""
        async with self._running:
            results = tuple([await self._result(registered) for registered in self._checks])
            if self._snapshot.shutting_down:
                return self._snapshot
            await self._publish(HealthSnapshot(results))
            return self._snapshot

    async def run(self, interval: float) -> None:
        """Runs the checks every `interval` seconds, until cancelled."""
        while True:
            await asyncio.sleep(interval)
            await self.run_checks()

    async def shut_down(self) -> None:
        """From now on every surface says not ready; later runs change nothing."""
        await self._publish(HealthSnapshot(self._snapshot.results, shutting_down=True))

    async def _result(self, registered: _Registered) -> CheckResult:
        name, readiness = registered.name, registered.readiness
        before = next(r for r in self._snapshot.results if r.name == name)
        was_passing = before.passing or before.detail == NOT_CHECKED  # logs a first failure
        try:
            await registered.check()
        except self._expected as error:
            if was_passing:  # only readiness checks make the service not ready
                _log.log(logging.ERROR if readiness else logging.INFO, "%s: %s", name, error)
            return CheckResult(name, False, readiness, str(error))
        except Exception as error:
            # A fault of the check itself proves nothing works either: failing, counted,
            # and checked again at the next run.
            _log.exception("the check %s failed", name)
            if self._metrics is not None:
                self._metrics.background_failures.labels("readiness").inc()
            return CheckResult(name, False, readiness, f"the check failed: {error!r}")
        if not was_passing:
            _log.info("%s passes again", name)
        return CheckResult(name, True, readiness)

    async def _publish(self, snapshot: HealthSnapshot) -> None:
        # The listeners (gRPC health) first: once `snapshot` reads a change, every surface
        # already says it.
        for listener in self._listeners:
            await listener(snapshot)
        self._snapshot = snapshot
