"""The webhook signing secrets in force, re-read from their file when it changes.

`STACKONE_CONNECT_WEBHOOK_SECRETS_FILE` holds one secret a line (blank lines and lines
starting with `#` are ignored; a secret is 16 or more printable characters, no space); its
secrets are accepted beside those of `STACKONE_CONNECT_WEBHOOK_SECRETS`. The file is
checked at most once a second, by content, so a secret rotates without a restart: add the
new secret as a second line, wait for the reload (the `loaded … webhook secret(s)`
log line, or
`stackone_connect_credential_reloads_total{credential="webhook_secrets",outcome="loaded"}`),
switch StackOne to it, then remove the old line. A new version that cannot be used (no
secret at all, a line that cannot be a secret, not UTF-8, unreadable) is logged, naming
the file and the line, and the previous secrets stay in force.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from service.config import secret_problem
from service.reloading import ReloadedFiles, Reported, read_file


class InvalidSecretsFile(ValueError):
    """The webhook secrets file cannot be used; the message says why (never a secret)."""


def parse_secrets(raw: bytes, source: str) -> list[str]:
    """The secrets of the file format: one a line, blank lines and `#` comments ignored,
    spaces and line ends (CRLF too) around a secret dropped; `InvalidSecretsFile` naming
    the line of a secret that cannot be one (too short, a space or control character)."""
    try:
        text = raw.decode()
    except UnicodeDecodeError as error:
        raise InvalidSecretsFile(f"{source} is not UTF-8 text") from error
    secrets = []
    for number, line in enumerate(text.splitlines(), 1):
        secret = line.strip()
        if not secret or secret.startswith("#"):
            continue
        if problem := secret_problem(secret):
            raise InvalidSecretsFile(f"{source}, line {number}: the secret {problem}")
        secrets.append(secret)
    return secrets


def read_secrets(path: Path) -> list[str]:
    """The secrets of the file at `path`; `InvalidSecretsFile` if it cannot be read."""
    return parse_secrets(read_file(path, InvalidSecretsFile), str(path))


class WebhookSecrets:
    """The secrets a webhook's signature is checked against: iterating gives those in
    force now (the settings' own, then the file's, re-read if it changed)."""

    def __init__(
        self, fixed: Sequence[str], path: Path | None, *, reported: Reported | None = None
    ) -> None:
        self._fixed = list(fixed)
        self._file: ReloadedFiles[list[str]] | None = None
        if path is not None:
            self._file = ReloadedFiles(
                "webhook secrets",
                read=lambda: read_file(path, InvalidSecretsFile),
                load=lambda raw: self._in_force(parse_secrets(raw, str(path)), path),
                describe=lambda secrets: (
                    f"{len(secrets) - len(self._fixed)} webhook secret(s) from {path}"
                ),
                errors=InvalidSecretsFile,
                reported=reported,
            )

    def __iter__(self) -> Iterator[str]:
        if self._file is None:
            return iter(self._fixed)
        self._file.refresh()
        return iter(self._file.current)

    def _in_force(self, from_file: list[str], path: Path) -> list[str]:
        if not (self._fixed or from_file):
            raise InvalidSecretsFile(f"{path} holds no secret: every webhook would be refused")
        return self._fixed + from_file
