"""scripts/check-aarch64 runs tests/cpp_ext inside the arm64 root, where only `edgefleet[edge]` and pytest
are installed. A test there that imports the cloud side's libraries stops the whole parity run at
collection (it happened once with torch); this catches it on the host, in a second."""

from __future__ import annotations

import ast
from pathlib import Path

CPP_EXT_TESTS = Path(__file__).resolve().parents[1] / "cpp_ext"
CLOUD_ONLY = {"torch", "torchvision", "onnxscript", "openvino", "tensorflow", "ai_edge_litert", "sqlalchemy",
              "fastapi", "timm"}


def top_level_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_parity_tests_import_nothing_the_edge_install_lacks():
    files = sorted(CPP_EXT_TESTS.glob("*.py"))
    assert len(files) > 10
    offending = {f.name: sorted(top_level_imports(f) & CLOUD_ONLY) for f in files}
    assert {name: found for name, found in offending.items() if found} == {}
