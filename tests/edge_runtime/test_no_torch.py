"""A device installs no torch: the whole edge path must run without importing it."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import json, sys
import numpy as np
import edgefleet.edge_runtime
import edgefleet.cli.main
from edgefleet.edge_runtime import Predictor
p = Predictor(sys.argv[1], trusted_keys=[sys.argv[2]])
assert p.self_test().passed
p.predict(np.zeros((1, 1, 8, 8), np.float32))
heavy = {"torch", "onnx", "onnxscript", "sklearn", "openvino"}
wings = ("edgefleet.compilers", "edgefleet.cloud")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy or m.startswith(wings))))
"""


def test_edge_runtime_never_imports_torch(digits_bundle):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(digits_bundle.root), str(digits_bundle.public_key)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
