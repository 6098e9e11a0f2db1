"""The lifecycle owner: starts every part of `serve`, tracks readiness, stops in order.

`running` enters one named step after another on an exit stack, which stops them in
reverse order:

Start: StackOne (or the emulator) → event log → StackOne client → gateway and gRPC
       server → SERVING → verifier, reconciler, readiness watch.
Stop:  background work cancelled → NOT_SERVING and refuse new webhooks → end streams
       (clients reconnect) → gRPC stop and gateway cleanup within one grace period →
       client close → event log close → emulator stop.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import urlparse

from grpc_health.v1 import health_pb2

from gateway.app import WEBHOOK_PATH, GatewayState, init_admin_app, init_app
from gateway.secrets import InvalidSecretsFile, WebhookSecrets, read_secrets
from gateway.webhook import upgraded
from service.aio import cancel_all
from service.config import ENV_PREFIX, Settings, split_address
from service.emulator import EMULATOR_STATE, EmulatorConfig, build_emulator_app
from service.emulator.memory import remember
from service.events import jetstream, sqlite
from service.events.backends import (
    EventLogOptions,
    UnsupportedEventLogUrl,
    backend_for,
    open_event_log,
    open_request_records,
)
from service.events.ingest import Ingestor
from service.events.log import AccountRegistry, EventLog, Lifecycle, RequestRecords
from service.events.model import EventLogError, EventLogUnavailable, RegistryIncomplete
from service.events.reconcile import Reconciler
from service.events.registry import RegistryQuery
from service.events.verify import Verifier, record_alone
from service.health import Health, HealthSnapshot, Listener
from service.metrics import Metrics
from service.rpc.audit import AuditTrail, open_sink
from service.rpc.page_tokens import PageTokens, page_token_key
from service.rpc.server import (
    REGISTRY_HEALTH,
    SERVICE_NAME,
    GrpcServerOptions,
    HealthReporter,
    build_grpc_server,
    new_health_servicer,
)
from service.rpc.servicer import ConnectServicer
from service.rpc.tls import PemFile, TlsMaterial
from service.stackone.budget import RateBudget
from service.stackone.client import StackOneClient
from service.stackone.shared_budget import BudgetSharing, shared
from service.subscriptions.manager import SubscriptionManager
from service.subscriptions.metrics import SubscriptionCollector
from service.tracing import Tracing, TracingConfigError
from service.tracing import from_environment as tracing_from_environment
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
    admin: ListeningApp
    emulator: ListeningApp | None
    event_log: EventLog
    health: HealthReporter

    @property
    def grpc_target(self) -> str:
        """`host:port` a gRPC client dials."""
        return f"{split_address(self.settings.grpc_address)[0]}:{self.grpc_port}"


EVENT_LOG_WRITABLE = "event_log_writable"
"""The check that an append could succeed now (on JetStream: NATS connected, streams answering)."""
REGISTRY_COMPLETE = "registry_complete"
"""The check that the registry answers reads (a reconciliation sweep has completed it)."""
GRPC_HEALTH_FOLLOWS: dict[str, str | None] = {
    "": None,
    SERVICE_NAME: None,
    REGISTRY_HEALTH: REGISTRY_COMPLETE,
}
"""The check each gRPC health service name follows (None: every readiness check)."""
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _registry_complete(registry: AccountRegistry) -> None:
    """Raises `RegistryIncomplete` until a reconciliation sweep has completed the registry."""
    if not (await registry.registry(RegistryQuery(limit=0))).complete:
        raise RegistryIncomplete()


def declare_health(event_log: Lifecycle, registry: AccountRegistry, metrics: Metrics) -> Health:
    """The service's named checks, declared where the log is made: the one health that
    gRPC health and `/readyz` both read."""
    health = Health(metrics, expected=(EventLogError,))
    health.register(EVENT_LOG_WRITABLE, event_log.check_writable)
    health.register(REGISTRY_COMPLETE, partial(_registry_complete, registry), readiness=False)
    return health


def grpc_health(reporter: HealthReporter) -> Listener:
    """Publishes each snapshot to gRPC health, each service name as `GRPC_HEALTH_FOLLOWS`
    says, setting only what changed (a change is what Watch streams are sent)."""
    published: dict[str, int] = {}

    async def publish(snapshot: HealthSnapshot) -> None:
        for service, check in GRPC_HEALTH_FOLLOWS.items():
            serving = snapshot.ready if check is None else snapshot.passing(check)
            status = SERVING if serving else NOT_SERVING
            if published.get(service) != status:
                await reporter.set(service, status)
                published[service] = status

    return publish


@dataclass(slots=True)
class _StackOne:
    """Where StackOne is: the real API, or the bundled emulator standing in for it."""

    base_url: str
    api_key: str
    webhook_secrets: list[str]
    emulator: ListeningApp | None

    def deliver_webhooks_to(self, gateway: ListeningApp) -> None:
        """Points the emulator's webhooks at the gateway (the real StackOne is configured
        in its dashboard)."""
        if self.emulator is None:
            return
        self.emulator.runner.app[EMULATOR_STATE].config.webhook_url = (
            gateway.base_url + WEBHOOK_PATH
        )
        _log.warning(
            "No STACKONE_CONNECT_API_KEY is set: using the bundled StackOne emulator at %s "
            "(its API key is STACKONE_CONNECT_EMULATOR_API_KEY's; link an account with "
            'POST %s/emulator/link {"token": ...})',
            self.emulator.base_url,
            self.emulator.base_url,
            extra={"emulator_url": self.emulator.base_url},
        )


def emulator_memory(settings: Settings) -> Path | None:
    """Where the bundled emulator keeps its state: the setting, else beside a SQLite log."""
    if settings.emulator_state_file is not None:
        return settings.emulator_state_file
    url = urlparse(settings.event_log_url)
    return sqlite.path_of(url).with_name("emulator.json") if url.scheme == "sqlite" else None


@asynccontextmanager
async def _stackone(settings: Settings, tracing: Tracing) -> AsyncIterator[_StackOne]:
    """StackOne as configured, or the bundled emulator (started here) without an API key;
    traced, the emulator's spans show the context StackOne's calls carry."""
    webhook_secrets = [secret.get_secret_value() for secret in settings.webhook_secrets]
    if not settings.uses_emulator and settings.api_key is not None:
        api_key = settings.api_key.get_secret_value()
        if not webhook_secrets and settings.webhook_secrets_file is None:
            raise ConfigurationError(
                "STACKONE_CONNECT_WEBHOOK_SECRETS (or _FILE) is not set: without the signing "
                "secret of your StackOne webhook every delivery would be rejected"
            )
        yield _StackOne(settings.base_url, api_key, webhook_secrets, emulator=None)
        return
    # The emulator signs with one secret: the settings' first, else the file's first.
    webhook_secrets = webhook_secrets or _file_secrets(settings)[:1] or [secrets.token_urlsafe(32)]
    emulator_config = EmulatorConfig(
        api_key=settings.emulator_api_key,
        webhook_url=None,  # the gateway's, once it listens
        webhook_secret=webhook_secrets[0],
        latency=settings.emulator_latency,
        rate_limit=settings.emulator_rate_limit,
        sdk_shapes=settings.emulator_sdk_shapes,
    )
    emulator_app = build_emulator_app(emulator_config)
    if (memory := emulator_memory(settings)) is not None:
        remember(emulator_app, memory)
    emulator_app.middlewares[:0] = tracing.aiohttp_middlewares()
    async with listening(
        emulator_app,
        *split_address(settings.emulator_address),
        # A stand-in for StackOne: its slow (fault-injected) answers need no grace.
        shutdown_timeout=0.5,
        purpose=f"{ENV_PREFIX}EMULATOR_ADDRESS",
    ) as emulator:
        yield _StackOne(emulator.base_url, emulator_config.api_key, webhook_secrets, emulator)


def _file_secrets(settings: Settings) -> list[str]:
    """The secrets of `STACKONE_CONNECT_WEBHOOK_SECRETS_FILE`, if set (a start-up error
    naming it when it cannot be read)."""
    if settings.webhook_secrets_file is None:
        return []
    try:
        return read_secrets(settings.webhook_secrets_file)
    except InvalidSecretsFile as error:
        raise ConfigurationError(f"{ENV_PREFIX}WEBHOOK_SECRETS_FILE: {error}") from error


def _webhook_secrets(settings: Settings, stackone: _StackOne, metrics: Metrics) -> WebhookSecrets:
    """The secrets webhooks are checked against: the settings' (or the emulator's own),
    and those of the secrets file, re-read when it changes."""
    path = settings.webhook_secrets_file
    fixed = (
        stackone.webhook_secrets
        if path is None
        else [secret.get_secret_value() for secret in settings.webhook_secrets]
    )
    reloads = metrics.credential_reloads
    try:
        return WebhookSecrets(
            fixed, path, reported=lambda outcome: reloads.labels("webhook_secrets", outcome).inc()
        )
    except InvalidSecretsFile as error:
        raise ConfigurationError(f"{ENV_PREFIX}WEBHOOK_SECRETS_FILE: {error}") from error


@asynccontextmanager
async def _audit_trail(settings: Settings, metrics: Metrics) -> AsyncIterator[AuditTrail | None]:
    """The audit trail `STACKONE_CONNECT_AUDIT_SINK` names (none when unset), closed once
    the gRPC server has stopped, its last records written."""
    if settings.audit_sink is None:
        yield None
        return
    try:
        sink = open_sink(settings.audit_sink)
    except OSError as error:
        raise ConfigurationError(
            f"{ENV_PREFIX}AUDIT_SINK: cannot open {settings.audit_sink}: {error.strerror}"
        ) from error
    trail = AuditTrail(sink, fail_closed=settings.audit_fail_closed, metrics=metrics)
    try:
        yield trail
    finally:
        await trail.close()


def tls_material(settings: Settings) -> TlsMaterial | None:
    """Where the gRPC server's TLS credentials come from (None: plaintext), each file
    named by its setting."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    client_ca = settings.tls_client_ca_file
    return TlsMaterial(
        PemFile(settings.tls_cert_file, f"{ENV_PREFIX}TLS_CERT_FILE"),
        PemFile(settings.tls_key_file, f"{ENV_PREFIX}TLS_KEY_FILE"),
        None if client_ca is None else PemFile(client_ca, f"{ENV_PREFIX}TLS_CLIENT_CA_FILE"),
    )


def grpc_server_options(settings: Settings) -> GrpcServerOptions:
    """The gRPC server's options, from the settings, as `event_log_options` the log's."""
    return GrpcServerOptions(
        address=settings.grpc_address,
        tls=tls_material(settings),
        clients_file=settings.clients_file,
        calls_per_minute=settings.rate_limit,
        max_streams=settings.max_streams,
        max_streams_per_connection=settings.max_streams_per_connection,
        address_setting=f"{ENV_PREFIX}GRPC_ADDRESS",
        max_streams_setting=f"{ENV_PREFIX}MAX_STREAMS",
    )


def _page_tokens(settings: Settings) -> PageTokens:
    """Page tokens sealed with `STACKONE_CONNECT_PAGE_TOKEN_KEY`, else with a key derived
    from the real StackOne API key (which every replica shares)."""
    configured = settings.page_token_key
    api_key = None if settings.uses_emulator else settings.api_key
    return PageTokens(
        page_token_key(
            None if configured is None else configured.get_secret_value(),
            None if api_key is None else api_key.get_secret_value(),
        )
    )


def event_log_options(settings: Settings) -> EventLogOptions:
    """The options of the log `STACKONE_CONNECT_EVENT_LOG_URL` names, for its backend;
    `UnsupportedEventLogUrl` when no backend opens that URL (the settings cannot tell:
    they know no backend)."""
    url = settings.event_log_url
    if backend_for(url) is sqlite.BACKEND:
        return sqlite.SqliteOptions(
            sqlite.path_of(urlparse(url)), settings.retention, inbox_limit=settings.inbox_limit
        )
    return jetstream.JetStreamOptions(
        url,
        stream=settings.jetstream_stream,
        subject_prefix=settings.jetstream_subject_prefix,
        storage=settings.jetstream_storage,
        replicas=settings.jetstream_replicas,
        retention=settings.retention,
        inbox_limit=settings.inbox_limit,
        # A webhook stays pending until the verifier's deadline at most.
        inbox_duplicate_window=max(120.0, 2 * settings.verify_deadline),
    )


@asynccontextmanager
async def _event_log(settings: Settings, metrics: Metrics) -> AsyncIterator[EventLog]:
    """The log `STACKONE_CONNECT_EVENT_LOG_URL` names, closed (flushed) at the end; a log
    that cannot be opened (in use, damaged, cannot be created) is a one-line start-up error."""
    try:
        event_log = await open_event_log(
            event_log_options(settings),
            report_failure=lambda task: metrics.background_failures.labels(task).inc(),
        )
    except (UnsupportedEventLogUrl, EventLogUnavailable) as error:
        raise ConfigurationError(f"{error} ({ENV_PREFIX}EVENT_LOG_URL)") from error
    try:
        yield event_log
    finally:
        await event_log.close()


@asynccontextmanager
async def _request_records(
    settings: Settings, event_log: EventLog
) -> AsyncIterator[RequestRecords]:
    """Retryable calls' records in the log's storage; a claim whose call outlives the
    longest a StackOne call may take, with room to spare, is taken over (see
    `service.rpc.retryable`)."""
    records = await open_request_records(
        event_log_options(settings),
        event_log,
        window=settings.request_id_window,
        lease=max(60.0, 3 * settings.upstream_timeout),
    )
    try:
        yield records
    finally:
        await records.close()


@asynccontextmanager
async def _rate_budget(settings: Settings, metrics: Metrics) -> AsyncIterator[RateBudget]:
    """The StackOne budget; on a JetStream log, shared with every replica through NATS."""
    budget = RateBudget(
        settings.rate_limit,
        window=settings.rate_window,
        caller_reserve=settings.rate_caller_reserve,
        metrics=metrics,
    )
    log = event_log_options(settings)
    if not isinstance(log, jetstream.JetStreamOptions):
        yield budget
        return
    sharing = BudgetSharing(
        log.url, f"{log.stream}_BUDGET", settings.rate_replicas, settings.rate_lease_block,
        settings.rate_lease_renew, settings.upstream_timeout, log.storage, log.replicas,
    )  # fmt: skip
    async with shared(budget, sharing):
        yield budget


def _stackone_client(
    stackone: _StackOne, budget: RateBudget, metrics: Metrics, tracing: Tracing
) -> StackOneClient:
    """The one StackOne client, spending one budget for every call: callers,
    verification and reconciliation."""
    return StackOneClient(
        stackone.base_url,
        stackone.api_key,
        observer=metrics.observe_upstream,
        budget=budget,
        tracing=tracing,
    )


@asynccontextmanager
async def _subscriptions(
    event_log: EventLog, metrics: Metrics
) -> AsyncIterator[SubscriptionManager | None]:
    """The subscriptions' dispatchers, on a log that keeps subscriptions (SQLite for now)."""
    if not isinstance(event_log, sqlite.SqliteEventLog):
        yield None
        return
    manager = await SubscriptionManager.open(await event_log.subscriptions(), event_log)
    collector = SubscriptionCollector(manager)
    metrics.registry.register(collector)
    try:
        yield manager
    finally:
        metrics.registry.unregister(collector)
        await manager.close()


@dataclass(slots=True)
class _Serving:
    """The listening front doors and the health they report."""

    gateway: ListeningApp
    admin: ListeningApp
    grpc_port: int
    health: HealthReporter


@asynccontextmanager
async def _serving(
    settings: Settings,
    stackone: _StackOne,
    client: StackOneClient,
    event_log: EventLog,
    metrics: Metrics,
    tracing: Tracing,
    health: Health,
) -> AsyncIterator[_Serving]:
    """The gateway and the gRPC server, SERVING once both listen; on exit, the graceful
    stop: NOT_SERVING, no new webhooks, streams told to reconnect, both drained within
    one grace period."""
    gateway_state = GatewayState(
        ingestor=Ingestor(event_log, record_alone=record_alone, metrics=metrics),
        secrets=_webhook_secrets(settings, stackone, metrics),
        url_token=(
            settings.webhook_url_token.get_secret_value() if settings.webhook_url_token else None
        ),
        health=health,
        metrics=metrics,
        body_timeout=settings.gateway_body_timeout,
    )
    async with (
        listening(
            init_app(gateway_state, tracing),
            *split_address(settings.gateway_address),
            shutdown_timeout=settings.shutdown_grace,
            keepalive_timeout=settings.gateway_idle_timeout,
            max_connections=settings.gateway_max_connections,
            purpose=f"{ENV_PREFIX}GATEWAY_ADDRESS",
        ) as gateway,
        listening(
            init_admin_app(gateway_state),
            *split_address(settings.admin_address),
            shutdown_timeout=settings.shutdown_grace,
            purpose=f"{ENV_PREFIX}ADMIN_ADDRESS",
        ) as admin,
        _audit_trail(settings, metrics) as audit,
        _subscriptions(event_log, metrics) as subscriptions,
        _request_records(settings, event_log) as request_records,
    ):
        stackone.deliver_webhooks_to(gateway)
        draining = asyncio.Event()
        servicer = ConnectServicer(
            client,
            event_log,
            bookmark_interval=settings.bookmark_interval,
            stop=draining,
            upstream_timeout=settings.upstream_timeout,
            metrics=metrics,
            page_tokens=_page_tokens(settings),
            subscriptions=subscriptions,
            request_records=request_records,
        )
        reporter = new_health_servicer()
        server, grpc_port = build_grpc_server(
            servicer, reporter, grpc_server_options(settings), metrics, tracing, audit=audit
        )
        await server.start()
        health.subscribe(grpc_health(reporter))
        await health.run_checks()
        try:
            yield _Serving(gateway, admin, grpc_port, reporter)
        finally:
            await health.shut_down()
            await reporter.enter_graceful_shutdown()
            gateway_state.accepting = False
            draining.set()
            event_log.stop_waits()  # idle streams see `draining` now, not at their next wake
            await asyncio.gather(server.stop(settings.shutdown_grace), gateway.stop())


@asynccontextmanager
async def _background(
    settings: Settings,
    client: StackOneClient,
    event_log: EventLog,
    metrics: Metrics,
    health: Health,
    tracing: Tracing,
) -> AsyncIterator[None]:
    """The health checks' periodic run, the verifier and (unless turned off) the
    reconciler, until the block exits."""

    async def registry_reported(_complete: bool) -> None:
        await health.run_checks()  # both surfaces learn of it now, not at the next run

    verifier = Verifier(
        event_log,
        client,
        metrics=metrics,
        deadline=settings.verify_deadline,
        quiet=settings.verify_quiet,
        lookup_timeout=settings.upstream_timeout,
        tracing=tracing,
        upgrade=upgraded,  # entries an earlier release left in the inbox
    )
    tasks = [
        asyncio.create_task(health.run(settings.readiness_interval), name="readiness"),
        asyncio.create_task(verifier.run(), name="verifier"),
        asyncio.create_task(metrics.watch_loop_lag(), name="loop-lag"),
    ]
    if settings.reconcile_interval > 0:
        reconciler = Reconciler(
            event_log,
            client,
            interval=settings.reconcile_interval,
            grace=settings.reconcile_grace,
            metrics=metrics,
            report_complete=registry_reported,
            tracing=tracing,
        )
        tasks.append(asyncio.create_task(reconciler.run()))
    try:
        yield
    finally:
        await cancel_all(tasks)


@asynccontextmanager
async def _tracing(tracing: Tracing | None) -> AsyncIterator[Tracing]:
    """`tracing`, or as the `OTEL_*` variables configure it (its spans exported at exit)."""
    if tracing is not None:
        yield tracing
        return
    try:
        configured = tracing_from_environment()
    except TracingConfigError as error:
        raise ConfigurationError(str(error)) from error
    try:
        yield configured
    finally:
        await asyncio.to_thread(configured.shutdown)  # flushing waits on the collector


@asynccontextmanager
async def running(settings: Settings, tracing: Tracing | None = None) -> AsyncIterator[Runtime]:
    """Runs the whole service until the block exits, then stops it gracefully; `tracing`
    (None: as the `OTEL_*` variables say) receives its spans."""
    async with AsyncExitStack() as stack:
        tracing = await stack.enter_async_context(_tracing(tracing))
        stackone = await stack.enter_async_context(_stackone(settings, tracing))
        metrics = Metrics()
        event_log = await stack.enter_async_context(_event_log(settings, metrics))
        metrics.latest_cursor.set_function(lambda: event_log.latest_cursor)
        budget = await stack.enter_async_context(_rate_budget(settings, metrics))
        client = await stack.enter_async_context(
            _stackone_client(stackone, budget, metrics, tracing)
        )
        health = declare_health(event_log, event_log, metrics)
        serving = await stack.enter_async_context(
            _serving(settings, stackone, client, event_log, metrics, tracing, health)
        )
        await stack.enter_async_context(
            _background(settings, client, event_log, metrics, health, tracing)
        )
        runtime = Runtime(
            settings,
            serving.grpc_port,
            serving.gateway,
            serving.admin,
            stackone.emulator,
            event_log,
            serving.health,
        )
        _log.info(
            "stackone-connect serving: gRPC on %s, gateway on %s, admin on %s",
            runtime.grpc_target,
            serving.gateway.base_url,
            serving.admin.base_url,
            extra={
                "grpc_target": runtime.grpc_target,
                "gateway_url": serving.gateway.base_url,
                "admin_url": serving.admin.base_url,
            },
        )
        try:
            yield runtime
        finally:
            _log.info("shutting down", extra={"grace_seconds": settings.shutdown_grace})
