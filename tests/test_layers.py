"""Guards on the package's shape: the layers of docs/design.md stay visible and one-way.

Each rule is checked on the sources (AST), so a violation is named by file and line, and the
one that matters at run time (the pure layer loads no I/O library) is also checked for real in
a fresh interpreter. The layer table is data: moving a module to another layer, or adding one,
is an edit of `LAYERS`, not of the tests.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

import anytcm

PACKAGE = "anytcm"
SOURCE_ROOT = Path(anytcm.__file__).parent

# Bottom to top. A module may import modules of its own layer or of any layer below, never one
# above. Keys are module paths relative to `anytcm` ("wire", "_core", "testing._manager"); the
# longest key that is a prefix of a module's path decides its layer, so a whole subpackage is
# placed by its folder name and one module inside it can still be placed on its own.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    (
        "pure (no I/O, no event loop)",
        frozenset(
            {
                "errors",
                "_backend",
                "_fast",
                "_version",
                "wire",
                "tensors",
                "protocol",
                "results",
                "retry",
                "backoff",
            }
        ),
    ),
    (
        "plugin interfaces and services",
        frozenset(
            {
                "transports",
                "carriers",
                "readiness",
                "observability",
                "plugins",
                # re-export shims of `carriers` / `transports` for plugin authors
                "carrier",
                "transport",
            }
        ),
    ),
    ("connections (sessions, pool, deadlines)", frozenset({"_core"})),
    # `options` is public, but a declaration the client's internals read (connect's options).
    ("client internals", frozenset({"_client", "options"})),
    ("public client", frozenset({"client", "sync_client"})),
    (
        "entry points",
        frozenset({"cli", "testing", "pytest_plugin", "__init__", "__main__"}),
    ),
)

# The modules the pure layer is made of; they and whatever of anytcm they import must load no
# event loop, socket or network library.
PURE_ENTRY_MODULES = ("wire", "protocol", "tensors")
FORBIDDEN_IN_PURE = frozenset(
    {"anyio", "trio", "asyncio", "socket", "ssl", "httpx", "httpcore", "websockets", "sniffio"}
)

# Re-export shims: `anytcm.<shim>` only re-exports `anytcm.<package>`.
SHIMS = {"carrier": "carriers", "transport": "transports"}

# The reference manager is apart from every layer: it imports nothing of anytcm outside its
# folder (tests/test_reference_independence.py), and only the entry points may import it.
APART = "testing._manager"

MAX_TOP_LEVEL_MODULES = 20  # a newcomer should see the layers, not a flat list
MAX_MODULE_LINES = 600


# -- the import graph ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    """One import statement's target inside anytcm."""

    source: str  # the importing module, relative to anytcm ("_core.pool", "__init__")
    target: str  # the imported module, relative to anytcm
    line: int
    module_level: bool  # runs when the importing module is imported
    type_only: bool  # inside `if TYPE_CHECKING:`, never runs

    def describe(self) -> str:
        kind = "type-only" if self.type_only else ("module" if self.module_level else "function")
        return f"{_path_of(self.source)}:{self.line}: {self.source} -> {self.target} ({kind})"


@cache
def _modules() -> dict[str, Path]:
    """Every module of the package by its name relative to anytcm ("__init__" is the root)."""
    found: dict[str, Path] = {}
    for path in sorted(SOURCE_ROOT.rglob("*.py")):
        parts = list(path.relative_to(SOURCE_ROOT).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts.pop()  # a subpackage is named by its folder
        found[".".join(parts)] = path
    return found


def _path_of(module: str) -> str:
    return str(_modules()[module].relative_to(SOURCE_ROOT.parent))


def _package_of(module: str) -> str:
    """The package a module's relative imports start from (relative to anytcm, "" = root)."""
    path = _modules()[module]
    if path.name == "__init__.py":
        return "" if module == "__init__" else module
    return module.rpartition(".")[0]


def _resolve(name: str) -> str:
    """The anytcm module a dotted name (relative to anytcm) loads: the longest existing one."""
    modules = _modules()
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return "__init__"  # `from anytcm import x` loads the root package


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The anytcm modules one import statement loads."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            head, _, rest = alias.name.partition(".")
            if head == PACKAGE:
                yield _resolve(rest)
        return
    if node.level == 0:
        head, _, rest = (node.module or "").partition(".")
        if head != PACKAGE:
            return
        base = rest
    else:
        package = _package_of(module).split(".") if _package_of(module) else []
        keep = len(package) - (node.level - 1)
        assert keep >= 0, f"{module}: relative import beyond the package"
        base = ".".join([*package[:keep], *([node.module] if node.module else [])])
    for alias in node.names:
        # `from .carriers import _json` loads the submodule when there is one.
        submodule = f"{base}.{alias.name}" if base else alias.name
        yield submodule if submodule in _modules() else _resolve(base)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


@cache
def _imports() -> tuple[Import, ...]:
    """Every import of an anytcm module by an anytcm module, with where it runs."""
    found: list[Import] = []

    def visit(module: str, node: ast.AST, module_level: bool, type_only: bool) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target in _targets(module, node):
                if target != module:
                    found.append(Import(module, target, node.lineno, module_level, type_only))
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(module, child, module_level, True)
            for child in node.orelse:
                visit(module, child, module_level, type_only)
            return
        # A function's body runs when called; a class body runs at import, like the module's.
        inside_function = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for inner in ast.iter_child_nodes(node):
            visit(module, inner, module_level and not inside_function, type_only)

    for module, path in _modules().items():
        visit(module, ast.parse(path.read_text(), str(path)), True, False)
    return tuple(found)


def _layer_of(module: str) -> int | None:
    """The index in LAYERS of a module, None for the reference manager (apart)."""
    if module == APART or module.startswith(APART + "."):
        return None
    best: tuple[int, int] | None = None  # (key length, layer)
    for index, (_, keys) in enumerate(LAYERS):
        for key in keys:
            if (module == key or module.startswith(key + ".")) and (
                best is None or len(key) > best[0]
            ):
                best = (len(key), index)
    assert best is not None, f"anytcm.{module} is in no layer: add it to LAYERS in {__file__}"
    return best[1]


# -- the tests ----------------------------------------------------------------------------------


def test_every_module_has_a_layer() -> None:
    # The guards below prove nothing if the sources were not found or their imports not read.
    assert len(_modules()) > 30
    assert any(imp.source == "client" and imp.target.startswith("_core") for imp in _imports())
    missing = []
    for module in _modules():
        try:
            _layer_of(module)
        except AssertionError:
            missing.append(module)
    assert missing == [], f"modules in no layer (add them to LAYERS): {missing}"


def test_no_module_imports_a_layer_above_its_own() -> None:
    """Function-level and type-only imports count too: they are dependencies all the same."""
    offenders = []
    for imp in _imports():
        source, target = _layer_of(imp.source), _layer_of(imp.target)
        if source is None:
            continue  # the reference manager: tests/test_reference_independence.py
        if target is None:
            if source != len(LAYERS) - 1:
                offenders.append(f"{imp.describe()}: only entry points may start the manager")
            continue
        if target > source:
            offenders.append(
                f"{imp.describe()}: '{LAYERS[source][0]}' may not import '{LAYERS[target][0]}'"
            )
    assert offenders == [], "imports that go up the layers:\n" + "\n".join(offenders)


def test_no_import_cycles_among_module_level_imports() -> None:
    """The imports that run at import time (not in a function, not under TYPE_CHECKING) form
    no cycle, so no module ever sees another half-initialised."""
    graph: dict[str, set[str]] = {module: set() for module in _modules()}
    for imp in _imports():
        if imp.module_level and not imp.type_only:
            graph[imp.source].add(imp.target)
    cycles = _cycles(graph)
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component that has one (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [[*component, component[0]] for component in components]


def test_the_cycle_finder_finds_cycles() -> None:
    """The guard above proves something only if it can fail."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _pure_closure() -> set[str]:
    """The pure entry modules and every anytcm module they import, at any level."""
    seen: set[str] = set()
    todo = list(PURE_ENTRY_MODULES)
    edges: dict[str, set[str]] = {}
    for imp in _imports():
        edges.setdefault(imp.source, set()).add(imp.target)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(edges.get(module, ()))
    return seen


def test_pure_layer_sources_import_no_io_library() -> None:
    offenders = []
    for module in sorted(_pure_closure()):
        path = _modules()[module]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [
                f"{_path_of(module)}:{node.lineno}: {name}"
                for name in names
                if name.partition(".")[0] in FORBIDDEN_IN_PURE
            ]
    assert offenders == []


def test_pure_layer_loads_no_io_library() -> None:
    """In a fresh interpreter: importing the pure modules leaves no I/O library in sys.modules
    (whatever their own imports pull in: numpy, msgspec, orjson)."""
    probe = (
        "import json, sys\n"
        + "".join(f"import anytcm.{module}\n" for module in PURE_ENTRY_MODULES)
        + f"forbidden = {sorted(FORBIDDEN_IN_PURE)!r}\n"
        + "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in forbidden)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == []


@pytest.mark.parametrize("shim", sorted(SHIMS))
def test_shims_only_re_export_their_package(shim: str) -> None:
    package = SHIMS[shim]
    assert {imp.target for imp in _imports() if imp.source == shim} == {package}
    module = __import__(f"{PACKAGE}.{shim}", fromlist=["__all__"])
    source = __import__(f"{PACKAGE}.{package}", fromlist=["__all__"])
    assert module.__all__
    for name in module.__all__:
        assert getattr(module, name) is getattr(source, name), name


# -- the public namespace -----------------------------------------------------------------------


def _root_namespace() -> tuple[set[str], dict[str, str], dict[str, str], set[str]]:
    """(__all__, _EXPORTS, TYPE_CHECKING imports name -> module, names bound eagerly)."""
    tree = ast.parse(_modules()["__init__"].read_text())
    all_names: set[str] = set()
    exports: dict[str, str] = {}
    typed: dict[str, str] = {}
    eager: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            if "__all__" in names:
                all_names = set(ast.literal_eval(node.value)) if node.value else set()
            elif "_EXPORTS" in names:
                exports = ast.literal_eval(node.value) if node.value else {}
            else:
                eager.update(names)
        elif isinstance(node, ast.ImportFrom) and node.level == 1:
            eager.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                assert isinstance(child, ast.ImportFrom), "only imports under TYPE_CHECKING"
                for alias in child.names:
                    # `as` the same name: the explicit re-export form mypy --strict accepts
                    assert alias.asname == alias.name, f"{alias.name}: import it `as` itself"
                    typed[alias.name] = child.module or ""
    return all_names, exports, typed, eager


def test_all_exports_and_type_checking_imports_agree() -> None:
    all_names, exports, typed, eager = _root_namespace()
    assert exports, "_EXPORTS not found in anytcm/__init__.py"
    assert all_names == set(exports) | (all_names & eager), (
        f"in __all__ only: {sorted(all_names - set(exports) - eager)}; "
        f"in _EXPORTS only: {sorted(set(exports) - all_names)}"
    )
    assert typed == exports, (
        f"not imported under TYPE_CHECKING: {sorted(set(exports) - set(typed))}; "
        f"imported there but not exported: {sorted(set(typed) - set(exports))}; "
        f"from another module than _EXPORTS says: "
        f"{sorted(n for n in set(typed) & set(exports) if typed[n] != exports[n])}"
    )


def test_every_public_name_resolves() -> None:
    for name in anytcm.__all__:
        assert getattr(anytcm, name) is not None, name
    assert sorted(dir(anytcm)) == sorted(anytcm.__all__)


def test_version_is_single_sourced() -> None:
    from importlib.metadata import version

    from anytcm._version import __version__

    assert anytcm.__version__ == __version__ == version("anytcm")


# -- size -------------------------------------------------------------------------------------


def test_few_modules_at_the_top_of_the_package() -> None:
    top = sorted(path.name for path in SOURCE_ROOT.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, f"{len(top)} modules at the top: {top}"


def test_no_module_is_too_long() -> None:
    long = {
        _path_of(module): lines
        for module, path in _modules().items()
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}, f"modules over {MAX_MODULE_LINES} lines (split them by job): {long}"
