"""`make demo` prints what the README shows, and stops what it started: the service ends
with the demo, however the demo is stopped (Ctrl-C, SIGTERM, SIGHUP, even SIGKILL)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from pathlib import Path

import pytest

from tests.harness.processes import serve_env
from tests.harness.support import WEBHOOK_SECRET, eventually
from tests.harness.walkthroughs import masked, walkthrough

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]
REPOSITORY = Path(__file__).resolve().parents[2]
DEMO_WALKTHROUGH = "Walk-through: link an account in StackOne's Hub"


def _any_port(line: str) -> str:
    return re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:<port>", masked(line, {}))


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def children(pid: int) -> list[int]:
    """The process ids of `pid`'s children (Linux)."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def is_gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie nobody reaped yet counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
async def test_stopping_the_demo_stops_the_service(tmp_path: Path, signum: signal.Signals) -> None:
    """The demo ready, then `signum`: the demo exits and its `serve` follows."""
    env = {
        **os.environ,
        **serve_env(tmp_path, WEBHOOK_SECRET),
        "EXAMPLE_ADDRESS": f"127.0.0.1:{free_port()}",
        "PYTHONPATH": str(REPOSITORY),
    }
    demo = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "examples.web.demo", cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert demo.stdout is not None
    try:
        banner: list[str] = []
        async with asyncio.timeout(60):
            while not banner or banner[-1] != "Ctrl-C stops everything.":
                line = await demo.stdout.readline()
                assert line, "the demo stopped before it was ready"
                banner.append(line.decode().rstrip("\n"))
        # What it printed is what the README's walk-through shows (this run's ports aside).
        shown = [masked(line, {}) for line in walkthrough(DEMO_WALKTHROUGH)[0].shown]
        assert [_any_port(line) for line in banner if line] == [_any_port(s) for s in shown]
        (serve,) = children(demo.pid)
        demo.send_signal(signum)
        async with asyncio.timeout(30):
            await demo.wait()
        await eventually(lambda: is_gone(serve), timeout=30)
    finally:
        if demo.returncode is None:
            demo.kill()
            await demo.wait()
