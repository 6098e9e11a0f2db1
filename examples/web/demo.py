"""`make demo`: the service (with the bundled emulator unless an API key is set) and the
example app, until Ctrl-C, SIGTERM or SIGHUP, which stop both. The service's log goes to
var/demo-serve.log."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import orjson
from aiohttp import web

from examples.web.app import Config, build_app
from service.tracing import from_environment as tracing_from_environment

READY = "stackone-connect serving"
LOG_PATH = Path("var/demo-serve.log")


class DemoFailed(Exception):
    """The demo cannot run; the message says why, in one line."""


async def _relay(stderr: asyncio.StreamReader, log: IO[bytes], ready: asyncio.Future[Any]) -> None:
    """Copies the service's log to `log`; resolves `ready` with its readiness line, or
    fails it with the service's own refusal (a line that is not a JSON log entry)."""
    emulator_url = None
    refusal = f"see {LOG_PATH}"
    while line := await stderr.readline():
        log.write(line)
        log.flush()
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            refusal = line.decode(errors="replace").strip() or refusal
            continue
        if isinstance(entry, dict):
            emulator_url = entry.get("emulator_url", emulator_url)
            if str(entry.get("message", "")).startswith(READY) and not ready.done():
                ready.set_result({**entry, "emulator_url": emulator_url})
    if not ready.done():
        ready.set_exception(DemoFailed(f"the service did not start: {refusal}"))


_PR_SET_PDEATHSIG = 1  # prctl(2)


def _end_with_parent() -> None:
    """Asks Linux to send this process SIGTERM when its parent dies: `make`, or the demo
    itself for the service, even killed with SIGKILL, which no handler sees."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


async def main(log: IO[bytes]) -> None:
    """Starts both, prints the URL to open, and stops both on Ctrl-C, SIGTERM or SIGHUP."""
    this = asyncio.current_task()
    if this is None:
        raise RuntimeError("main() runs as a task (asyncio.run)")
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        asyncio.get_running_loop().add_signal_handler(signum, this.cancel)
    serve = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.cli", "serve", stderr=asyncio.subprocess.PIPE,
        preexec_fn=_end_with_parent,
    )  # fmt: skip
    if serve.stderr is None:
        raise RuntimeError("the service's stderr is not piped")
    runner: web.AppRunner | None = None
    # With OTEL_* variables, the service (which inherits them) and the app trace alike:
    # one trace from the page's request through the service to StackOne.
    tracing = tracing_from_environment()
    ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    relay = asyncio.create_task(_relay(serve.stderr, log, ready))
    try:
        service = await asyncio.wait_for(ready, timeout=60)
        config = Config.from_environment()
        config = replace(
            config,
            grpc_target=service["grpc_target"],
            hub_base_url=service["emulator_url"] or config.hub_base_url,
        )
        host, _, port = os.environ.get("EXAMPLE_ADDRESS", "127.0.0.1:8000").rpartition(":")
        app = build_app(config, tracing)
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, int(port)).start()
        except OSError as error:
            raise DemoFailed(
                f"cannot listen on {host}:{port} (EXAMPLE_ADDRESS): {error.strerror}"
            ) from error
        print(
            f"\nOpen http://{host}:{port}/ in a browser.\n"
            f"  service: gRPC {service['grpc_target']}, webhooks {service['gateway_url']}\n"
            f"  the Hub talks to: {config.hub_base_url}\n"
            f"  service log: {LOG_PATH}\nCtrl-C stops everything.",
            flush=True,
        )
        await relay
    finally:
        if runner is not None:
            await runner.cleanup()
        if serve.returncode is None:
            serve.terminate()
        await serve.wait()
        await asyncio.to_thread(tracing.shutdown)


if __name__ == "__main__":
    _end_with_parent()
    # A service that refuses to start exits at once, and Python 3.11's child watcher then
    # sometimes warns "Unknown child process pid ..." (its waitpid races the exit): the
    # refusal itself is the one line to show, and the exit code is not read.
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    LOG_PATH.parent.mkdir(exist_ok=True)
    with (
        LOG_PATH.open("ab") as service_log,
        contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError),
    ):
        try:
            asyncio.run(main(service_log))
        except DemoFailed as failure:
            print(f"make demo: {failure}", file=sys.stderr)
            sys.exit(2)
