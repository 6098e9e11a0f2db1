"""Start-up refusals: runs `serve` with settings and returns the one line it refuses them with."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.harness.processes import SERVE, serve_env

PREFIX = "stackone-connect: invalid configuration: STACKONE_CONNECT_"


def refusal(tmp_path: Path, **settings: str) -> str:
    """Runs `serve` with `STACKONE_CONNECT_<name>=<value>` for each of `settings`; asserts it
    exits 2 having written one line (no traceback) to stderr, and returns that line."""
    env = serve_env(
        tmp_path, "whsec-test-secret", **{f"STACKONE_CONNECT_{k}": v for k, v in settings.items()}
    )
    result = subprocess.run(
        SERVE, env={**os.environ, **env}, capture_output=True, text=True, timeout=30, check=False
    )
    assert "Traceback" not in result.stderr
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    return lines[0]
