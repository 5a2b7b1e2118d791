"""The reference manager must not share code with the client it is there to check."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import anytcm.testing

TESTING_DIR = Path(anytcm.testing.__file__).parent


def _imported_modules(path: Path) -> list[tuple[str, int]]:
    """(module, relative level) for every import statement in a file."""
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((alias.name, 0) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level))
    return found


# The carrier conformance kit is client-side test support (it drives carriers); everything else
# in anytcm.testing is the reference manager, which must share no code with the client.
CLIENT_SIDE_KIT = {"carriers.py"}


def test_reference_manager_sources_import_nothing_from_the_client() -> None:
    """Every import of the server is stdlib, third party, or anytcm.testing's server itself."""
    offenders = []
    for path in sorted(TESTING_DIR.glob("*.py")):
        if path.name in CLIENT_SIDE_KIT:
            continue
        for module, level in _imported_modules(path):
            escapes_package = level > 1
            absolute_client = level == 0 and module.split(".")[0] == "anytcm"
            if (escapes_package or absolute_client) and not module.startswith("anytcm.testing"):
                offenders.append(f"{path.name}: {'.' * level}{module}")
    assert offenders == []


def test_running_server_loads_no_client_module() -> None:
    """Importing the server loads no anytcm module outside anytcm.testing (besides the root)."""
    probe = (
        "import sys, anytcm.testing._server;"
        "print(sorted(m for m in sys.modules if m.startswith('anytcm')"
        " and m != 'anytcm' and not m.startswith('anytcm.testing')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
