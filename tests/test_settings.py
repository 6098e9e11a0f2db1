"""Settings: validated at start-up, documented in the README."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import Settings, settings_table

README = Path(__file__).parent.parent / "README.md"


def test_the_readme_documents_every_setting() -> None:
    """The README's settings table is exactly the one generated from Settings."""
    assert settings_table() in README.read_text()


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
