"""The import layers: which of our modules may import which, read from the source with `ast`.

Every import counts: at module level, inside functions, and under `TYPE_CHECKING` (an
import there still ties the modules together: renaming one breaks the other's types).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = Path(__file__).parents[2]
PACKAGES = ("service", "gateway", "stackone_connect_client")
# The folder a package sits in when not the repository's: the client is its own distribution.
ROOTS = {"stackone_connect_client": REPOSITORY / "clients" / "python"}
# The modules that assemble the parts (the lifecycle owner and the console script): the
# only ones of `service` that may reach up to the gateway.
COMPOSITION_ROOTS = ("service.runtime", "service.cli")


@dataclass(frozen=True, slots=True)
class Import:
    """One import statement's target in one of our modules."""

    importer: str
    imported: str
    line: int

    def __str__(self) -> str:
        return f"{self.importer} imports {self.imported} (line {self.line})"


def _module_name(path: Path) -> str:
    root = next((root for root in ROOTS.values() if path.is_relative_to(root)), REPOSITORY)
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    """Every module of our packages, by dotted name (generated code included)."""
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOTS.get(package, REPOSITORY) / package).rglob("*.py"))
    }


MODULES = _modules()


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The modules `node` names: `from a import b` names `a.b` when that is a module."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:  # relative: counted from the importer's package
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        base = f"{anchor}.{base}" if base else anchor
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        yield submodule if submodule in MODULES else base


def _imports() -> list[Import]:
    """Every import in our packages of a module of our packages."""
    found: dict[Import, None] = {}  # one per target, in the order of the source
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                found |= dict.fromkeys(
                    Import(module, target, node.lineno)
                    for target in _targets(module, path, node)
                    if target.split(".")[0] in PACKAGES
                )
    return list(found)


IMPORTS = _imports()


def _within(module: str, *prefixes: str) -> bool:
    return any(module == prefix or module.startswith(f"{prefix}.") for prefix in prefixes)


def _offending(
    importers: tuple[str, ...], forbidden: tuple[str, ...], *, allowed: tuple[str, ...] = ()
) -> list[str]:
    """The imports by a module within `importers` (and not within `allowed`) of a module
    within `forbidden`."""
    return [
        str(found)
        for found in IMPORTS
        if _within(found.importer, *importers)
        and not _within(found.importer, *allowed)
        and _within(found.imported, *forbidden)
    ]


def test_the_walk_sees_imports_in_functions_and_under_type_checking() -> None:
    """The walk finds a lazy import (inside a function) and a `TYPE_CHECKING` one, so the
    checks below cannot pass by missing them."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from service.config import Settings\n"
        "def later():\n    from . import backends\n"
    )
    path = REPOSITORY / "service/events/example.py"
    nodes = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Import | ast.ImportFrom)]
    named = [target for node in nodes for target in _targets("service.events.example", path, node)]
    assert named == ["typing", "service.config", "service.events.backends"]
    assert len(IMPORTS) > 100, "the walk found too few of our imports"


def test_the_python_client_imports_nothing_of_the_service() -> None:
    """`stackone_connect_client` (its own distribution, clients/python) imports neither
    `service` nor `gateway`: only itself and the contract's generated `stackone_connect`."""
    offending = _offending(("stackone_connect_client",), ("service", "gateway"))
    assert not offending, "\n".join(offending)


def test_storage_knows_nothing_above_it() -> None:
    """`service.events` never imports the settings, the lifecycle owner, the gRPC layer or
    the gateway: each backend is opened with its own options."""
    offending = _offending(
        ("service.events",), ("service.config", "service.runtime", "service.rpc", "gateway")
    )
    assert not offending, "\n".join(offending)


def test_the_settings_know_no_backend() -> None:
    """`service.config` imports nothing of storage but its data model: the composition
    root builds each backend's options from the settings and checks the event log URL."""
    offending = [
        str(found)
        for found in IMPORTS
        if found.importer == "service.config"
        and _within(found.imported, "service.events")
        and found.imported != "service.events.model"
    ]
    assert not offending, "\n".join(offending)


def test_the_stackone_client_knows_nothing_above_it() -> None:
    """`service.stackone` never imports the settings, the lifecycle owner, the gRPC layer or
    the event log: it is a client of StackOne and nothing more."""
    offending = _offending(
        ("service.stackone",),
        ("service.config", "service.runtime", "service.rpc", "service.events"),
    )
    assert not offending, "\n".join(offending)


def test_the_grpc_edge_reads_no_settings() -> None:
    """`service.rpc` never imports the settings, the lifecycle owner, the CLI or the
    gateway: the composition root hands it values (`GrpcServerOptions`, `TlsMaterial`)."""
    offending = _offending(
        ("service.rpc",), ("service.config", "service.runtime", "service.cli", "gateway")
    )
    assert not offending, "\n".join(offending)


LAYERS: tuple[tuple[str, ...], ...] = (
    # The house's common parts: health, logs, metrics, tracing, listeners, retries, reloading.
    (
        "service.aio",
        "service.health",
        "service.logs",
        "service.metrics",
        "service.nats_servers",
        "service.owners",
        "service.reloading",
        "service.retry",
        "service.tracing",
        "service.web",
    ),
    ("service.stackone",),  # the StackOne client
    ("service.api",),  # the contract and StackOne's models as its messages
    ("service.events",),  # storage, the verifier, reconciliation
    ("service.subscriptions",),  # subscriptions' delivery, over the log's roles
    ("service.config",),  # the settings (which name the log's data model)
    ("service.rpc", "gateway", "service.emulator"),  # the edges and the stand-in
    ("service.runtime", "service.cli"),  # the composition roots
)
"""The rooms from the bottom up: a module may import its own layer's and lower ones'."""


def _layer(module: str) -> int | None:
    return next((rank for rank, rooms in enumerate(LAYERS) if _within(module, *rooms)), None)


def test_every_module_has_a_layer() -> None:
    """Each module of `service` and `gateway` (the packages themselves aside) sits in one
    of `LAYERS`, so a new room is placed before the next test can pass it by."""
    unplaced = [
        module
        for module in MODULES
        if _within(module, "service", "gateway")
        and module not in ("service", "gateway")
        and _layer(module) is None
    ]
    assert not unplaced, unplaced


def test_no_import_runs_back_up() -> None:
    """No module imports one of a higher layer: the audit trail sits in the gRPC edge it
    serves, and the log's record conversions in storage, not in the contract's room."""
    offending = [
        str(found)
        for found in IMPORTS
        if (importer := _layer(found.importer)) is not None
        and (imported := _layer(found.imported)) is not None
        and imported > importer
    ]
    assert not offending, "\n".join(offending)


def test_only_the_composition_roots_reach_up_to_the_gateway() -> None:
    """Nothing in `service` imports `gateway` except the composition roots, which wire it."""
    offending = _offending(("service",), ("gateway",), allowed=COMPOSITION_ROOTS)
    assert not offending, "\n".join(offending)


def _cycles(modules: set[str]) -> list[list[str]]:
    """The import cycles among `modules` (each strongly connected component of more than
    one module, or one importing itself), by Tarjan's algorithm."""
    edges: dict[str, set[str]] = {module: set() for module in modules}
    for found in IMPORTS:
        if found.importer in modules and found.imported in modules:
            edges[found.importer].add(found.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in sorted(edges[module]):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = stack[stack.index(module) :]
            del stack[stack.index(module) :]
            if len(component) > 1 or module in edges[module]:
                cycles.append(sorted(component))

    for module in sorted(modules):
        if module not in index:
            visit(module)
    return cycles


def _described(cycle: list[str]) -> str:
    """A cycle's imports, each naming its line."""
    members = set(cycle)
    return "; ".join(
        str(found) for found in IMPORTS if found.importer in members and found.imported in members
    )


def test_no_import_cycle() -> None:
    """No module imports, directly or through others, a module that imports it back."""
    cycles = _cycles(set(MODULES))
    assert not cycles, "\n".join(f"cycle {cycle}: {_described(cycle)}" for cycle in cycles)


# Each consumer of the event log, and the role of it (`service.events.log`) it is typed with.
LOG_CONSUMERS = {
    "service.events.ingest": {"Inbox"},
    "service.events.verify": {"Inbox"},
    "service.events.reconcile": {"LogAndRegistry"},
    "service.events.feed": {"Log"},
    "service.rpc.owned": {"AccountRegistry"},
    "service.rpc.servicer": {"LogAndRegistry", "RequestRecords"},
    "service.rpc.retryable": {"RequestRecords"},
    "service.subscriptions.dispatcher": {"Log", "Subscriptions"},
    "service.subscriptions.manager": {"Log", "Subscriptions"},
}
# What a consumer must not name: the whole log (for the wiring) and the backends' classes.
WHOLE_LOGS = {"EventLog", "SqliteEventLog", "JetStreamEventLog"}
LOG_ROLES = ("Log", "Inbox", "AccountRegistry", "Lifecycle")


def _named(tree: ast.AST) -> set[str]:
    """Every name and attribute a module's code (annotations included) refers to."""
    return (
        {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        | {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
        | {
            alias.asname or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            for alias in node.names
        }
    )


def test_each_consumer_of_the_log_imports_only_its_role() -> None:
    """The ingestor, the verifier, reconciliation, the feed and the gRPC layer are typed
    with the role of the event log they use: none names the whole `EventLog` or a backend's
    class, or imports a backend; only the composition root holds the whole log."""
    wrong: list[str] = []
    for module, roles in LOG_CONSUMERS.items():
        tree = ast.parse(MODULES[module].read_text())
        used = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module == "service.events.log"
            for alias in node.names
        }
        if used != roles:
            wrong.append(f"{module} imports {sorted(used)} of service.events.log, not {roles}")
        if whole := _named(tree) & WHOLE_LOGS:
            wrong.append(f"{module} names {sorted(whole)}")
    backends = ("service.events.sqlite", "service.events.jetstream", "service.events.backends")
    wrong += _offending(tuple(LOG_CONSUMERS), backends)
    assert not wrong, "\n".join(wrong)


def test_the_roles_of_the_log_make_up_the_whole() -> None:
    """Each method of `EventLog` is declared by exactly one of its roles, and the whole
    adds none of its own: a backend implements the roles and nothing beside them."""
    from service.events import log

    def declared(cls: type) -> set[str]:
        return {name for name in vars(cls) if not name.startswith("_")}

    by_role = {role: declared(getattr(log, role)) for role in LOG_ROLES}
    everything = [name for methods in by_role.values() for name in methods]
    assert len(everything) == len(set(everything)), by_role
    assert declared(log.EventLog) == set()
    assert {name for name in dir(log.EventLog) if not name.startswith("_")} == set(everything)
    assert set(everything) >= {"append", "accept", "registry", "close"}
