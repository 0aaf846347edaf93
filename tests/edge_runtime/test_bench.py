"""The benchmark engine on a tiny real bundle: run counts, ordered percentiles, consistent throughput,
interleaved comparison with a bare onnxruntime session, and a JSON-serialisable report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console

from edgefleet.core.bundle import file_digest, sign, write_manifest
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.signing import SigningKey, TrustStore
from edgefleet.edge_runtime import bench, machine
from edgefleet.edge_runtime.bench import BenchError, BenchOptions, run_bench
from edgefleet.edge_runtime.bench_tables import render_tables

FLOPS_PER_SAMPLE = 2 * 3 * 4 + 3 + 3  # Gemm 4 -> 3 with bias, then Relu
RNG = np.random.default_rng(0)
WEIGHT = RNG.standard_normal((3, 4)).astype(np.float32)
BIAS = RNG.standard_normal(3).astype(np.float32)


def _reference(x: np.ndarray) -> np.ndarray:
    return np.maximum(x @ WEIGHT.T + BIAS, 0)


def _write_bundle(root: Path, *, golden: bool = True, flops: bool = True,
                  onnx_artifact: bool = True) -> TrustStore:
    root.mkdir()
    if onnx_artifact:
        gemm = helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1)
        graph = helper.make_graph(
            [gemm, helper.make_node("Relu", ["h"], ["y"])],
            "tiny",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
            initializer=[numpy_helper.from_array(WEIGHT, "w"), numpy_helper.from_array(BIAS, "b")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
        onnx.save(model, root / "model.onnx")
        artifact = {"target": "onnxruntime-cpu", "backend": "onnxruntime", "format": "onnx",
                    "path": "model.onnx"}
    else:
        np.savez(root / "weights.npz", w=WEIGHT, b=BIAS)
        artifact = {"target": "numpy", "backend": "reference", "format": "npz", "path": "weights.npz"}
    if flops:
        artifact["flops_per_sample"] = FLOPS_PER_SAMPLE
    manifest = {
        "name": "tiny",
        "version": 3,
        "interface": {
            "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
            "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 3]}],
        },
        "artifacts": [artifact],
    }
    if golden:
        x = RNG.standard_normal((3, 4)).astype(np.float32)
        np.savez(root / "golden.npz", **{"inputs/x": x, "outputs/y": _reference(x)})
        manifest["golden"] = {"path": "golden.npz", "atol": 1e-5, "rtol": 1e-4}
    write_manifest(root, manifest)
    key = SigningKey.generate()
    sign(root, key)
    return TrustStore([key.public_key])


@pytest.fixture(autouse=True)
def short_warmup(monkeypatch):
    monkeypatch.setattr(bench, "WARMUP_SECONDS", 0.01)


@pytest.fixture
def tiny(tmp_path) -> tuple[Path, TrustStore]:
    root = tmp_path / "tiny"
    return root, _write_bundle(root)


def _assert_distribution(dist: dict, batch: int, runs: int) -> None:
    latency = dist["latency_ms"]
    assert dist["runs"] == runs
    ordered = [latency[k] for k in ("min", "p50", "p90", "p95", "p99", "p99_9", "max")]
    assert ordered == sorted(ordered)
    assert latency["min"] <= latency["mean"] <= latency["max"]
    assert latency["min"] > 0
    throughput = dist["throughput"]
    assert throughput["calls_per_s"] == pytest.approx(1e3 / latency["mean"])
    assert throughput["samples_per_s"] == pytest.approx(batch * throughput["calls_per_s"])


def test_run_count_percentiles_throughput_and_flops(tiny):
    root, trust = tiny
    report = run_bench(root, trust, BenchOptions(batches=(1, 5), runs=37))

    assert [r["batch"] for r in report["results"]] == [1, 5]
    for result in report["results"]:
        _assert_distribution(result, result["batch"], runs=37)
        assert result["stopped_by"] == "target"
        assert result["warmup_runs"] >= bench.WARMUP_RUNS
        mean_seconds = result["latency_ms"]["mean"] / 1e3
        expected_gflops = FLOPS_PER_SAMPLE * result["batch"] / mean_seconds / 1e9
        assert result["gflops_per_s"] == pytest.approx(expected_gflops)
        assert "raw" not in result
    assert report["flops_per_sample"] == FLOPS_PER_SAMPLE
    assert report["input_source"] == "golden"
    assert report["bundle"]["name"] == "tiny" and report["bundle"]["version"] == 3
    assert report["bundle"]["artifact"]["path"] == "model.onnx"
    assert report["bundle"]["artifact"]["sha256"] == file_digest(root / "model.onnx")
    assert report["backend"] == "onnxruntime"
    assert report["load_seconds"] > 0 and report["first_inference_ms"] > 0
    assert report["memory"]["peak_rss_bytes"] >= report["memory"]["rss_after_load_bytes"] > 0
    assert report["machine"]["logical_cores"] >= 1
    assert report["stop_rule"] == {"min_runs": 37, "min_seconds": 0.0, "max_seconds": bench.TIME_CAP_SECONDS}
    assert report["quality"]["task"] == "other" and report["quality"]["examples"] == 3  # no task: raw error only
    assert set(report["quality"]) == {"task", "examples", "max_abs_error"} and report["quality"]["max_abs_error"] < 1e-5
    assert json.loads(json.dumps(report, allow_nan=False)) == report


def test_compare_raw_times_both_interleaved(tiny):
    root, trust = tiny
    report = run_bench(root, trust, BenchOptions(batches=(2,), runs=40, threads=1, compare_raw=True))

    (result,) = report["results"]
    _assert_distribution(result, 2, runs=40)
    _assert_distribution(result["raw"], 2, runs=40)
    ours, raw = result["latency_ms"], result["raw"]["latency_ms"]
    assert result["overhead_ratio"] == pytest.approx(ours["p50"] / raw["p50"])
    assert result["overhead_ratio_mean"] == pytest.approx(ours["mean"] / raw["mean"])
    assert result["overhead_ratio"] > 0 and result["overhead_ratio_mean"] > 0
    assert report["raw_load_seconds"] > 0 and report["threads"] == 1
    json.dumps(report, allow_nan=False)

    text = _render(report)
    assert "tiny v3" in text and "p50 raw" in text


def test_duration_runs_at_least_that_long_and_reports_progress(tiny):
    root, trust = tiny
    calls: list[tuple[str, float]] = []
    report = run_bench(root, trust, BenchOptions(duration=0.25), progress=lambda m, f: calls.append((m, f)))

    (result,) = report["results"]
    assert result["runs"] >= 1 and result["wall_seconds"] >= 0.25
    assert report["stop_rule"] == {"min_runs": 1, "min_seconds": 0.25, "max_seconds": 0.25}
    fractions = [f for _, f in calls]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert any("warm-up" in m for m, _ in calls)
    assert len(calls) < 50  # occasional, not once per run


def test_random_inputs_without_golden_and_no_flops(tmp_path):
    trust = _write_bundle(tmp_path / "plain", golden=False, flops=False)
    report = run_bench(tmp_path / "plain", trust, BenchOptions(batches=(3,), runs=5))

    assert report["input_source"] == "random"
    assert report["flops_per_sample"] is None and report["results"][0]["gflops_per_s"] is None
    assert report["results"][0]["runs"] == 5
    assert report["quality"] is None
    assert "unknown" in _render(report) and "no golden examples" in _render(report)


def test_golden_inputs_are_repeated_to_the_batch_size(tiny):
    root, _ = tiny
    from edgefleet.core.bundle import Bundle

    opened = Bundle.open(root)
    make, source = bench._input_maker(opened, 0, bench._golden(opened)[0])
    golden = opened.golden()[0]["x"]
    assert source == "golden"
    assert np.array_equal(make(7)["x"], golden[[0, 1, 2, 0, 1, 2, 0]])
    assert np.array_equal(make(2)["x"], golden[:2])


class _NumpyBackend:
    """A backend for a non-ONNX artifact, to show compare_raw refuses what it cannot compare."""

    name = "reference"
    formats = ("npz",)

    def load(self, artifact: Path, options: dict) -> None:
        with np.load(artifact) as data:
            self.weight, self.bias = data["w"], data["b"]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": np.maximum(inputs["x"] @ self.weight.T + self.bias, 0)}

    def close(self) -> None:
        pass


def test_other_backends_run_but_compare_raw_needs_onnx(tmp_path, monkeypatch):
    from edgefleet.edge_runtime.backends import REGISTRY

    monkeypatch.setitem(REGISTRY, "reference", "tests.edge_runtime.test_bench:_NumpyBackend")
    trust = _write_bundle(tmp_path / "npz", onnx_artifact=False)

    report = run_bench(tmp_path / "npz", trust, BenchOptions(backend="reference", runs=3))
    assert report["backend"] == "reference" and report["results"][0]["runs"] == 3

    with pytest.raises(BenchError, match="needs the onnxruntime backend on an ONNX artifact"):
        run_bench(tmp_path / "npz", trust, BenchOptions(backend="reference", runs=3, compare_raw=True))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (BenchOptions(batches=()), "batch sizes"),
        (BenchOptions(batches=(0,)), "batch sizes"),
        (BenchOptions(runs=0), "runs"),
        (BenchOptions(duration=0), "duration"),
        (BenchOptions(threads=0), "threads"),
    ],
)
def test_bad_options_are_one_clear_error(tiny, options, message):
    root, trust = tiny
    with pytest.raises(BenchError, match=message):
        run_bench(root, trust, options)


def test_machine_description_survives_a_bare_system(monkeypatch, tmp_path):
    described = machine.describe_machine()
    assert described["architecture"] and described["logical_cores"] >= 1
    assert described["libraries"]["numpy"] == np.__version__
    json.dumps(described)

    monkeypatch.setattr(machine, "PROC", tmp_path / "no-proc")
    monkeypatch.setattr(machine, "SYS_CPU", tmp_path / "no-sys")
    bare = machine.describe_machine()
    assert bare["cpu_flags"] == [] and bare["physical_cores"] is None
    assert bare["memory_total_bytes"] is None or bare["memory_total_bytes"] > 0
    assert machine.peak_rss_bytes() > 0  # getrusage fallback
    assert machine.current_rss_bytes() is None


def _render(report: dict) -> str:
    console = Console(record=True, width=240)
    for table in render_tables(report):
        console.print(table)
    return console.export_text()


def test_side_by_side_entries_are_checked_up_front_and_a_refused_backend_is_a_row(tiny, tmp_path):
    from edgefleet.edge_runtime.bench import check_entries, refused_report
    from edgefleet.edge_runtime.bench_tables import comparison_table

    root, trust = tiny
    check_entries(root, trust, ["onnxruntime", "native", "onnxruntime-cpu"])  # backends, a target of the bundle
    with pytest.raises(BenchError, match=r"--backend tflite: unknown backend 'tflite'.* nor a target compiled "
                                         r"into this bundle \(onnxruntime-cpu\)"):
        check_entries(root, trust, ["onnxruntime", "tflite"])
    with pytest.raises(BenchError, match="no backend named"):
        check_entries(root, trust, [])
    with pytest.raises(EdgefleetError, match="trust"):
        check_entries(root, TrustStore([SigningKey.generate().public_key]), ["onnxruntime"])

    measured = {"entry": "onnxruntime", "status": "measured", **run_bench(root, trust, BenchOptions(runs=3))}
    refused = refused_report("native", "bundle has no artifact in a format it runs (edgefleet-graph)")
    json.dumps([measured, refused])
    console = Console(record=True, width=240)
    console.print(comparison_table([measured, refused]))
    text = console.export_text()
    assert "native" in text and "cannot run: bundle has no artifact in a format it runs (edgefleet-graph)" in text
    assert "onnxruntime-cpu (onnx)" in text
