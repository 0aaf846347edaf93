"""The cloud service and the shared core never import the CLI: `cloud up` runs where the CLI's extras are not
installed, and a cloud module pulling in click commands would tie the service to the command line's layout."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[2]


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_cloud_or_core_module_imports_the_cli():
    offenders = {str(path.relative_to(ROOT)): sorted(n for n in imported(path) if n.startswith("edgefleet.cli"))
                 for folder in ("cloud", "core") for path in (ROOT / folder).rglob("*.py")}
    assert {path: names for path, names in offenders.items() if names} == {}
