"""The compression report on the real digits bundle: a step that damages class 3 on purpose (its bias in
the last layer lowered by 6) must be flagged, and only class 3; the report survives JSON, draws a PNG,
renders in the terminal and goes into a bundle that still verifies."""

from __future__ import annotations

import io
import json
import shutil
import struct

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from rich.console import Console

from edgefleet.cloud.compress.evaluate import onnx_outputs, wilson_interval
from edgefleet.cloud.compress.report import (
    StepMeasurement,
    attach_to_bundle,
    build_report,
    from_json,
    measure,
    measurements,
    plot,
    render_table,
    to_json,
)
from edgefleet.cloud.digits import CLASS_NAMES
from edgefleet.core.bundle import Bundle
from edgefleet.core.signing import TrustStore

pytestmark = pytest.mark.slow


def _lower_bias(model_path, class_index: int, by: float) -> bytes:
    model = onnx.load(str(model_path))
    tensor = next(t for t in model.graph.initializer if t.name.endswith("head.bias"))
    bias = numpy_helper.to_array(tensor).copy()
    bias[class_index] -= by
    tensor.CopyFrom(numpy_helper.from_array(bias, tensor.name))
    return model.SerializeToString()


@pytest.fixture(scope="module")
def steps(digits_bundle, digits_splits):
    s = digits_splits
    model_path = digits_bundle.root / "model.onnx"
    reference = onnx_outputs(model_path, s.x_test)
    ink = s.x_test.mean(axis=(1, 2, 3))
    slices = {"heavy ink": ink > np.median(ink), "light ink": ink <= np.median(ink)}
    kwargs = {"class_names": CLASS_NAMES, "slices": slices, "reference_outputs": reference, "latency_runs": 50,
              "throughput_runs": 10}
    base = measure("fp32", Bundle.open(digits_bundle.root), s.x_test, s.y_test, **kwargs)
    damaged = measure("class3-bias", _lower_bias(model_path, 3, 6.0), s.x_test, s.y_test, **kwargs)
    return base, damaged


def test_measurement_of_the_float_model(steps, digits_bundle):
    base, _ = steps
    assert base.size_bytes == (digits_bundle.root / "model.onnx").stat().st_size
    assert 0 < base.size_zipped_bytes < base.size_bytes
    assert base.parameters == 6090  # DigitsCNN(16): 160 + 4640 + 1290; the int64 Reshape target is not counted
    assert base.flops == Bundle.open(digits_bundle.root).artifacts[0]["flops_per_sample"] > 0
    assert base.metrics["accuracy"] > 0.9 and set(base.metrics["per_class"]) == set(CLASS_NAMES)
    assert set(base.metrics["per_slice"]) == {"heavy ink", "light ink"}
    assert base.numeric_error["max_abs"] == 0.0 and base.numeric_error["argmax_agreement"] == 1.0
    assert 0 < base.latency_ms["p50"] <= base.latency_ms["p99"] and base.latency_ms["runs"] == 50
    assert base.throughput["batch"] == 32 and base.throughput["samples_per_s"] > 0


def test_flags_exactly_the_damaged_class(steps):
    base, damaged = steps
    report = build_report([base, damaged])
    baseline_step, step = report.steps
    assert baseline_step["is_baseline"] and baseline_step["flagged"] == []
    assert [(f["kind"], f["group"]) for f in step["flagged"]] == [("class", "3")]
    flagged = step["flagged"][0]
    assert flagged["drop"] > 0.3 and flagged["ratio_to_overall"] > 2
    change = step["change"]
    assert change["accuracy"]["absolute"] < 0
    assert change["per_class"]["3"]["flagged"]
    assert not any(v["flagged"] for k, v in change["per_class"].items() if k != "3")
    assert not any(v["flagged"] for v in change["per_slice"].values())  # the slices lose about the overall drop
    assert damaged.numeric_error["max_abs"] == pytest.approx(6.0, abs=1e-4)
    assert damaged.numeric_error["argmax_agreement"] < 1.0
    # how far the figure can be trusted on this many rows: the Wilson interval around it
    low, high = step["accuracy_ci95"]
    assert low < damaged.metrics["accuracy"] < high and 0.01 < high - low < 0.2


def test_the_interval_is_the_wilson_score_interval():
    from statsmodels.stats.proportion import proportion_confint

    for successes, rows in ((187, 200), (0, 10), (10, 10), (560, 600)):
        assert wilson_interval(successes, rows) == pytest.approx(
            proportion_confint(successes, rows, method="wilson"), abs=1e-9)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_min_count_and_min_drop_keep_small_or_mild_changes_quiet(steps):
    base, damaged = steps
    assert build_report([base, damaged], min_count=1000).steps[1]["flagged"] == []
    assert build_report([base, damaged], min_drop=0.9).steps[1]["flagged"] == []


def test_json_round_trip(steps):
    report = build_report(list(steps))
    data = json.loads(json.dumps(to_json(report)))
    assert to_json(from_json(data)) == data
    assert measurements(from_json(data)) == list(steps)
    assert StepMeasurement.from_dict(data["steps"][1]["measurement"]) == steps[1]


def test_render_table_shows_the_flag(steps):
    out = io.StringIO()
    console = Console(file=out, width=160, color_system=None)
    for table in render_table(build_report(list(steps))):
        console.print(table)
    text = out.getvalue()
    assert "class3-bias" in text and "per class" in text and "per slice" in text
    assert "(-" in text and " !" in text


def test_plot_writes_a_readable_png(steps, tmp_path):
    path = plot(build_report(list(steps)), tmp_path / "report.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert 1000 <= width <= 2500 and 400 <= height <= 1200
    assert 20_000 < len(data) < 2_000_000


def test_attach_to_bundle_verifies(steps, digits_bundle, tmp_path):
    root = shutil.copytree(digits_bundle.root, tmp_path / "bundle")
    report = build_report(list(steps))
    bundle = attach_to_bundle(report, root, digits_bundle.private_key, step="class3-bias")
    bundle.verify(TrustStore.from_paths([digits_bundle.public_key]))
    again = Bundle.open(root)
    assert again.manifest["metrics"]["compression"] == json.loads(json.dumps(to_json(report)))
    assert "eval" in again.manifest["metrics"]  # the export's metrics stay
    card = again.manifest["model_card"]["evaluation_by_slice"]
    assert card["model"] == "class3-bias" and card["compared_with"] == "fp32"
    assert [f["group"] for f in card["flagged"]] == ["3"]
    assert card["per_class"]["3"]["change"] < -0.3 and "per_slice" in card
    assert again.manifest["model_card"]["intended_use"]  # the rest of the card stays
