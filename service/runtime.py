"""The lifecycle owner: starts every part of `serve`, tracks readiness, stops in order.

Start: (emulator) → event log → StackOne client → gateway → gRPC server → SERVING.
Stop:  NOT_SERVING and refuse new webhooks → end streams (clients reconnect) →
       gRPC stop with grace → gateway cleanup → client close → event log close.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from grpc_health.v1 import health_pb2

from gateway.app import WEBHOOK_PATH, GatewayState, init_app
from service.aio import cancel_all
from service.config import Settings, split_address
from service.emulator import EMULATOR_STATE, EmulatorConfig, build_emulator_app
from service.events.ingest import Ingestor
from service.events.jetstream import JetStreamEventLog, JetStreamOptions
from service.events.log import EventLog
from service.events.model import EventLogError, EventLogUnavailable
from service.events.reconcile import Reconciler
from service.events.sqlite import Retention, SqliteEventLog
from service.events.verify import Verifier
from service.metrics import Metrics
from service.rpc.server import SERVICE_NAME, HealthReporter, build_grpc_server, new_health_servicer
from service.rpc.servicer import ConnectServicer
from service.stackone.budget import RateBudget
from service.stackone.client import StackOneClient
from service.web import ListeningApp, listening

_log = logging.getLogger(__name__)


class ConfigurationError(Exception):
    """The settings cannot run a service; the message names what to set."""


@dataclass(slots=True)
class Runtime:
    """A running service: where it listens and the parts tests and the CLI look at."""

    settings: Settings
    grpc_port: int
    gateway: ListeningApp
    emulator: ListeningApp | None
    event_log: EventLog
    health: HealthReporter

    @property
    def grpc_target(self) -> str:
        """`host:port` a gRPC client dials."""
        return f"{split_address(self.settings.grpc_address)[0]}:{self.grpc_port}"


async def _set_health(servicer: HealthReporter, serving: bool) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ("", SERVICE_NAME):
        await servicer.set(name, status)


async def _watch_readiness(log: EventLog, servicer: HealthReporter, interval: float) -> None:
    ready = True
    while True:
        await asyncio.sleep(interval)
        try:
            await log.check_writable()
            now_ready = True
        except EventLogError as error:
            now_ready = False
            if ready:
                _log.error("not ready: %s", error)
        if now_ready != ready:
            await _set_health(servicer, now_ready)
            ready = now_ready


async def open_event_log(settings: Settings) -> EventLog:
    """The configured backend: SQLite in one process, or JetStream shared by replicas."""
    if not settings.uses_jetstream:
        return await SqliteEventLog.open(
            settings.sqlite_path,
            Retention(
                max_age=settings.retention_max_age,
                max_count=settings.retention_max_count,
                dedup_window=settings.dedup_window,
            ),
            inbox_limit=settings.inbox_limit,
        )
    try:
        return await JetStreamEventLog.open(
            JetStreamOptions(
                url=settings.event_log_url,
                stream=settings.jetstream_stream,
                subject_prefix=settings.jetstream_subject_prefix,
                storage=settings.jetstream_storage,
                replicas=settings.jetstream_replicas,
                max_age=settings.retention_max_age,
                max_count=settings.retention_max_count,
                dedup_window=settings.dedup_window,
                inbox_limit=settings.inbox_limit,
                inbox_duplicate_window=max(120.0, 2 * settings.verify_deadline),
            )
        )
    except EventLogUnavailable as error:
        raise ConfigurationError(f"{error} (STACKONE_CONNECT_EVENT_LOG_URL)") from error


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Runtime]:
    """Runs the whole service until the block exits, then stops it gracefully."""
    async with AsyncExitStack() as stack:
        webhook_secrets = [secret.get_secret_value() for secret in settings.webhook_secrets]
        emulator: ListeningApp | None = None
        if settings.uses_emulator:
            api_key = "emulator-" + secrets.token_urlsafe(16)
            webhook_secrets = webhook_secrets or [secrets.token_urlsafe(32)]
            emulator_config = EmulatorConfig(
                api_key=api_key,
                webhook_url=None,
                webhook_secret=webhook_secrets[0],
                latency=settings.emulator_latency,
                rate_limit=settings.emulator_rate_limit,
            )
            emulator = await stack.enter_async_context(
                listening(
                    build_emulator_app(emulator_config),
                    *split_address(settings.emulator_address),
                    # A stand-in for StackOne: its slow (fault-injected) answers need no grace.
                    shutdown_timeout=0.5,
                )
            )
            base_url = emulator.base_url
        else:
            assert settings.api_key is not None  # uses_emulator is False only with a key
            api_key, base_url = settings.api_key.get_secret_value(), settings.base_url
            if not webhook_secrets:
                raise ConfigurationError(
                    "STACKONE_CONNECT_WEBHOOK_SECRETS is not set: without the signing secret "
                    "of your StackOne webhook every delivery would be rejected"
                )

        event_log = await open_event_log(settings)
        stack.push_async_callback(event_log.close)
        metrics = Metrics()
        metrics.latest_cursor.set_function(lambda: event_log.latest_cursor)
        # One budget for every StackOne call: callers, verification and reconciliation.
        budget = RateBudget(
            settings.rate_limit, caller_reserve=settings.rate_caller_reserve, metrics=metrics
        )
        stackone = StackOneClient(
            base_url, api_key, observer=metrics.observe_upstream, budget=budget
        )
        stack.push_async_callback(stackone.aclose)

        gateway_state = GatewayState(
            ingestor=Ingestor(event_log),
            secrets=webhook_secrets,
            url_token=(
                settings.webhook_url_token.get_secret_value()
                if settings.webhook_url_token
                else None
            ),
            readiness_check=event_log.check_writable,
            metrics=metrics,
        )
        gateway = await stack.enter_async_context(
            listening(
                init_app(gateway_state),
                *split_address(settings.gateway_address),
                shutdown_timeout=settings.shutdown_grace,
            )
        )
        if emulator is not None:
            emulator.runner.app[EMULATOR_STATE].config.webhook_url = gateway.base_url + WEBHOOK_PATH
            _log.warning(
                "No STACKONE_CONNECT_API_KEY is set: using the bundled StackOne emulator at %s "
                '(link an account with POST %s/emulator/link {"token": ...})',
                emulator.base_url,
                emulator.base_url,
                extra={"emulator_url": emulator.base_url},
            )

        draining = asyncio.Event()
        servicer = ConnectServicer(
            stackone,
            event_log,
            bookmark_interval=settings.bookmark_interval,
            stop=draining,
            upstream_timeout=settings.upstream_timeout,
            metrics=metrics,
        )
        health_servicer = new_health_servicer()
        server, grpc_port = build_grpc_server(servicer, health_servicer, settings, metrics)
        await server.start()
        await _set_health(health_servicer, True)
        verifier = Verifier(
            event_log,
            stackone,
            metrics=metrics,
            deadline=settings.verify_deadline,
            quiet=settings.verify_quiet,
            lookup_timeout=settings.upstream_timeout,
        )
        background = [
            asyncio.create_task(
                _watch_readiness(event_log, health_servicer, settings.readiness_interval)
            ),
            asyncio.create_task(verifier.run(), name="verifier"),
        ]
        if settings.reconcile_interval > 0:
            reconciler = Reconciler(
                event_log,
                stackone,
                interval=settings.reconcile_interval,
                grace=settings.reconcile_grace,
            )
            background.append(asyncio.create_task(reconciler.run()))
        background.append(asyncio.create_task(metrics.watch_loop_lag(), name="loop-lag"))
        runtime = Runtime(settings, grpc_port, gateway, emulator, event_log, health_servicer)
        _log.info(
            "stackone-connect serving: gRPC on %s, gateway on %s",
            runtime.grpc_target,
            gateway.base_url,
            extra={"grpc_target": runtime.grpc_target, "gateway_url": gateway.base_url},
        )
        try:
            yield runtime
        finally:
            _log.info("shutting down", extra={"grace_seconds": settings.shutdown_grace})
            await cancel_all(background)
            await health_servicer.enter_graceful_shutdown()
            gateway_state.accepting = False
            draining.set()
            event_log.stop_waits()  # idle streams see `draining` now, not at their next wake
            # Both drain within one grace period; the exit stack then closes the rest.
            await asyncio.gather(server.stop(settings.shutdown_grace), gateway.stop())
