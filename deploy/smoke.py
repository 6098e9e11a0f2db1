"""Starts `stackone-connect serve` from the environment this runs in (a fresh venv holding
only the built wheel), waits for it to serve, checks gRPC health and the emulator, and
stops it with SIGTERM: exit 0 when all of that holds. Standard library and the wheel's own
dependencies only; `make wheel-check` runs it. Given the python of another venv (the
client's wheel alone), it has deploy/client_smoke.py call that serve from there first."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

READY = "stackone-connect serving"


def main() -> int:
    """Runs the check in a scratch directory; prints what failed."""
    script = shutil.which("stackone-connect", path=str(Path(sys.executable).parent))
    if script is None:
        print("smoke: the wheel installed no stackone-connect script", file=sys.stderr)
        return 1
    version = subprocess.run(  # noqa: S603 - our own script, found beside this python
        [script, "--version"], capture_output=True, text=True, check=True
    )
    print(f"smoke: {version.stdout.strip()}")
    with tempfile.TemporaryDirectory() as scratch:
        env = {
            **os.environ,
            "STACKONE_CONNECT_GRPC_ADDRESS": "127.0.0.1:0",
            "STACKONE_CONNECT_GATEWAY_ADDRESS": "127.0.0.1:0",
            "STACKONE_CONNECT_ADMIN_ADDRESS": "127.0.0.1:0",
            "STACKONE_CONNECT_EMULATOR_ADDRESS": "127.0.0.1:0",
            "STACKONE_CONNECT_EVENT_LOG_URL": f"sqlite:///{scratch}/events.db",
        }
        serve = subprocess.Popen(  # noqa: S603 - our own script, found beside this python
            [script, "serve"], cwd=scratch, env=env, stderr=subprocess.PIPE, text=True
        )
        try:
            return _check(serve, sys.argv[1] if len(sys.argv) > 1 else None)
        finally:
            if serve.poll() is None:
                serve.kill()
                serve.wait()


def _check(serve: subprocess.Popen[str], client_python: str | None) -> int:
    if serve.stderr is None:
        raise RuntimeError("serve's stderr is not piped")
    ready: dict[str, str] = {}
    emulator_url = ""
    for line in serve.stderr:
        entry = json.loads(line) if line.startswith("{") else {}
        emulator_url = entry.get("emulator_url", emulator_url)
        if str(entry.get("message", "")).startswith(READY):
            ready = entry
            break
    if not ready:
        print(f"smoke: serve exited {serve.wait()} before serving", file=sys.stderr)
        return 1
    with grpc.insecure_channel(ready["grpc_target"]) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    if health.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"smoke: gRPC health is {health.status}", file=sys.stderr)
        return 1
    with urllib.request.urlopen(f"{ready['admin_url']}/readyz", timeout=10) as answer:  # noqa: S310 - loopback
        if answer.status != 200:
            print(f"smoke: /readyz answered {answer.status}", file=sys.stderr)
            return 1
    print(f"smoke: serving (gRPC {ready['grpc_target']}, emulator {emulator_url}), health SERVING")
    if client_python is not None and not _client_calls(client_python, ready["grpc_target"]):
        return 1
    serve.send_signal(signal.SIGTERM)
    code = serve.wait(timeout=30)
    if code != 0:
        print(f"smoke: serve exited {code} after SIGTERM", file=sys.stderr)
        return 1
    print("smoke: stopped cleanly on SIGTERM")
    return 0


def _client_calls(python: str, target: str) -> bool:
    """Whether deploy/client_smoke.py, run by `python` (the client's venv), calls `target`."""
    check = Path(__file__).with_name("client_smoke.py")
    called = subprocess.run(  # noqa: S603 - our own check, run by the venv we built
        [python, str(check), target], check=False, timeout=60
    )
    if called.returncode != 0:
        print(
            f"smoke: the client's wheel did not call serve (exit {called.returncode})",
            file=sys.stderr,
        )
    return called.returncode == 0


if __name__ == "__main__":
    sys.exit(main())
