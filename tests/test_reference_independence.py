"""The reference manager must not share code with the client it is there to check.

The rule is a whole-folder one: `anytcm/testing/_manager/` imports the standard library,
third-party packages and itself, nothing else, and no file in it is exempt.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import anytcm.testing._manager

MANAGER_DIR = Path(anytcm.testing._manager.__file__).parent
MANAGER_PACKAGE = "anytcm.testing._manager"


def _imported_modules(path: Path) -> list[tuple[str, int]]:
    """(module, relative level) for every import statement in a file."""
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((alias.name, 0) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level))
    return found


def test_reference_manager_sources_import_nothing_from_the_client() -> None:
    """Every import in the manager's folder is stdlib, third party, or the folder itself."""
    sources = sorted(MANAGER_DIR.rglob("*.py"))
    assert len(sources) > 5  # the folder really holds the server
    offenders = []
    for path in sources:
        depth = len(path.relative_to(MANAGER_DIR).parts) - 1  # levels below _manager/
        for module, level in _imported_modules(path):
            escapes_folder = level > depth + 1
            absolute = level == 0 and module.split(".")[0] == "anytcm"
            if escapes_folder or (absolute and not module.startswith(MANAGER_PACKAGE)):
                offenders.append(f"{path.name}: {'.' * level}{module}")
    assert offenders == []


def test_running_server_loads_no_client_module() -> None:
    """Importing the server loads no anytcm module outside its folder (besides the packages
    that contain it, whose `__init__` modules load nothing of the client either)."""
    probe = (
        "import sys, anytcm.testing._manager.server;"
        "print(sorted(m for m in sys.modules if m.startswith('anytcm')"
        " and m not in ('anytcm', 'anytcm._version', 'anytcm.testing',"
        " 'anytcm.testing._process', 'anytcm.testing._cluster')"
        f" and not m.startswith('{MANAGER_PACKAGE}')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
