"""The service's settings: one object, read from the environment and validated at start-up.

Every field is documented where it is defined; the settings table of docs/settings.md is
generated from this class (`python -m service.config --write-docs`) and checked by a test.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.events.model import Retention

ENV_PREFIX = "STACKONE_CONNECT_"
# Every duration is finite seconds, at most ten years: each part holds that much (JetStream
# keeps durations as int64 nanoseconds, ~292 years; asyncio and grpc deadlines, less).
MAX_SECONDS = 10 * 365 * 24 * 3600
# Every count fits a signed 64-bit integer, as SQLite and JetStream store them.
MAX_COUNT = 2**63 - 1
Seconds = Annotated[float, Field(allow_inf_nan=False, le=MAX_SECONDS)]
Count = Annotated[int, Field(le=MAX_COUNT)]


MIN_SECRET_CHARS = 16
"""The shortest webhook signing secret taken (StackOne's are longer): a shorter one is a
typo, a truncated copy or a placeholder, and every webhook would be refused."""


def secret_problem(secret: str) -> str | None:
    """Why `secret` cannot be a webhook signing secret, if it cannot (never the secret)."""
    if not secret.isprintable():
        return "holds characters that cannot be typed (a byte-order mark or a copy's?)"
    if any(character.isspace() for character in secret):
        return "holds a space (a comment goes on a line of its own, starting with #)"
    if len(secret) < MIN_SECRET_CHARS:
        return f"has {len(secret)} characters: a signing secret has at least {MIN_SECRET_CHARS}"
    return None


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"'{value}' is not a host:port address (e.g. 127.0.0.1:50051)")
    return value


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_address(value: str) -> tuple[str, int]:
    """Splits a validated `host:port` address (IPv6 hosts may be in brackets)."""
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


class Settings(BaseSettings):
    """Configuration of `stackone-connect serve`, from `STACKONE_CONNECT_*` variables."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    grpc_address: str = Field(
        "127.0.0.1:50051", description="host:port the gRPC server listens on (port 0: any)."
    )
    gateway_address: str = Field(
        "127.0.0.1:8080", description="host:port the webhook gateway listens on (port 0: any)."
    )
    admin_address: str = Field(
        "127.0.0.1:9464",
        description="host:port of the admin listener: /metrics, /readyz and /healthz (port 0:"
        " any). Keep it off the internet: it is not authenticated.",
    )
    gateway_max_connections: Count = Field(
        1000,
        ge=1,
        description="Open connections the webhook gateway accepts; past it, new ones get 503.",
    )
    gateway_idle_timeout: Seconds = Field(
        15.0,
        gt=0,
        description="Seconds a gateway connection may take to send a request's headers, new"
        " or kept alive between requests, before it is closed.",
    )
    gateway_body_timeout: Seconds = Field(
        10.0,
        gt=0,
        description="Seconds a webhook's body may take to arrive before the gateway answers 408.",
    )
    api_key: SecretStr | None = Field(
        None,
        description="StackOne API key. Unset: the bundled StackOne emulator is started and used.",
    )
    base_url: str = Field(
        "https://api.stackone.com",
        description="StackOne API base URL (ignored when the emulator is used).",
    )
    webhook_secrets: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated webhook signing secrets, each 16 or more printable"
        " characters without spaces; several are accepted for rotation. Unset with the"
        " emulator: a random one is shared with it.",
    )
    webhook_url_token: SecretStr | None = Field(
        None,
        description="Optional second check: webhooks must carry `?token=<this>` in their URL.",
    )
    page_token_key: SecretStr | None = Field(
        None,
        description="Key that seals `ListAccounts` page tokens (encrypted, authenticated, bound"
        " to their client), at least 32 characters; replicas behind one address must share it."
        " Unset: derived from the API key (shared by every replica), or random per process"
        " with the emulator.",
    )
    # Checked against the backends by the composition root (`runtime.event_log_options`),
    # with the same one-line error: the settings know no backend.
    event_log_url: str = Field(
        "sqlite:///var/events.db",
        description="Where events are recorded: `sqlite:///relative/path.db` or "
        "`sqlite:////absolute/path.db` (one process), or `nats://host:4222` for NATS "
        "JetStream shared by several replicas.",
    )
    jetstream_stream: str = Field(
        "STACKONE_CONNECT_EVENTS",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="JetStream stream of the events (created or updated at start-up); its "
        "max age, max messages and duplicate window follow the retention settings.",
    )
    jetstream_subject_prefix: str = Field(
        "stackone_connect.events",
        pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$",
        description="Subjects of the stream: `<prefix>.<account>`.",
    )
    jetstream_storage: Literal["file", "memory"] = Field(
        "file", description="JetStream storage of the stream and its buckets."
    )
    jetstream_replicas: int = Field(
        1, ge=1, le=5, description="JetStream replicas of the stream (a NATS cluster's size)."
    )
    emulator_address: str = Field(
        "127.0.0.1:8090",
        description="host:port of the bundled StackOne emulator, when it is started.",
    )
    emulator_api_key: str = Field(
        "local-emulator-key",
        min_length=1,
        max_length=255,
        pattern=r"^[!-~]+$",
        description="API key the bundled emulator accepts (the Basic-auth user name, empty"
        " password), so curl or StackOne's own SDK can call it as well; not a secret: the"
        " emulator listens on loopback only.",
    )
    emulator_latency: Seconds = Field(
        0.0,
        ge=0,
        description="Seconds the bundled emulator waits before answering each StackOne call.",
    )
    emulator_rate_limit: Count | None = Field(
        None,
        gt=0,
        description="StackOne calls per minute the bundled emulator allows per API key (429"
        " with Retry-After beyond); unset: no limit.",
    )
    emulator_sdk_shapes: Literal["2026-06", "4.34", "4.28"] = Field(
        "2026-06",
        description="Which StackOne models' answer shapes the bundled emulator plays:"
        " `2026-06` (today's: sessions with `connector_profile_id` and"
        " `latest_connection_attempt`, accounts with `categories`), `4.34` (the TypeScript"
        " SDK 4.34: `organization_id` a string, `integration_id` on sessions, `shared` on"
        " accounts) or `4.28` (`organization_id` a number, none of these fields).",
    )
    emulator_state_file: Path | None = Field(
        None,
        description="JSON file where the bundled emulator keeps its sessions and accounts"
        " across restarts (rewritten after each change), so a restarted service agrees with"
        " its event log; unset: `emulator.json` beside a SQLite event log, none with JetStream.",
    )
    upstream_timeout: Seconds = Field(
        10.0, gt=0, description="Seconds a StackOne call may take when the caller sets no deadline."
    )
    request_id_window: Seconds = Field(
        86400.0,
        gt=0,
        description="Seconds a `request_id` of CreateSession or DeleteAccount is remembered in"
        " the event log's storage: a retry with it within this time gets the first call's"
        " answer without a second StackOne call, on any replica.",
    )
    rate_limit: Count = Field(
        1000,
        gt=0,
        description="StackOne calls allowed per minute (per `RATE_WINDOW`) for this API key,"
        " shared by every call this service makes; with a JetStream log, by every replica"
        " (through NATS): set the key's whole limit on each.",
    )
    rate_window: Seconds = Field(
        60.0, gt=0, description="Seconds of StackOne's sliding window the rate limit counts in."
    )
    rate_replicas: Count = Field(
        1,
        ge=1,
        description="Replicas a JetStream deployment runs: while NATS is away each spends at"
        " most the limit (and each client's calls_per_minute) ÷ this, or ÷ the replicas it"
        " last saw alive if more.",
    )
    rate_lease_block: Count = Field(
        20,
        gt=0,
        description="Calls of the rate limit a replica leases from NATS at a time (JetStream"
        " only); it gives back what it does not use at each renewal.",
    )
    rate_lease_renew: Seconds = Field(
        5.0,
        gt=0,
        description="Seconds between a replica's budget renewals (JetStream only): a replica"
        " that dies gives its share back within `RATE_WINDOW` plus twice this.",
    )
    rate_caller_reserve: float = Field(
        0.2,
        ge=0,
        lt=1,
        allow_inf_nan=False,
        description="Share of the rate limit kept for callers' RPCs: webhook verification and"
        " reconciliation never use it.",
    )
    verify_deadline: Seconds = Field(
        60.0,
        gt=0,
        description="Seconds from a webhook's receipt within which its event is recorded: "
        "verified with StackOne if it answered in time, otherwise unverified with the reason.",
    )
    verify_quiet: Seconds = Field(
        1.0,
        ge=0,
        description="Seconds the verifier waits for more webhooks of an account before "
        "looking it up, so that a burst shares one look-up (at most 5 times this after "
        "the first webhook). Webhooks that need no look-up are recorded at once.",
    )
    inbox_limit: Count = Field(
        100_000,
        gt=0,
        description="Most webhooks waiting for verification; past it the gateway answers 503 "
        "with Retry-After, so StackOne retries later instead of the disk filling.",
    )
    bookmark_interval: Seconds = Field(
        15.0, gt=0, description="Seconds of silence after which a stream receives a bookmark."
    )
    max_streams: Count = Field(
        10_000,
        ge=1,
        description="Event streams (StreamAccountEvents) open at once on this server; past it"
        " a new one is refused with RESOURCE_EXHAUSTED. Each idle stream holds ~25 KiB, so"
        " the default bounds them to ~250 MiB.",
    )
    max_streams_per_connection: int = Field(
        1000,
        ge=1,
        le=2**31 - 1,
        description="Calls, streams included, one gRPC connection may have open at once"
        " (HTTP/2 max concurrent streams); a grpc client queues more until one ends, so"
        " a client needing more opens more connections. ~25 MiB of idle streams at the"
        " default.",
    )
    retention_max_age: Seconds = Field(
        7 * 24 * 3600.0, gt=0, description="Seconds events are kept (default 7 days)."
    )
    retention_max_count: Count | None = Field(
        None, gt=0, description="Most events kept; unset keeps any number within the age."
    )
    dedup_window: Seconds = Field(
        7 * 24 * 3600.0,
        gt=0,
        description="Seconds a webhook is remembered to drop redeliveries (default 7 days).",
    )
    reconcile_interval: Seconds = Field(
        300.0,
        ge=0,
        description="Seconds between reconciliation sweeps against StackOne's account list"
        " (0 turns reconciliation off).",
    )
    reconcile_grace: Seconds = Field(
        60.0,
        ge=0,
        description="Seconds a just-changed account is left for its webhook before"
        " reconciliation reports the change itself.",
    )
    readiness_interval: Seconds = Field(
        5.0, gt=0, description="Seconds between checks that the event log is writable (health)."
    )
    shutdown_grace: Seconds = Field(
        10.0, ge=0, description="Seconds in-flight work gets to finish on SIGTERM/SIGINT."
    )
    log_level: str = Field("INFO", description="Logging level: DEBUG, INFO, WARNING or ERROR.")
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate chain of the gRPC server; with the key, serves TLS."
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of the gRPC server.")
    tls_client_ca_file: Path | None = Field(
        None,
        description="PEM CA bundle; when set, clients must present a certificate it signed"
        " (mutual TLS).",
    )
    clients_file: Path | None = Field(
        None,
        description="JSON file of clients: each a bearer token and/or a certificate URI"
        " (mutual TLS), scopes, and optionally the owners it acts for and its StackOne calls"
        " per minute; re-read when its content changes. Unset: no token is required.",
    )
    allow_insecure: bool = Field(
        False,
        description="Serve gRPC on a non-loopback address without client authentication"
        " (tokens or mutual TLS); only behind a proxy that authenticates.",
    )
    audit_sink: str | None = Field(
        None,
        min_length=1,
        description="Where the audit trail goes (one record per CreateSession and"
        " DeleteAccount, and per call denied by authentication or authorization): a file"
        " path (JSON lines, fsync'd before the call answers) or `log` (the service log)."
        " Unset: no audit trail.",
    )
    audit_fail_closed: bool = Field(
        False,
        description="Refuse CreateSession and DeleteAccount with UNAVAILABLE, before any"
        " StackOne call, when their audit record cannot be written (needs a file"
        " AUDIT_SINK).",
    )
    webhook_secrets_file: Path | None = Field(
        None,
        description="File of webhook signing secrets, one a line (`#` starts a comment line;"
        " a byte-order mark, CRLF and spaces around a secret are ignored), accepted with"
        " WEBHOOK_SECRETS; re-read when its content changes (at most every second), so"
        " secrets rotate without a restart. A bad new version is logged and the previous"
        " secrets stay in force.",
    )

    @field_validator("grpc_address", "gateway_address", "admin_address", "emulator_address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        return _host_port(value)

    @field_validator("webhook_secrets", mode="before")
    @classmethod
    def _split_secrets(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("webhook_secrets")
    @classmethod
    def _check_secrets(cls, value: list[SecretStr]) -> list[SecretStr]:
        for number, secret in enumerate(value, 1):
            if problem := secret_problem(secret.get_secret_value()):
                raise ValueError(f"secret {number} of {len(value)} {problem}")
        return value

    @field_validator("page_token_key")
    @classmethod
    def _check_page_token_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters (a random key, not a password)")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        if value.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError(f"'{value}' is not one of DEBUG, INFO, WARNING, ERROR")
        return value.upper()

    @model_validator(mode="after")
    def _dedup_covers_retention(self) -> Settings:
        if self.dedup_window < self.retention_max_age:
            raise ValueError(
                f"{ENV_PREFIX}DEDUP_WINDOW ({self.dedup_window:g}s) must be at least "
                f"{ENV_PREFIX}RETENTION_MAX_AGE ({self.retention_max_age:g}s), or a retried "
                "webhook could be recorded twice"
            )
        return self

    @model_validator(mode="after")
    def _tls_files_pair(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                f"{ENV_PREFIX}TLS_CERT_FILE and {ENV_PREFIX}TLS_KEY_FILE must be set together"
            )
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError(
                f"{ENV_PREFIX}TLS_CLIENT_CA_FILE (mutual TLS) needs {ENV_PREFIX}TLS_CERT_FILE "
                f"and {ENV_PREFIX}TLS_KEY_FILE"
            )
        return self

    @field_validator("audit_sink")
    @classmethod
    def _check_audit_sink(cls, value: str | None) -> str | None:
        if value is None or value == "log":
            return value
        path = Path(value)
        if path.is_dir() or not path.parent.is_dir():
            raise ValueError(f"'{value}' is neither `log` nor a file path in an existing folder")
        return value

    @model_validator(mode="after")
    def _fail_closed_needs_file(self) -> Settings:
        if self.audit_fail_closed and self.audit_sink in (None, "log"):
            raise ValueError(
                f"{ENV_PREFIX}AUDIT_FAIL_CLOSED needs {ENV_PREFIX}AUDIT_SINK to name a file: "
                "only a file's write is known to have succeeded"
            )
        return self

    @model_validator(mode="after")
    def _refuse_open_exposure(self) -> Settings:
        host = split_address(self.grpc_address)[0]
        # Server-only TLS hides the traffic but lets anyone in: callers must authenticate.
        authenticated = self.clients_file is not None or self.tls_client_ca_file is not None
        if not (is_loopback(host) or authenticated or self.allow_insecure):
            raise ValueError(
                f"refusing to serve gRPC on {self.grpc_address} without client authentication: "
                "anyone who can reach it could create sessions and read accounts. Set "
                f"{ENV_PREFIX}CLIENTS_FILE (bearer tokens) and/or {ENV_PREFIX}TLS_CLIENT_CA_FILE "
                f"(mutual TLS), or {ENV_PREFIX}ALLOW_INSECURE=true if a proxy in front "
                "authenticates callers"
            )
        return self

    @model_validator(mode="after")
    def _emulator_on_loopback(self) -> Settings:
        host = split_address(self.emulator_address)[0]
        if not is_loopback(host):
            raise ValueError(
                f"{ENV_PREFIX}EMULATOR_ADDRESS ({self.emulator_address}) must be a loopback "
                "address: the emulator accepts any request and is for local use only"
            )
        return self

    @property
    def uses_emulator(self) -> bool:
        """True when no API key is set, so the bundled emulator stands in for StackOne."""
        return self.api_key is None or not self.api_key.get_secret_value()

    @property
    def retention(self) -> Retention:
        """How long the event log keeps events and remembers their ids."""
        return Retention(
            max_age=self.retention_max_age,
            max_count=self.retention_max_count,
            dedup_window=self.dedup_window,
        )


SETTINGS_PAGE = Path("docs/settings.md")


def settings_table() -> str:
    """The settings table of `SETTINGS_PAGE`, generated from the fields above."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, info in Settings.model_fields.items():
        default = info.get_default(call_default_factory=True)
        shown = "(unset)" if default in (None, []) else f"`{default}`"
        rows.append(f"| `{ENV_PREFIX}{name.upper()}` | {shown} | {info.description} |")
    return "\n".join(rows)


def write_settings_table(page: Path) -> None:
    """Replaces the generated settings table of `page` with the current one."""
    text = page.read_text()
    start = text.index("\n", text.index("<!-- settings:start")) + 1
    end = text.index("<!-- settings:end -->")
    page.write_text(text[:start] + settings_table() + "\n" + text[end:])


if __name__ == "__main__":
    import sys

    if sys.argv[1:] in (["--write-docs"], ["--write-readme"]):  # the second: its old name
        write_settings_table(SETTINGS_PAGE)
    else:
        print(settings_table())
