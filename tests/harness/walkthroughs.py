"""Runs the README's console walk-throughs as written and compares what they print.

A walk-through is the ```console blocks of one README section. In a block, a line
`$ command` (continued by lines ending in `\\`) is run by bash; the lines after it, up to
the next `$`, are what it printed. A command ending in `&` runs in the background (a
subscriber) and goes on printing while later commands run: the README shows its lines
where they appear, so a shown line that the command in front did not print is looked for,
in order, in what the background ones printed (waiting for it a while).

Lines are compared after masking what differs from run to run (times, tokens, uuids, the
ports of this run) and collapsing runs of spaces; `...` or `…` in a shown line stands for
anything. A token or account id a command printed replaces, in the commands after it, the
one the README shows in its place.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
_HEADING = re.compile(r"^(#+) (.*)$")
_MASKS = [
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?"), "<time>"),
    (re.compile(r"cst_[A-Za-z0-9_-]+"), "<token>"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<uuid>"),
    # A cursor names its log's incarnation in its upper bits: a new log, a new number.
    (re.compile(r"\b\d{14,19}\b"), "<cursor>"),  # tag << 44 | sequence: 14 to 19 digits
]
_ELLIPSIS = re.compile(r"\\\.\\\.\\\.|…")
# Values a later command uses as an earlier one printed them: the README's stand for this
# run's (a session token passed to the emulator, an account id).
_CARRIED = re.compile(r"cst_[A-Za-z0-9_-]+|\b\d{15,}\b")


@dataclass
class Step:
    """One `$` command of a walk-through and the lines the README shows after it."""

    command: str
    shown: list[str] = field(default_factory=list)

    @property
    def background(self) -> bool:
        """True for a command ending in `&` (before any comment)."""
        return self.command.split(" #", 1)[0].rstrip().endswith("&")


def walkthrough(heading: str, readme: Path = README) -> list[Step]:
    """The steps of the console blocks in the README section titled `heading` (its
    subsections left out)."""
    steps: list[Step] = []
    inside = in_block = False
    continued = False
    for line in readme.read_text().splitlines():
        if not in_block and (match := _HEADING.match(line)):
            inside = match.group(2) == heading
            continue
        if not inside:
            continue
        if line.startswith("```"):
            in_block = line == "```console"
            continue
        if not in_block:
            continue
        if continued:
            steps[-1].command += "\n" + line
        elif line.startswith("$ "):
            steps.append(Step(line[2:]))
        elif steps:
            steps[-1].shown.append(line)
        continued = line.endswith("\\")
    if not steps:
        raise LookupError(f"the README has no console walk-through under {heading!r}")
    return steps


def masked(line: str, replacements: Mapping[str, str]) -> str:
    """`line` with what differs between runs masked and spaces collapsed."""
    for old, new in replacements.items():
        line = line.replace(old, new)
    for pattern, mask in _MASKS:
        line = pattern.sub(mask, line)
    return " ".join(line.split())


def _matches(shown: str, printed: str) -> bool:
    pattern = _ELLIPSIS.sub(".*", re.escape(shown))
    return re.fullmatch(pattern, printed) is not None


class Console:
    """A shell session of walk-through steps against one running service: `env` holds
    `C` (the CLI) and the target; `replacements` turn the README's addresses into this
    run's (applied to commands, and to both sides of a comparison)."""

    def __init__(self, env: Mapping[str, str], replacements: Mapping[str, str]) -> None:
        self.env = {**os.environ, **env}
        self.replacements = dict(replacements)
        self.carried: dict[str, str] = {}
        self.background: list[asyncio.subprocess.Process] = []
        self.background_lines: list[str] = []
        self._readers: list[asyncio.Task[None]] = []
        self._printed = asyncio.Event()

    async def run(self, step: Step, timeout: float = 30) -> None:
        """Runs `step` and checks what it printed against what the README shows."""
        command = step.command
        for old, new in {**self.replacements, **self.carried}.items():
            command = command.replace(old, new)
        if step.background:  # run here in a shell of its own, killed with its group at close
            command = command.split(" #", 1)[0].rstrip().removesuffix("&")
        process = await asyncio.create_subprocess_exec(
            "bash", "-c", command, env=self.env, start_new_session=True,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        if step.background:
            self.background.append(process)
            self._readers.append(asyncio.create_task(self._read(process)))
            printed: list[str] = []
        else:
            async with asyncio.timeout(timeout):
                out, _ = await process.communicate()
            printed = out.decode().splitlines()
        await self._compare(step, printed)

    async def _compare(self, step: Step, printed_raw: list[str]) -> None:
        printed = [masked(line, self.replacements) for line in printed_raw]
        at = 0
        for raw in step.shown:
            line = masked(raw, self.replacements)
            if at < len(printed) and _matches(line, printed[at]):
                shown_values = _CARRIED.findall(raw)
                printed_values = _CARRIED.findall(printed_raw[at])
                self.carried.update(zip(shown_values, printed_values, strict=False))
                at += 1
                continue
            await self._from_background(step, line, printed)
        assert at == len(printed), (
            f"`{step.command}` printed lines the README does not show: {printed[at:]}"
        )

    async def _from_background(self, step: Step, line: str, printed: list[str]) -> None:
        """Checks `line` against the next line a background command printed, waiting
        for one."""
        try:
            async with asyncio.timeout(15):
                while not self.background_lines:
                    self._printed.clear()
                    await self._printed.wait()
        except TimeoutError:
            raise AssertionError(
                f"the README shows {line!r} after `{step.command}`, which printed {printed}, "
                "and no background command printed it"
            ) from None
        printed_there = self.background_lines.pop(0)
        assert _matches(line, printed_there), (
            f"the README shows {line!r} after `{step.command}`; it printed {printed}, and "
            f"the background next printed {printed_there!r}"
        )

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            self.background_lines.append(masked(line.decode(), self.replacements))
            self._printed.set()

    async def close(self) -> None:
        """Stops the background commands."""
        for process in self.background:
            if process.returncode is None:
                os.killpg(process.pid, signal.SIGKILL)  # the shell and its pipeline
                await process.wait()
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
