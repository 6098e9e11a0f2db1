"""The console script run as a person runs it, against a service's gRPC target."""

from __future__ import annotations

import sys

from tests.harness.processes import run_to_end

CLI = [sys.executable, "-m", "service.cli"]


async def cli(target: str, *args: str, timeout: float = 20) -> tuple[int, str, str]:
    """Runs `stackone-connect ARGS --target TARGET`; returns exit code, stdout, stderr."""
    return await run_to_end([*CLI, *args, "--target", target], timeout=timeout)
