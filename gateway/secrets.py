"""The webhook signing secrets in force, re-read from their file when it changes.

`STACKONE_CONNECT_WEBHOOK_SECRETS_FILE` holds one secret a line (blank lines and lines
starting with `#` are ignored); its secrets are accepted beside those of
`STACKONE_CONNECT_WEBHOOK_SECRETS`. The file is checked at most once a second, by
content, so a secret rotates without a restart: add the new secret as a second line, wait
for the reload (the `loaded … webhook secret(s)` log line, or
`stackone_connect_credential_reloads_total{credential="webhook_secrets",outcome="loaded"}`),
switch StackOne to it, then remove the old line. A new version that cannot be used (no
secret at all, not UTF-8, unreadable) is logged and the previous secrets stay in force.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

_log = logging.getLogger(__name__)
RELOAD_EVERY = 1.0
Reported = Callable[[str], None]
"""Called with `loaded` or `rejected` each time a changed file is read."""


class InvalidSecretsFile(ValueError):
    """The webhook secrets file cannot be used; the message says why (never a secret)."""


def parse_secrets(raw: bytes, source: str) -> list[str]:
    """The secrets of the file format: one a line, blank lines and `#` comments ignored."""
    try:
        text = raw.decode()
    except UnicodeDecodeError as error:
        raise InvalidSecretsFile(f"{source} is not UTF-8 text") from error
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def read_secrets(path: Path) -> list[str]:
    """The secrets of the file at `path`; `InvalidSecretsFile` if it cannot be read."""
    return parse_secrets(_read(path), str(path))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise InvalidSecretsFile(f"cannot read {path}: {error.strerror}") from error


class WebhookSecrets:
    """The secrets a webhook's signature is checked against: iterating gives those in
    force now (the settings' own, then the file's, re-read if it changed)."""

    def __init__(
        self, fixed: Sequence[str], path: Path | None, *, reported: Reported | None = None
    ) -> None:
        self._fixed = list(fixed)
        self._path = path
        self._reported = reported
        self._current = list(fixed)
        self._version: bytes | None = None
        self._checked_at = time.monotonic()
        self._last_error = ""
        if path is not None:
            self.reload()

    def __iter__(self) -> Iterator[str]:
        if self._path is not None and time.monotonic() - self._checked_at >= RELOAD_EVERY:
            self.reload()
        return iter(self._current)

    def reload(self) -> None:
        """Re-reads the file if its content changed; a bad new version keeps the old secrets.

        Raises:
            InvalidSecretsFile: the first version cannot be read or holds no secret at all.
        """
        if self._path is None:
            return
        self._checked_at = time.monotonic()
        try:
            raw = _read(self._path)
            version = hashlib.sha256(raw).digest()
            if version == self._version:
                return
            from_file = parse_secrets(raw, str(self._path))
            if not (self._fixed or from_file):
                raise InvalidSecretsFile(
                    f"{self._path} holds no secret: every webhook would be refused"
                )
        except InvalidSecretsFile as error:
            if self._version is None:
                raise
            if str(error) != self._last_error:  # once per problem, not every second
                self._last_error = str(error)
                _log.error("keeping the previous webhook secrets: %s", error)
                self._report("rejected")
            return
        self._current = self._fixed + from_file
        self._version = version
        self._last_error = ""
        _log.info("loaded %d webhook secret(s) from %s", len(from_file), self._path)
        self._report("loaded")

    def _report(self, outcome: str) -> None:
        if self._reported is not None:
            self._reported(outcome)
