"""Runs the real `stackone-connect serve` console script, and other commands tests check,
as separate OS processes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import orjson

SERVE = [sys.executable, "-m", "service.cli", "serve"]
READY_MESSAGE = "stackone-connect serving"


@dataclass
class ServeProcess:
    """A running `serve` process and where it listens."""

    process: asyncio.subprocess.Process
    grpc_target: str = ""
    gateway_url: str = ""
    admin_url: str = ""
    emulator_url: str = ""
    log_lines: list[dict[str, object]] = field(default_factory=list)
    _drain: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        """The OS process id."""
        return self.process.pid

    async def _read_until_ready(self) -> None:
        assert self.process.stderr is not None
        async with asyncio.timeout(30):
            while line := await self.process.stderr.readline():
                entry = self._record(line)
                if entry.get("emulator_url"):
                    self.emulator_url = str(entry["emulator_url"])
                if str(entry.get("message", "")).startswith(READY_MESSAGE):
                    self.grpc_target = str(entry["grpc_target"])
                    self.gateway_url = str(entry["gateway_url"])
                    self.admin_url = str(entry["admin_url"])
                    self._drain = asyncio.create_task(self._drain_stderr())
                    return
        raise RuntimeError(f"serve exited before it was ready: {self.log_lines}")

    def _record(self, line: bytes) -> dict[str, object]:
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            entry = {"message": line.decode(errors="replace").rstrip()}
        self.log_lines.append(entry)
        return entry if isinstance(entry, dict) else {"message": str(entry)}

    async def _drain_stderr(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self._record(line)

    async def stop(self, signum: int = signal.SIGTERM, timeout: float = 15) -> int:
        """Sends `signum` and returns the exit code (negative: killed by a signal)."""
        if self.process.returncode is None:
            self.process.send_signal(signum)
        async with asyncio.timeout(timeout):
            code = await self.process.wait()
        if self._drain is not None:
            await self._drain
        return code

    def print_log(self) -> None:
        """Prints every line the process logged so far, as it wrote them."""
        print(f"--- serve (pid {self.pid}) log, {len(self.log_lines)} lines ---")
        for entry in self.log_lines:
            print(orjson.dumps(entry).decode())

    def rss_kib(self) -> int:
        """Resident memory of the process in KiB, from /proc."""
        return rss_kib(self.pid)


def rss_kib(pid: int) -> int:
    """Resident memory of process `pid` in KiB, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1])


@asynccontextmanager
async def serve_process(env: Mapping[str, str]) -> AsyncIterator[ServeProcess]:
    """Starts `serve` with `env` added to the environment; kills it on exit if still alive."""
    process = await asyncio.create_subprocess_exec(
        *SERVE,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    serve = ServeProcess(process)
    try:
        await serve._read_until_ready()
        yield serve
    except BaseException:
        # pytest shows a failed test's output: the server's log says why it failed.
        serve.print_log()
        raise
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        if serve._drain is not None:
            serve._drain.cancel()


def serve_env(tmp_path: Path, secret: str, **extra: str) -> dict[str, str]:
    """Environment for a `serve` on free loopback ports with its event log in `tmp_path`."""
    return {
        "STACKONE_CONNECT_GRPC_ADDRESS": "127.0.0.1:0",
        "STACKONE_CONNECT_GATEWAY_ADDRESS": "127.0.0.1:0",
        "STACKONE_CONNECT_ADMIN_ADDRESS": "127.0.0.1:0",
        "STACKONE_CONNECT_EMULATOR_ADDRESS": "127.0.0.1:0",
        "STACKONE_CONNECT_EVENT_LOG_URL": f"sqlite:///{tmp_path / 'events.db'}",
        "STACKONE_CONNECT_WEBHOOK_SECRETS": secret,
        "STACKONE_CONNECT_BOOKMARK_INTERVAL": "0.2",
        "STACKONE_CONNECT_RECONCILE_INTERVAL": "0",
        **extra,
    }


async def run_to_end(
    command: Sequence[str],
    *,
    timeout: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[int, str, str]:
    """Runs `command` (with `env` added to the environment) until it exits; returns its
    exit code, stdout and stderr (`ended`)."""
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    return await ended(process, timeout)


async def ended(process: asyncio.subprocess.Process, timeout: float) -> tuple[int, str, str]:
    """Waits for a process started with piped output to exit, killing it (and failing the
    test) if it outlasts `timeout` s; returns its exit code and the rest of its stdout and
    stderr."""
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def lines_until(
    process: asyncio.subprocess.Process, prefix: str, timeout: float = 20
) -> tuple[list[str], str]:
    """Reads the process's output up to the first line starting with `prefix`; returns the
    lines before it and that line, failing the test if the output ends first."""
    assert process.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(timeout):
        while not (line := (await process.stdout.readline()).decode()).startswith(prefix):
            assert line, f"the output ended before a line starting {prefix!r}: {lines}"
            lines.append(line)
    return lines, line
