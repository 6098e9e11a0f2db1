"""`make demo` stops what it started: the service ends with the demo, however the demo
is stopped (Ctrl-C, SIGTERM, SIGHUP, even SIGKILL)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from tests.processes import serve_env
from tests.support import WEBHOOK_SECRET, eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]
REPOSITORY = Path(__file__).resolve().parents[1]


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
        async with asyncio.timeout(60):
            while not (await demo.stdout.readline()).startswith(b"Open http://"):
                assert demo.returncode is None, "the demo stopped before it was ready"
        (serve,) = children(demo.pid)
        demo.send_signal(signum)
        async with asyncio.timeout(30):
            await demo.wait()
        await eventually(lambda: is_gone(serve), timeout=30)
    finally:
        if demo.returncode is None:
            demo.kill()
            await demo.wait()
