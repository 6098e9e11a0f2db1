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
        Settings()  # type: ignore[call-arg]
