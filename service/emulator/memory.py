"""The emulator's memory across restarts, in one JSON file beside the event log.

StackOne keeps its accounts; an emulator that forgot them on restart would disagree with
the event log it feeds: reconciliation would record the deletion of every account of the
previous run, and the next account, reusing the first id, would look like one already
recorded. So the sessions, the accounts, the account numbers handed out and the Hub's
attempts and setup information (`state.Lasting`) are written to the file after every
request that changed them (write to a temporary file, then rename: the file is whole or
the previous one), and read back when the emulator starts. Faults, call counts and
webhook deliveries are about one run and are not kept.

The file is `{"version": 1, "account_numbers", "sessions", "accounts", "hub_attempts",
"hub_setup_information"}`, sessions and accounts in StackOne's shapes (a session with
what the emulator keeps besides: `expires_at`, `multiple`, `provider_version`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import orjson
from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from service.emulator.answers import Handler
from service.emulator.state import EMULATOR_STATE, EmulatorState, Lasting

_log = logging.getLogger(__name__)
VERSION = 1
_LASTING = TypeAdapter(Lasting)


def remember(app: web.Application, path: Path) -> None:
    """Loads what `path` holds into the emulator `app` and keeps it there from now on."""
    state = app[EMULATOR_STATE]
    if path.exists():
        load(state, path)
    saved = state.lasting_revision

    @web.middleware
    async def saving(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal saved
        try:
            return await handler(request)
        finally:
            # Only a request that changed what lasts rewrites the file (a GET may: the
            # OAuth pop-up fails its attempt).
            if state.lasting_revision != saved:
                saved = state.lasting_revision
                save(state, path)

    app.middlewares.append(saving)


def save(state: EmulatorState, path: Path) -> None:
    """Writes the emulator's lasting state to `path`, atomically."""
    # orjson writes the dataclasses itself (4 times as fast as pydantic); pydantic reads them.
    memory = {"version": VERSION, **vars(state.lasting)}
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(orjson.dumps(memory))
    os.replace(partial, path)


UNREADABLE = (OSError, ValueError, ValidationError)


def read(path: Path) -> Lasting:
    """What `save` wrote to `path`; one of `UNREADABLE` for a file of another version or
    shape (`check` reads it too)."""
    memory = orjson.loads(path.read_bytes())
    version = memory.get("version") if isinstance(memory, dict) else None
    if version != VERSION:
        raise ValueError(f"version {version!r}, not {VERSION}")
    return _LASTING.validate_python(memory)


def load(state: EmulatorState, path: Path) -> None:
    """Reads what `save` wrote; a file of another version or shape is left aside (logged),
    and the emulator starts empty as before."""
    try:
        lasting = read(path)
    except UNREADABLE as error:
        _log.warning("the emulator's memory %s is unreadable (%s): starting empty", path, error)
        return
    state.lasting = lasting
    _log.info(
        "the emulator remembers %d accounts and %d sessions from %s",
        len(state.accounts), len(state.sessions), path,
    )  # fmt: skip
