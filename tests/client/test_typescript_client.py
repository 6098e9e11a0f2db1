"""The TypeScript client (clients/typescript) against the real service, with Node.

`make install` builds it: its messages and service generated from the protos by buf, its
watch compiled with tsc. Its `node --test` suite starts `serve` itself (with this Python)
and creates a session, lists, streams, and resumes across restarts and a resync. These
tests fail, rather than skip, without Node or the build: the client would go unchecked.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

from tests.harness.processes import run_to_end

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]
CLIENT_DIR = Path(__file__).parents[2] / "clients" / "typescript"
SUITE = CLIENT_DIR / "dist" / "test" / "client.test.js"


@pytest.mark.timeout(180)
async def test_the_typescript_client_passes_its_suite_against_the_real_service() -> None:
    """A session, a CreateSession retried past its deadline that mints one session, a
    listing, a stream, a watch resuming after a server's SIGTERM and a subscriber's
    restart, and a resync from a snapshot: every test of the suite passes."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is needed for the TypeScript client's suite (node not on PATH)")
    if not SUITE.is_file():
        pytest.fail(f"The TypeScript client is not built in {CLIENT_DIR}: run `make install`")
    code, out, err = await run_to_end(
        [node, "--test", str(SUITE.relative_to(CLIENT_DIR))],
        cwd=CLIENT_DIR, env={"STACKONE_CONNECT_PYTHON": sys.executable}, timeout=150,
    )  # fmt: skip
    report = out + err
    assert code == 0, report
    passed = re.search(r"^# pass (\d+)$", report, re.MULTILINE)
    assert passed is not None, report
    assert int(passed[1]) == 4, report
    assert re.search(r"^# fail 0$", report, re.MULTILINE), report
