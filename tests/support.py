"""Helpers shared by the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.signature import sign
from service.config import Settings

WEBHOOK_SECRET = "whsec-test-secret"


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a service on free loopback ports with its own event log."""
    values: dict[str, Any] = {
        "grpc_address": "127.0.0.1:0",
        "gateway_address": "127.0.0.1:0",
        "emulator_address": "127.0.0.1:0",
        "event_log_url": f"sqlite:///{tmp_path / 'events.db'}",
        "webhook_secrets": [WEBHOOK_SECRET],
        "bookmark_interval": 0.2,
        "shutdown_grace": 1.0,
    }
    values.update(overrides)
    return Settings(**values)


def signed_headers(body: bytes, secret: str = WEBHOOK_SECRET) -> dict[str, str]:
    """Headers of a webhook delivery signed the way StackOne signs it."""
    return {"content-type": "application/json", "x-stackone-signature": sign(secret, body)}
