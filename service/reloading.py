"""A value read from files and re-read when they change, so credentials rotate without a
restart: the clients file, the webhook secrets file and the gRPC server's TLS files.

The files are looked at once a second at most, and compared by content, not timestamps: a
copy that keeps the old mtime and size (`cp -p`, a config-management tool, a file system
with one-second timestamps) is still noticed. The first version must check out (the
caller turns its error into a start-up error); a later version that does not is logged
once per problem, counted as `rejected`, and the previous value stays in force.
"""

from __future__ import annotations

import codecs
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

_log = logging.getLogger(__name__)
RELOAD_EVERY = 1.0
Reported = Callable[[str], None]
"""Called with `loaded` or `rejected` each time a changed version is read."""

_Value = TypeVar("_Value")


def read_file(path: Path, error: Callable[[str], Exception]) -> bytes:
    """The bytes of the file at `path`, without the UTF-8 byte-order mark an editor may
    have put first (it would become part of a secret, or make JSON and PEM unreadable);
    `error(why)` raised when it cannot be read."""
    try:
        return path.read_bytes().removeprefix(codecs.BOM_UTF8)
    except OSError as problem:
        raise error(f"cannot read {path}: {problem.strerror}") from problem


@dataclass(eq=False)
class ReloadedFiles(Generic[_Value]):
    """The value of the last version of some files that checked out.

    Attributes:
        what: what the files hold, for log lines ("clients", "TLS credentials").
        read: the files' contents, as bytes that change when any of them does.
        load: the value of those contents; raises one of `errors` when they cannot be used.
        describe: a log line's words for a loaded value ("3 client(s) from clients.json").
        errors: what `read` and `load` raise for files that cannot be used (their message
            names the file and the problem, never a secret).
        reported: told `loaded` or `rejected` for each changed version read after the first.
        current: the value in force.

    Raises:
        errors: the first version cannot be read or used.
    """

    what: str
    _: KW_ONLY
    read: Callable[[], bytes]
    load: Callable[[bytes], _Value]
    describe: Callable[[_Value], str]
    errors: type[Exception]
    reported: Reported | None = None
    current: _Value = field(init=False)
    _version: bytes = field(init=False)
    _checked_at: float = field(init=False)
    _last_error: str = ""
    # `refresh` may run on grpc's threads (TLS): one look at a time, none waited for.
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        raw = self.read()
        self.current = self.load(raw)
        self._version = hashlib.sha256(raw).digest()
        self._checked_at = time.monotonic()

    def refresh(self) -> bool:
        """Re-reads the files if a second passed since the last look; True when a new
        version was loaded (it is `current` now)."""
        now = time.monotonic()
        if now - self._checked_at < RELOAD_EVERY or not self._lock.acquire(blocking=False):
            return False
        try:
            self._checked_at = now
            return self._reload()
        finally:
            self._lock.release()

    def next_look_in(self) -> float:
        """Seconds until `refresh` would look at the files again."""
        return max(0.0, self._checked_at + RELOAD_EVERY - time.monotonic())

    def _reload(self) -> bool:
        try:
            raw = self.read()
            version = hashlib.sha256(raw).digest()
            if version == self._version:
                return False
            value = self.load(raw)
        except self.errors as error:
            if str(error) != self._last_error:  # once per problem, not every second
                self._last_error = str(error)
                _log.error("keeping the previous %s: %s", self.what, error)
                self._report("rejected")
            return False
        self.current, self._version, self._last_error = value, version, ""
        _log.info("loaded %s", self.describe(value))
        self._report("loaded")
        return True

    def _report(self, outcome: str) -> None:
        if self.reported is not None:
            self.reported(outcome)
