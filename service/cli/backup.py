"""`stackone-connect backup PATH`: a consistent copy of the SQLite event log, taken while
`serve` runs (or not). Restore by stopping `serve`, putting the copy at
`STACKONE_CONNECT_EVENT_LOG_URL`'s path (its old -wal and -shm files removed), and
starting it: the copy is a new incarnation of the log, every cursor up to the copy's last
one resumes, later ones get OUT_OF_RANGE (resync), and the webhooks that were waiting are
verified and recorded."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import orjson

from service.config import ENV_PREFIX, Settings
from service.events import sqlite
from service.events.model import EventLogUnavailable


def add_backup_command(commands: Any) -> argparse.ArgumentParser:
    """Adds `backup` to the CLI's subcommands; returns its parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "backup",
        help="copy the SQLite event log while the service runs",
        description=__doc__,
    )
    parser.add_argument("path", type=Path, help="where to write the copy (replaced if present)")
    # Unset here, it keeps a `--json` given before `backup`.
    parser.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="one JSON object"
    )
    return parser


def backup_main(settings: Settings, args: argparse.Namespace) -> int:
    """Copies the configured log to `args.path`; 2 when it is not a SQLite log or cannot be read."""
    url = urlparse(settings.event_log_url)
    if url.scheme != "sqlite":
        print(
            f"stackone-connect: backup copies a SQLite event log; {ENV_PREFIX}EVENT_LOG_URL "
            "names a NATS JetStream log, which NATS keeps (stream replicas, `nats stream backup`)",
            file=sys.stderr,
        )
        return 2
    if args.path.is_dir():  # the copy would be written beside it, then fail to replace it
        print(
            f"stackone-connect: backup: {args.path} is a folder: name the file to write",
            file=sys.stderr,
        )
        return 2
    try:
        copy = sqlite.backup(sqlite.path_of(url), args.path)
    except EventLogUnavailable as error:
        print(f"stackone-connect: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the copy's folder is missing or not writable
        print(
            f"stackone-connect: backup: cannot write {args.path}: {error.strerror}", file=sys.stderr
        )
        return 2
    if args.json:
        summary = {
            "path": str(copy.path),
            "latest_cursor": copy.latest_cursor,
            "waiting_webhooks": copy.waiting_webhooks,
        }
        print(orjson.dumps(summary).decode())
    else:
        print(
            f"backed up the event log to {copy.path}: events through cursor "
            f"{copy.latest_cursor}, {copy.waiting_webhooks} webhooks waiting to be recorded"
        )
    return 0
