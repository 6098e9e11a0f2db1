"""Settings: validated at start-up, documented in docs/settings.md."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

import pytest
from pydantic import ValidationError

from service.config import MAX_SECONDS, SETTINGS_PAGE, Settings, settings_table
from service.events.jetstream import JetStreamOptions
from service.events.sqlite import SqliteOptions
from service.runtime import event_log_options

REPOSITORY = Path(__file__).parents[2]


def test_the_docs_document_every_setting() -> None:
    """docs/settings.md's table is exactly the one generated from Settings."""
    assert settings_table() in (REPOSITORY / SETTINGS_PAGE).read_text()


def test_a_bad_setting_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A malformed address fails validation with a message naming the field."""
    monkeypatch.setenv("STACKONE_CONNECT_GRPC_ADDRESS", "no-port")
    with pytest.raises(ValueError, match="grpc_address"):
        Settings()


def test_a_non_loopback_bind_without_tls_or_tokens_is_refused() -> None:
    """0.0.0.0 with no TLS and no clients file is refused unless explicitly allowed."""
    with pytest.raises(ValueError, match="ALLOW_INSECURE"):
        Settings(grpc_address="0.0.0.0:50051")
    assert Settings(grpc_address="0.0.0.0:50051", allow_insecure=True).allow_insecure


def test_server_only_tls_on_a_non_loopback_address_is_refused(tmp_path: Path) -> None:
    """TLS without client authentication (tokens or mutual TLS) still lets anyone in."""
    pem = tmp_path / "server.pem"
    pem.write_text("not read by the settings")
    with pytest.raises(ValueError, match="without client authentication"):
        Settings(grpc_address="0.0.0.0:50051", tls_cert_file=pem, tls_key_file=pem)
    assert Settings(
        grpc_address="0.0.0.0:50051", tls_cert_file=pem, tls_key_file=pem, tls_client_ca_file=pem
    ).tls_client_ca_file


def test_the_emulator_never_listens_beyond_loopback() -> None:
    """The emulator accepts anything, so a non-loopback address for it is refused."""
    with pytest.raises(ValueError, match="EMULATOR_ADDRESS"):
        Settings(emulator_address="0.0.0.0:0")
    with pytest.raises(ValueError, match="EMULATOR_ADDRESS"):
        Settings(emulator_address="0.0.0.0:0", allow_insecure=True)


def _is_number(name: str) -> bool:
    """True for a setting holding an int or a float (optional or not; not a bool)."""
    annotation = Settings.model_fields[name].annotation
    kinds = {annotation, *get_args(annotation)}
    kinds |= {get_args(kind)[0] for kind in kinds if get_origin(kind) is Annotated}
    return bool(kinds & {int, float})


NUMBERS = [name for name in Settings.model_fields if _is_number(name)]


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e300", str(2**63)])
def test_every_number_is_finite_and_bounded(value: str) -> None:
    """No duration or count takes an infinite, NaN or unrepresentable value: each is
    refused naming its own setting (a non-finite duration as not finite)."""
    assert {"bookmark_interval", "retention_max_count"} <= set(NUMBERS)
    for name in NUMBERS:
        one: dict[str, Any] = {name: value}
        with pytest.raises(ValidationError) as refused:
            Settings(**one)
        [problem] = refused.value.errors()
        assert problem["loc"] == (name,)
        if value in {"inf", "-inf", "nan"} and Settings.model_fields[name].annotation is float:
            assert problem["type"] == "finite_number", name


def test_durations_reach_ten_years_and_counts_int64() -> None:
    """The bounds themselves are accepted: ten years of seconds, 2**63 - 1 events."""
    settings = Settings(
        retention_max_age=MAX_SECONDS, dedup_window=MAX_SECONDS, retention_max_count=2**63 - 1
    )
    assert settings.retention.max_age == 10 * 365 * 24 * 3600


def test_each_backend_gets_its_own_options_from_the_settings(tmp_path: Path) -> None:
    """The composition root builds the options of the backend the URL names: SQLite's file,
    retention and inbox limit; JetStream's server, stream, subjects, storage, replicas,
    and a duplicate window covering a webhook's wait for the verifier (twice its
    deadline, at least two minutes)."""
    sqlite = Settings(event_log_url=f"sqlite:///{tmp_path}/e.db", inbox_limit=7)
    assert event_log_options(sqlite) == SqliteOptions(
        tmp_path / "e.db", sqlite.retention, inbox_limit=7
    )
    nats = Settings(
        event_log_url="nats://nats:4222",
        jetstream_stream="S",
        jetstream_subject_prefix="s.p",
        jetstream_storage="memory",
        jetstream_replicas=3,
        retention_max_count=9,
        inbox_limit=7,
        verify_deadline=300,
    )
    assert event_log_options(nats) == JetStreamOptions(
        "nats://nats:4222",
        stream="S",
        subject_prefix="s.p",
        storage="memory",
        replicas=3,
        retention=nats.retention,
        inbox_limit=7,
        inbox_duplicate_window=600,
    )
    brief = Settings(event_log_url="tls://nats:4222", verify_deadline=1)
    assert event_log_options(brief) == JetStreamOptions(
        "tls://nats:4222", retention=brief.retention
    )
