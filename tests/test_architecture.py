"""The import structure is checked, not hoped for: layers, no cycles, one global broker.

`lint-imports` checks the contracts in pyproject.toml ([tool.importlinter]); the grimp
test below also proves no import cycle between any two modules of the project, which
contracts over packages alone would not (a cycle between modules of two top-level
packages has no common ancestor to check).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("keysync", "web", "jobs", "worker", "services", "db", "g2a_sim")


def test_import_contracts_hold() -> None:
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint_imports is not None, "import-linter is a dev dependency (pip install -e '.[dev]')"
    result = subprocess.run([lint_imports, "--no-cache"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def _imports_in_cycles(graph: grimp.ImportGraph) -> list[tuple[str, str]]:
    """Every direct import `a -> b` where `b` also (transitively) imports `a`."""
    return sorted(
        (importer, imported)
        for importer in graph.modules
        for imported in graph.find_modules_directly_imported_by(importer)
        if graph.chain_exists(importer=imported, imported=importer)
    )


def test_no_import_cycle_between_modules() -> None:
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True)
    assert _imports_in_cycles(graph) == []


def test_the_cycle_check_finds_cycles() -> None:
    graph = grimp.ImportGraph()
    for importer, imported in (("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")):
        graph.add_import(importer=importer, imported=imported)
    assert _imports_in_cycles(graph) == [("a", "b"), ("b", "c"), ("c", "a")]
