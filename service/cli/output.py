"""How the CLI's client commands print: readable tables, or one JSON object a line."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

import orjson
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message


class Output:
    """Prints messages as a readable table or, with --json, as one JSON object a line."""

    def __init__(self, as_json: bool, stream: TextIO = sys.stdout) -> None:
        self.as_json = as_json
        self.stream = stream

    def message(self, message: Message) -> None:
        """One message: JSON, or `field: value` lines."""
        fields = MessageToDict(message, preserving_proto_field_name=True)
        if self.as_json:
            self._line(orjson.dumps(fields).decode())
            return
        width = max((len(name) for name in fields), default=0)
        for name, value in fields.items():
            shown = value if isinstance(value, str) else orjson.dumps(value).decode()
            self._line(f"{name:<{width}}  {shown}")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        """Rows under aligned headers."""
        widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
        for row in [headers, *rows]:
            self.row(row, widths)

    def row(self, cells: Sequence[str], widths: Sequence[int]) -> None:
        """One row of cells padded to `widths` (for tables printed as they stream)."""
        padded = (cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
        self._line("  ".join(padded).rstrip())

    def note(self, text: str) -> None:
        """A line for people, e.g. under a table."""
        self._line(text)

    def line(self, text: str) -> None:
        """A line as it is, e.g. a JSON object that is not a message."""
        self._line(text)

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)
