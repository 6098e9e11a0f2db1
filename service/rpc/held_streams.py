"""Open streams held to the credentials they were opened with (`service.rpc.auth`).

A stream is admitted once, when it opens; it may stay open for days. Each open stream is
held under its caller's entry (of the clients file version then in force) and how the
caller was known (token or certificate), and each new version of the file is a verdict on
every such entry: it goes on under the new version's entry, or its streams end with a
status. Streams wait on nothing of their own for this: `Standing.end` interrupts their
feeds, and while any stream is open one loop timer looks at the file when it is due, so
a change reaches idle streams that no call would have noticed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar

import grpc

Ending = tuple[grpc.StatusCode, str]
"""The status that ends a stream whose entry changed."""
_Entry = TypeVar("_Entry", bound=Hashable)
_LOOK_SLACK = 0.005  # seconds: a loop timer may fire a little before the look is due


class Interruptible(Protocol):
    """What an open stream follows (`service.events.feed.Feed`)."""

    def interrupt(self) -> None:
        """Ends it at once."""


class Standing(Generic[_Entry]):
    """The streams open under one entry, known one way (token or certificate): ended
    together. One object per entry, not per stream: a stream checks `ended` once its
    feed stops."""

    __slots__ = ("_feeds", "_held", "by_certificate", "ended", "entry")

    def __init__(self, held: HeldStreams[_Entry], entry: _Entry, by_certificate: bool) -> None:
        self._held = held
        self.entry = entry
        self.by_certificate = by_certificate
        self._feeds: set[Interruptible] = set()
        self.ended: Ending | None = None
        """The status that ends its streams, once the entry changed."""

    def add(self, feed: Interruptible) -> None:
        """Counts a stream in (interrupted at once if the entry changed already)."""
        self._feeds.add(feed)
        if self.ended is not None:
            feed.interrupt()

    def remove(self, feed: Interruptible) -> None:
        """Counts an ended stream out."""
        self._feeds.discard(feed)
        if not self._feeds:
            self._held.forget(self)

    def end(self, ending: Ending) -> None:
        """Interrupts every stream; each then ends with `ending`."""
        self.ended = ending
        for feed in self._feeds:
            feed.interrupt()


class HeldStreams(Generic[_Entry]):
    """The open streams of a reloaded set of entries, by entry.

    Args:
        verdict: for an entry of an earlier version and how it was known, the entry it
            goes on under in the version in force, or the status that ends its streams.
        look: looks at the file (which calls `judge` when a new version loaded).
        next_look_in: seconds until `look` would look again.
    """

    def __init__(
        self,
        verdict: Callable[[_Entry, bool], _Entry | Ending],
        look: Callable[[], None],
        next_look_in: Callable[[], float],
    ) -> None:
        self._verdict = verdict
        self._look = look
        self._next_look_in = next_look_in
        self._standings: dict[tuple[_Entry, bool], Standing[_Entry]] = {}
        self._looking: asyncio.TimerHandle | None = None

    def hold(self, entry: _Entry, by_certificate: bool, feed: Interruptible) -> Standing[_Entry]:
        """Holds an open stream of the caller admitted as `entry`."""
        verdict = self._verdict(entry, by_certificate)
        if isinstance(verdict, tuple):  # the file changed between admission and now
            standing = Standing(self, entry, by_certificate)
            standing.end(verdict)
        else:
            key = (verdict, by_certificate)
            standing = self._standings.get(key) or self._standings.setdefault(
                key, Standing(self, verdict, by_certificate)
            )
            self._keep_looking()
        standing.add(feed)
        return standing

    def forget(self, standing: Standing[_Entry]) -> None:
        """Forgets `standing` once its last stream ended."""
        key = (standing.entry, standing.by_certificate)
        if self._standings.get(key) is standing:
            del self._standings[key]

    def judge(self) -> None:
        """Ends the streams of the entries a new version withdrew or changed; the others
        stay, under their entry of the new version."""
        standings, self._standings = self._standings, {}
        for standing in standings.values():
            verdict = self._verdict(standing.entry, standing.by_certificate)
            if isinstance(verdict, tuple):
                standing.end(verdict)
            else:
                # A credential is one entry's, so no two standings meet under one key.
                standing.entry = verdict
                self._standings[verdict, standing.by_certificate] = standing

    def _keep_looking(self) -> None:
        """While streams are open, looks when a look is due even if no call comes: one
        timer for every stream."""
        if self._looking is None and self._standings:
            delay = self._next_look_in() + _LOOK_SLACK
            self._looking = asyncio.get_running_loop().call_later(delay, self._looked)

    def _looked(self) -> None:
        self._looking = None
        self._look()
        self._keep_looking()
