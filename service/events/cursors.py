"""Public cursors: a log position that names the log incarnation it came from.

Inside the service a cursor is the log's sequence number. Outside it is one decimal
number, `tag << SEQUENCE_BITS | sequence`, where `tag` names the incarnation of the log:
a SQLite database as created, a restored copy of it, a JetStream stream as created. A
log replaced under its subscribers (a restored backup, a new database at the same path,
a recreated stream) numbers its events from where it was again; its new tag tells its
cursors from the old log's, so a cursor of the old log gets `OUT_OF_RANGE` instead of
silently skipping events. Still a decimal string, so tools of the previous release that
read a cursor as a number keep working, and within one incarnation a later event has a
higher cursor.

A cursor of the previous release has no tag (a bare sequence number, tag 0). It is taken
as the current incarnation's while the log was never replaced, and only up to where a
restored copy still holds the same events (see `Incarnation`).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Collection
from dataclasses import dataclass

SEQUENCE_BITS = 44
"""Bits of the sequence number: 17 million million events per incarnation."""
MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1
TAG_BITS = 19
"""Bits of the incarnation tag: two logs share one with odds of 1 in half a million."""
_TAG_LIMIT = 1 << TAG_BITS
BARE = 0
"""The tag of a cursor of the previous release: a bare sequence number."""


@dataclass(frozen=True, slots=True)
class Cursor:
    """A cursor as a client sent it: the incarnation it names and the sequence in it."""

    tag: int
    sequence: int


def parse(text: str) -> Cursor | None:
    """The cursor `text` spells (ASCII digits, at most 2**63 - 1); None when it is not one."""
    if not text or len(text) > 19 or not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    if value >= 1 << (SEQUENCE_BITS + TAG_BITS):
        return None
    return Cursor(value >> SEQUENCE_BITS, value & MAX_SEQUENCE)


def new_tag(avoid: Collection[int] = ()) -> int:
    """A random incarnation tag, never 0 nor one of `avoid` (the log's earlier ones)."""
    while True:
        tag = secrets.randbelow(_TAG_LIMIT - 1) + 1
        if tag not in avoid:
            return tag


def tag_of(identity: str) -> int:
    """The incarnation tag derived from `identity` (e.g. a stream's creation time), the
    same in every replica that reads it."""
    digest = int.from_bytes(hashlib.sha256(identity.encode()).digest()[:8], "big")
    return digest % (_TAG_LIMIT - 1) + 1


@dataclass(frozen=True, slots=True)
class Incarnation:
    """One incarnation of a log, and the cursors of others that still name its events.

    Attributes:
        tag: this incarnation's; every cursor it hands out carries it.
        parent: the incarnation this one was copied from (0: none), whose cursors up to
            `parent_through` name the same events here (a restored backup).
        parent_through: the last sequence the copy shares with `parent`.
        bare_through: the last sequence a bare cursor (of the previous release) may name:
            every one while the log was never replaced, the copy's last one in a restored
            copy, -1 (none) in a log that replaced another.
    """

    tag: int
    parent: int = 0
    parent_through: int = -1
    bare_through: int = MAX_SEQUENCE

    def public(self, sequence: int) -> str:
        """The cursor clients see for `sequence`."""
        return str(self.tag << SEQUENCE_BITS | sequence)

    def admits(self, cursor: Cursor) -> bool:
        """Whether `cursor` names a position of this log (then its `sequence` does)."""
        if cursor.tag == self.tag:
            return True
        if cursor.tag == BARE:
            return cursor.sequence <= self.bare_through
        return cursor.tag == self.parent and cursor.sequence <= self.parent_through

    def forked(self, through: int, avoid: Collection[int] = ()) -> Incarnation:
        """A new incarnation for a copy of this log holding its events through `through`:
        this one's cursors up to there still resume in it, later ones do not."""
        return Incarnation(
            new_tag({self.tag, self.parent, *avoid}),
            parent=self.tag,
            parent_through=through,
            bare_through=min(self.bare_through, through),
        )


UNTAGGED = Incarnation(BARE)
"""An incarnation whose cursors are bare sequence numbers (as the previous release's)."""
