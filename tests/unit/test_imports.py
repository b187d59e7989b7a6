"""What may import what, checked from the code (docs/design.md, "Module map").

* The vocabulary (records, offsets, events), the ports and the member's bookkeeping
  (tracking) load no client library: importing one in a fresh interpreter leaves
  SQLAlchemy, its drivers, redis, aiokafka and prometheus_client out of ``sys.modules``.
* No import cycle among the modules of ``consumer/``. What counts is every import
  executed when a module is loaded: its top-level statements, including those under
  ``if TYPE_CHECKING:`` (a design dependency even when not a runtime one) and inside
  ``try``/``if`` blocks or class bodies. An import inside a function runs only when
  the function is called (a lazy import) and is no cycle.
* The module map in docs/design.md names every module of ``consumer/`` (except
  ``migrations/`` and ``samples/``) and, for each, the project modules it may import;
  every project import a module makes, lazy ones included, must be in that list.

Module names in the map are paths below ``consumer/`` without ``.py``: ``store``,
``tools/bench``, ``__init__`` for the package itself.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import consumer

PACKAGE = Path(consumer.__file__).parent
DESIGN = PACKAGE.parent / "docs" / "design.md"
# Not in the map: the migrations are scripts Alembic loads, the samples are data.
UNMAPPED = ("migrations", "samples")

# The libraries of the adapters (the database, Redis, Kafka) and of the metrics.
CLIENT_LIBRARIES = ("sqlalchemy", "aiosqlite", "asyncpg", "redis", "aiokafka", "prometheus_client")
LIGHT_MODULES = (
    "consumer.ports",
    "consumer.records",
    "consumer.offsets",
    "consumer.events",
    "consumer.tracking",
)


# -- the modules and their imports ---------------------------------------------------


def _name(path: Path) -> str:
    """A module's name in the map: its path below consumer/, without .py."""
    return path.relative_to(PACKAGE).with_suffix("").as_posix()


def _dotted(name: str) -> str:
    parts = name.split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["consumer", *parts])


def _modules(*, mapped_only: bool) -> dict[str, Path]:
    """Every .py module of consumer/ by its map name (without migrations and samples if
    `mapped_only`)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _name(path)
        if "__pycache__" in path.parts:
            continue
        if mapped_only and name.split("/")[0] in UNMAPPED:
            continue
        found[name] = path
    return found


ALL_MODULES = _modules(mapped_only=False)
BY_DOTTED = {_dotted(name): name for name in ALL_MODULES}


def _target(dotted: str) -> str | None:
    """The project module `dotted` names (a module, or the package holding a name)."""
    while dotted:
        if dotted in BY_DOTTED:
            return BY_DOTTED[dotted]
        dotted = dotted.rpartition(".")[0]
    return None


def _package_of(name: str) -> str:
    dotted = _dotted(name)
    return dotted if name.endswith("__init__") else dotted.rpartition(".")[0]


def _imports_in(node: ast.AST, name: str) -> set[str]:
    """The project modules one import statement names."""
    out: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == "consumer" or alias.name.startswith("consumer."):
                target = _target(alias.name)
                if target is not None:
                    out.add(target)
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = _package_of(name).split(".")
            base = base[: len(base) - (node.level - 1)]
            module = ".".join([*base, *([node.module] if node.module else [])])
        else:
            module = node.module or ""
        if module != "consumer" and not module.startswith("consumer."):
            return out
        for alias in node.names:
            target = _target(f"{module}.{alias.name}")
            if target is not None:
                out.add(target)
    return out


def _module_level(tree: ast.Module) -> list[ast.stmt]:
    """The import statements run when the module loads: not those inside functions."""
    found: list[ast.stmt] = []
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return found


def _imports(name: str, *, lazy: bool) -> set[str]:
    """The project modules `name` imports: at load time, or anywhere if `lazy`."""
    tree = ast.parse(ALL_MODULES[name].read_text(encoding="utf-8"))
    nodes = list(ast.walk(tree)) if lazy else _module_level(tree)
    out: set[str] = set()
    for node in nodes:
        out |= _imports_in(node, name)
    out.discard(name)
    return out


# -- client libraries ----------------------------------------------------------------


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_the_vocabulary_and_the_ports_load_no_client_library(module: str) -> None:
    """In a fresh interpreter, importing `module` loads none of CLIENT_LIBRARIES."""
    script = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=PACKAGE.parent,
        timeout=60,
    )
    loaded = json.loads(run.stdout)
    heavy = sorted(
        m for m in loaded if any(m == lib or m.startswith(f"{lib}.") for lib in CLIENT_LIBRARIES)
    )
    assert heavy == [], f"{module} loads {heavy[:5]}"


# -- cycles --------------------------------------------------------------------------


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph`, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a"}}) is None


def test_no_import_cycle_among_the_modules() -> None:
    graph = {name: _imports(name, lazy=False) for name in ALL_MODULES}
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


# -- the module map ------------------------------------------------------------------

_ROW = re.compile(r"^\|\s*`(?P<module>[^`]+)`\s*\|(?P<owns>[^|]*)\|(?P<imports>[^|]*)\|\s*$")


def _module_map() -> dict[str, set[str]]:
    """docs/design.md's module map: each module and the project modules it may import."""
    text = DESIGN.read_text(encoding="utf-8")
    start = text.index("\n## Module map\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    rows: dict[str, set[str]] = {}
    for line in section.splitlines():
        match = _ROW.match(line)
        if match is None:
            continue
        module = match["module"]
        assert module not in rows, f"{module} has two rows in the module map"
        assert match["owns"].strip(), f"{module}: say what it owns"
        rows[module] = set(re.findall(r"`([^`]+)`", match["imports"]))
    return rows


def test_the_module_map_names_every_module() -> None:
    mapped = set(_module_map())
    on_disk = set(_modules(mapped_only=True))
    assert sorted(on_disk - mapped) == [], "modules missing from docs/design.md's module map"
    assert sorted(mapped - on_disk) == [], "the module map names modules that do not exist"


def test_each_module_imports_only_what_the_map_allows() -> None:
    allowed = _module_map()
    wrong = {
        name: sorted(_imports(name, lazy=True) - allowed.get(name, set()))
        for name in _modules(mapped_only=True)
    }
    wrong = {name: extra for name, extra in wrong.items() if extra}
    assert wrong == {}, "imports the module map does not allow (docs/design.md)"
