"""`edgefleet import --feature-names FILE`: the drift profile names a tabular input's columns; a wrong
count is one error line and exit code 2 (a real subprocess, as a user runs it)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.cli.test_bundle_commands import assert_user_error, edgefleet
from tests.compilers import import_kit as kit

COLUMNS = ["age", "income", "debt", "rooms", "area", "floor", "year", "distance"]


def test_feature_names_file_names_the_profile_columns_and_a_wrong_count_is_refused(tmp_path: Path):
    kit.mlp_onnx(tmp_path / "mlp.onnx")
    np.savez(tmp_path / "data.npz", features=np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32))
    (tmp_path / "columns.json").write_text(json.dumps(COLUMNS))
    common = [str(tmp_path / "mlp.onnx"), "--name", "price", "--version", "1", "--task", "regression",
              "--reference-data", str(tmp_path / "data.npz")]
    names = ["--feature-names", str(tmp_path / "columns.json")]
    result = edgefleet("import", *common, "--out", str(tmp_path / "b"), *names)
    assert result.returncode == 0, result.stderr
    assert "output value is in the drift profile as values: value[0]" in result.stdout
    profile = json.loads((tmp_path / "b" / "profile.json").read_text())
    assert profile["features"][0]["names"] == COLUMNS
    assert profile["outputs"][0]["names"] == ["value[0]"]
    (tmp_path / "short.txt").write_text("\n".join(COLUMNS[:7]) + "\n")
    refused = edgefleet("import", *common, "--out", str(tmp_path / "c"), "--feature-names", str(tmp_path / "short.txt"))
    assert_user_error(refused, "feature_names for input 'features': expected 8 non-empty names (one per column), "
                               "got 7")
    assert not (tmp_path / "c").exists()
