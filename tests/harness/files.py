"""Files replaced as operators replace them."""

from __future__ import annotations

from pathlib import Path


def replace(path: Path, content: bytes) -> None:
    """Replaces a file at once, as `mv` does (a reader never sees half of it)."""
    staged = path.with_name(path.name + ".new")
    staged.write_bytes(content)
    staged.replace(path)
