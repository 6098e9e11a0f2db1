"""tests/ is laid out like the house: each folder is a room of the code (or the whole
system, the repository's own files, or the shared harness), and no test module imports
another, so what tests share lives in tests/harness/."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
# Each folder and the code it mirrors (None: the whole system, the repository's own files,
# the shared harness).
ROOMS = {
    "events": "service/events",
    "rpc": "service/rpc",
    "gateway": "gateway",
    "stackone": "service/stackone",
    "emulator": "service/emulator",
    "client": "clients/python/stackone_connect_client",
    "cli": "service/cli",
    "runtime": "service/runtime.py",
    "system": None,
    "repository": None,
    "harness": None,
}
# Not test folders: `make bench` (python -m tests.bench) and StackOne's SDK run by Node.
NOT_ROOMS = {"bench", "sdk", "__pycache__"}


def _modules() -> list[Path]:
    """tests/'s own modules: its root and its rooms (not make bench's, not node_modules)."""
    return sorted(
        [*TESTS.glob("*.py"), *(p for room in ROOMS for p in (TESTS / room).glob("*.py"))]
    )


def _imported(path: Path) -> set[str]:
    """Every module `path` names in an import, at any depth of the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_test_module_imports_another() -> None:
    """No module of tests/ (a test module, the harness, conftest) imports a test module:
    what tests share is in tests/harness/."""
    offenders = [
        f"{path.relative_to(TESTS.parent)} imports {name}"
        for path in _modules()
        for name in sorted(_imported(path))
        if name.startswith("tests.") and name.rpartition(".")[2].startswith("test_")
    ]
    assert offenders == []


def test_every_folder_is_a_room() -> None:
    """Every folder of tests/ is a room whose code exists, a package with no sub-folders,
    and tests/ itself holds only conftest.py and __init__.py."""
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and p.name not in NOT_ROOMS}
    assert folders == set(ROOMS)
    assert [m for m in ROOMS.values() if m and not (TESTS.parent / m).exists()] == []
    assert [r for r in ROOMS if not (TESTS / r / "__init__.py").is_file()] == []
    nested = [p for r in ROOMS for p in (TESTS / r).iterdir() if p.is_dir()]
    assert [p for p in nested if p.name != "__pycache__"] == []
    assert sorted(p.name for p in TESTS.glob("*.py")) == ["__init__.py", "conftest.py"]


def test_the_harness_holds_no_tests() -> None:
    """Helpers live in tests/harness/, and no test module does."""
    assert sorted(p.name for p in (TESTS / "harness").glob("test_*.py")) == []
