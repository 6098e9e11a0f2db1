"""Runs the example app alone, against a service already running:
`python -m examples.web` (settings in `Config.from_environment`, address EXAMPLE_ADDRESS)."""

import os

from aiohttp import web

from examples.web.app import Config, build_app
from service.tracing import from_environment as tracing_from_environment

if __name__ == "__main__":
    host, _, port = os.environ.get("EXAMPLE_ADDRESS", "127.0.0.1:8000").rpartition(":")
    tracing = tracing_from_environment()  # OTEL_* as for the service: off without them
    app = build_app(Config.from_environment(), tracing)
    # No lingering: a body the app leaves unread is not read (and decoded) after the answer.
    web.run_app(
        app, host=host, port=int(port), handler_cancellation=True, shutdown_timeout=1,
        lingering_time=0,
    )  # fmt: skip
    tracing.shutdown()
