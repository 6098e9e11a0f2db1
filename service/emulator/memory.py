"""The emulator's memory across restarts, in one JSON file beside the event log.

StackOne keeps its accounts; an emulator that forgot them on restart would disagree with
the event log it feeds: reconciliation would record the deletion of every account of the
previous run, and the next account, reusing the first id, would look like one already
recorded. So the sessions, the accounts, the account numbers handed out and the Hub's
attempts and setup information are written to the file after every request that may
change them (write to a temporary file, then rename: the file is whole or the previous
one), and read back when the emulator starts. Faults, call counts and webhook deliveries
are about one run and are not kept.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from service.emulator.app import EMULATOR_STATE
from service.emulator.hub import HUB_STATE

_log = logging.getLogger(__name__)
VERSION = 1
_READS = frozenset({"GET", "HEAD", "OPTIONS"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def remember(app: web.Application, path: Path) -> None:
    """Loads what `path` holds into the emulator `app` and keeps it there from now on."""
    if path.exists():
        load(app, path)

    @web.middleware
    async def saving(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        finally:
            if request.method not in _READS:
                save(app, path)

    app.middlewares.append(saving)


def save(app: web.Application, path: Path) -> None:
    """Writes the emulator's lasting state to `path`, atomically."""
    state, hub = app[EMULATOR_STATE], app[HUB_STATE]
    memory = {
        "version": VERSION,
        "account_numbers": state.account_numbers,
        "sessions": {
            token: {**session, "expires_at": session["expires_at"].isoformat()}
            for token, session in state.sessions.items()
        },
        "accounts": state.accounts,
        "hub_attempts": hub.attempts,
        "hub_setup_information": hub.setup_information,
    }
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(orjson.dumps(memory))
    os.replace(partial, path)


def load(app: web.Application, path: Path) -> None:
    """Reads what `save` wrote; a file of another version or shape is left aside (logged),
    and the emulator starts empty as before."""
    try:
        memory: dict[str, Any] = orjson.loads(path.read_bytes())
        if memory.get("version") != VERSION:
            raise ValueError(f"version {memory.get('version')!r}, not {VERSION}")
        sessions = {
            token: {**session, "expires_at": datetime.fromisoformat(session["expires_at"])}
            for token, session in memory["sessions"].items()
        }
        numbers, accounts = int(memory["account_numbers"]), dict(memory["accounts"])
        attempts, setup = dict(memory["hub_attempts"]), dict(memory["hub_setup_information"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        _log.warning("the emulator's memory %s is unreadable (%s): starting empty", path, error)
        return
    state, hub = app[EMULATOR_STATE], app[HUB_STATE]
    state.account_numbers, state.sessions, state.accounts = numbers, sessions, accounts
    hub.attempts, hub.setup_information = attempts, setup
    _log.info(
        "the emulator remembers %d accounts and %d sessions from %s",
        len(state.accounts), len(state.sessions), path,
    )  # fmt: skip
