"""What the README and docs/ pages name is true: their links name a file that exists and a
heading it has; the repository paths, CLI command lines and imports they show exist, parse
and resolve."""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import io
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson

from service.cli.main import build_parser

REPOSITORY = Path(__file__).resolve().parents[2]
PAGES = [REPOSITORY / "README.md", *sorted((REPOSITORY / "docs").glob("*.md"))]
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", heading.strip().lower()))


def _anchors(page: Path) -> set[str]:
    found, in_code = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (heading := re.match(r"^#+ (.*)", line)):
            found.add(_anchor(heading.group(1)))
    return found


def test_every_relative_link_names_a_page_and_a_heading_that_exist() -> None:
    """Moving a section or renaming a heading breaks no link unnoticed."""
    broken = []
    for page in PAGES:
        for link in _LINK.findall(page.read_text()):
            if link.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = link.partition("#")
            target = (page.parent / path).resolve() if path else page
            if not target.exists():
                broken.append(f"{page.name}: {link} (no such file)")
            elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
                broken.append(f"{page.name}: {link} (no such heading)")
    assert broken == []
    assert len(PAGES) > 5, "the docs/ pages are found"


# ---- What the pages name: repository paths, CLI command lines, imports -------------------

GIT, NODE = shutil.which("git") or "git", shutil.which("node") or "node"
_TRACKED_TOP = {
    line.split("/")[0]
    for line in subprocess.run(
        [GIT, "ls-files"], cwd=REPOSITORY, capture_output=True, text=True, check=True
    ).stdout.splitlines()
}
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_CODE_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
TS_PACKAGE = REPOSITORY / "clients" / "typescript"


def repository_paths(text: str) -> set[str]:
    """The `code` spans of `text` that name a path in the repository (a tracked top-level
    entry, then more): `tests/test_x.py::test_y` names a test of that file."""
    found = set()
    for span in _INLINE_CODE.findall(text):
        first = span.split("/")[0]
        if " " not in span and first in _TRACKED_TOP and ("/" in span or "." in first):
            found.add(span)
    return found


def test_every_repository_path_the_pages_name_exists() -> None:
    """A page never names a file, folder or test that was moved, renamed or removed."""
    missing = []
    for page in PAGES:
        for named in repository_paths(page.read_text()):
            path, _, test = named.partition("::")
            target = REPOSITORY / path
            if not target.exists():
                missing.append(f"{page.name}: {named}")
            elif test and f"def {test}(" not in target.read_text():
                missing.append(f"{page.name}: {named} (no such test)")
    assert missing == []


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {
        name: sub
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name, sub in action.choices.items()
    }


def _command_parser(words: list[str]) -> argparse.ArgumentParser:
    """The parser of the (sub)subcommand the leading `words` name."""
    parser = build_parser()
    for word in words:
        if word not in (subcommands := _subcommands(parser)):
            break
        parser = subcommands[word]
    return parser


def command_lines(page: Path) -> Iterator[tuple[str, bool]]:
    """Each CLI command a page shows, without the program name, and whether it is a whole
    command line (`stackone-connect …`, `$C …` in the README) rather than a synopsis
    (`accounts get ID [--registry]`, a `code` span starting with a subcommand)."""
    text = re.sub(r"\\\n\s*", " ", page.read_text())  # continued shell lines
    subcommands = "|".join(_subcommands(build_parser()))
    program = re.compile(rf"(?:stackone-connect|\$C) ((?:{subcommands})\b[^`\n]*)")
    for line in program.findall(text):
        # Up to the shell's next command, a pipe or a comment; `$(…)` is one word.
        line = re.split(r"\s(?:&&?|;|\||#)|;", line)[0]
        yield re.sub(r"\$\([^)]*\)", "X", line).strip(), True
    for span in _INLINE_CODE.findall(text):
        if re.match(rf"(?:{subcommands})\b", span):
            yield span, False


def test_every_command_line_the_pages_show_is_accepted_by_the_cli() -> None:
    """Every `stackone-connect …` line parses with the CLI's own parser, and every flag of
    a synopsis is one its (sub)subcommand has."""
    refused, checked = [], 0
    for page in PAGES:
        for command, whole in command_lines(page):
            words = command.split()
            known = _command_parser(words)._option_string_actions
            flags = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", command))
            refused += [f"{page.name}: {command}: no {flag}" for flag in flags - set(known)]
            if whole and not re.search(r"[<\[…]", command):
                errors = io.StringIO()
                with contextlib.redirect_stderr(errors), contextlib.suppress(SystemExit):
                    build_parser().parse_args(shlex.split(command))
                if errors.getvalue():
                    refused.append(f"{page.name}: {command}: {errors.getvalue().strip()}")
            checked += 1
        # Flags named in prose or in another language's example ("as the CLI's --ca-file").
        for line in page.read_text().splitlines():
            if "CLI" in line:
                named = set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", line))
                refused += [f"{page.name}: the CLI has no {flag}" for flag in named - _all_flags()]
    assert refused == []
    assert checked > 20, "the command lines are found"


def _all_flags(parser: argparse.ArgumentParser | None = None) -> set[str]:
    """Every option of the CLI and of its (sub)subcommands."""
    parser = parser or build_parser()
    flags = set(parser._option_string_actions)
    for sub in _subcommands(parser).values():
        flags |= _all_flags(sub)
    return flags


def python_imports(page: Path) -> Iterator[tuple[str, list[str]]]:
    """The modules and names each Python snippet of a page imports (the code blocks, and
    `python -c "…"` lines)."""
    text = page.read_text()
    snippets = [code for lang, code in _CODE_BLOCK.findall(text) if lang == "python"]
    snippets += re.findall(r'python -c "([^"]+)"', text)
    for snippet in snippets:
        for node in ast.walk(ast.parse(snippet)):
            if isinstance(node, ast.ImportFrom) and node.module:
                yield node.module, [alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                yield from ((alias.name, []) for alias in node.names)


def test_every_python_import_the_pages_show_resolves() -> None:
    """Every module a page's Python imports exists, with every name taken from it."""
    unresolved, checked = [], 0
    for page in PAGES:
        for module, names in python_imports(page):
            checked += 1
            try:
                imported = importlib.import_module(module)
            except ImportError as error:
                unresolved.append(f"{page.name}: {module}: {error}")
                continue
            unresolved += [
                f"{page.name}: {module} has no {name}"
                for name in names
                if not hasattr(imported, name)
            ]
    assert unresolved == []
    assert checked >= 4, "the imports are found"


def typescript_imports(page: Path) -> Iterator[tuple[str, list[str]]]:
    """The specifier and value names of each TypeScript `import … from "…"` of a page."""
    pattern = r"import\s+(?:\{([^}]*)\}|[^\"'\n{]*?)\s*from\s+\"([^\"]+)\""
    for names, specifier in re.findall(pattern, page.read_text()):
        yield specifier, [n.strip() for n in names.split(",") if n.strip() not in ("", "…")]


def test_every_typescript_import_the_pages_show_resolves() -> None:
    """Every TypeScript import the pages show is the client's package name (its `main`
    and `types` exist once built) or a file beside the page, and exports the names taken."""
    package = orjson.loads((TS_PACKAGE / "package.json").read_bytes())
    unresolved, checked = [], 0
    for page in [*PAGES, TS_PACKAGE / "README.md"]:
        for specifier, names in typescript_imports(page):
            checked += 1
            if specifier == package["name"]:
                module = TS_PACKAGE / package["main"]
                assert (TS_PACKAGE / package["types"]).exists(), "make typescript builds it"
            elif specifier.startswith("."):
                module = (page.parent / specifier).resolve()
            else:
                unresolved.append(f"{page.name}: {specifier} is not the client's package")
                continue
            if not module.exists():
                unresolved.append(f"{page.name}: {specifier} ({module} does not exist)")
                continue
            exported = subprocess.run(
                [NODE, "--input-type=module", "-e",
                 f"const m = await import({str(module)!r}); console.log(Object.keys(m).join(' '))"],
                capture_output=True, text=True, check=True, timeout=30,
            ).stdout.split()  # fmt: skip
            unresolved += [f"{page.name}: {specifier} exports no {n}" for n in names
                           if n not in exported]  # fmt: skip
    assert unresolved == []
    assert checked >= 3, "the imports are found"


def test_another_project_installs_the_typescript_client_as_the_page_says(tmp_path: Path) -> None:
    """The npm install and node lines of "Using the clients in another project", run in a
    fresh project, install the built client and import it by its package name."""
    page = (REPOSITORY / "docs" / "clients.md").read_text()
    section = page.split("## Using the clients in another project")[1].split("\n## ")[0]
    lines = [
        line
        for _, code in _CODE_BLOCK.findall(section)
        for line in code.splitlines()
        if line.startswith(("npm install ", "node "))
    ]
    assert len(lines) == 2, lines
    (tmp_path / "package.json").write_text('{"name": "another-project", "type": "module"}')
    outputs = []
    for line in lines:
        argv = shlex.split(line.replace("../stackone-connect", str(REPOSITORY)))
        if argv[0] == "npm":  # a local directory: nothing to fetch
            argv = [shutil.which("npm") or "npm", *argv[1:], "--offline", "--no-audit"]
        else:
            argv[0] = NODE
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout.strip())
    assert outputs[-1] == "function"
