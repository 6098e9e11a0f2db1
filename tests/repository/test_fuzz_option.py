"""The long fuzzing runs need `--fuzz`: no `-m` expression can start them by accident."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_marker_expression_does_not_start_the_long_fuzzing_runs() -> None:
    """`pytest -m "not slow"` (which replaces any `-m` in addopts) skips the fuzz-marked
    10,000-example runs, saying they need --fuzz."""
    selected = [
        "tests/gateway/test_webhook_fuzz.py",
        "tests/rpc/test_grpc_fuzz.py",
        "-k",
        "ten_thousand",
    ]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "not slow", *selected],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 skipped" in run.stdout
    assert run.stdout.count("needs --fuzz") == 2
