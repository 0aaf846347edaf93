"""The compile pipeline with the ONNX Runtime and TensorRT targets: real bundles, real onnxruntime."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from edgefleet.compilers.compile import compile_bundle
from edgefleet.compilers.targets.tensorrt import trtexec_command
from edgefleet.core.bundle import Bundle, write_manifest
from edgefleet.core.errors import BackendError, CompileError
from edgefleet.core.signing import SigningKey, TrustStore
from edgefleet.edge_runtime.predictor import Predictor
from tests.cli.test_bundle_commands import assert_user_error, edgefleet


@pytest.fixture(scope="module")
def compiled(digits_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("compiled") / "bundle"
    key = SigningKey.load(digits_bundle.private_key)
    return compile_bundle(digits_bundle.root, ["onnxruntime-cpu", "onnxruntime-gpu", "tensorrt"], out,
                          options={"onnxruntime-cpu": {"format": "ort", "threads": 1}}, signing_key=key)


def test_each_artifact_enters_checked_with_its_error_and_lineage(compiled, digits_bundle):
    bundle = compiled.bundle
    bundle.verify(_trust(digits_bundle))  # signed, every new file listed with its hash
    by_target = {a["target"]: a for a in bundle.artifacts}
    assert set(by_target) == {"onnx", "onnxruntime-cpu", "onnxruntime-gpu", "tensorrt"}
    cpu = by_target["onnxruntime-cpu"]
    assert cpu["format"] == "ort" and cpu["path"] == "onnxruntime-cpu/model.ort" and cpu["options"] == {"threads": 1}
    error = cpu["numeric_error"]
    assert error["checked"] and error["samples"] == 8 and 0 <= error["max_abs"] < error["atol"]
    assert error["quality"] == {"task": "classification", "examples": 8, "top1_agreement": 1.0}
    assert cpu["sha256"] == bundle.manifest["files"][cpu["path"]]["sha256"]
    steps = [s for s in bundle.manifest["lineage"]["steps"] if s["stage"] == "compile"]
    assert [s["target"] for s in steps] == ["onnxruntime-cpu", "onnxruntime-gpu", "tensorrt"]
    assert steps[0]["options"] == {"format": "ort", "threads": 1} and steps[0]["numeric_error"] == error
    source = Bundle.open(digits_bundle.root)
    assert (bundle.name, bundle.version) == (source.name, source.version)  # compiling keeps the model's identity


def test_gpu_artifact_records_providers_and_cpu_check(compiled):
    gpu = next(a for a in compiled.bundle.artifacts if a["target"] == "onnxruntime-gpu")
    providers = [p if isinstance(p, str) else p[0] for p in gpu["options"]["providers"]]
    assert providers == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert gpu["device"] == "gpu" and gpu["precision"] == "fp16"
    assert gpu["numeric_error"]["check_options"] == {"providers": ["CPUExecutionProvider"]}


def test_tensorrt_is_recorded_unchecked_with_a_build_plan(compiled):
    trt = next(a for a in compiled.bundle.artifacts if a["target"] == "tensorrt")
    assert trt["numeric_error"]["checked"] is False and "NVIDIA GPU" in trt["numeric_error"]["reason"]
    plan = json.loads(compiled.bundle.path("tensorrt/build.json").read_text())
    assert plan["inputs"] == {"pixels": [[1, 1, 8, 8], [1, 1, 8, 8], [32, 1, 8, 8]]} and plan["precision"] == "fp16"
    script = compiled.bundle.path("tensorrt/build-engine.sh").read_text()
    assert "trtexec --onnx=model.onnx --saveEngine=model.plan --minShapes=pixels:1x1x8x8" in script
    assert "--maxShapes=pixels:32x1x8x8" in script and "--fp16" in script


def test_trtexec_command_follows_precision_and_dla():
    plan = {"onnx": "model.onnx", "engine": "model.plan", "inputs": {"x": [[1, 30], [4, 30], [8, 30]]},
            "workspace_mb": 256, "precision": "int8", "dla_core": 0, "timing_cache": False}
    command = trtexec_command(plan)
    assert command[:3] == ["trtexec", "--onnx=model.onnx", "--saveEngine=model.plan"]
    assert "--optShapes=x:4x30" in command and "--memPoolSize=workspace:256M" in command
    assert {"--int8", "--fp16", "--useDLACore=0", "--allowGPUFallback"} <= set(command)
    assert not any(c.startswith("--timingCacheFile") for c in command)
    assert "--int8" not in trtexec_command({**plan, "precision": "fp32", "dla_core": None})


def test_predictor_prefers_the_compiled_cpu_artifact_and_takes_targets_by_name(compiled, digits_bundle, caplog):
    trust = [digits_bundle.public_key]
    with Predictor(compiled.bundle, backends=["onnxruntime"], trusted_keys=trust) as predictor:
        assert predictor.describe()["target"] == "onnxruntime-cpu" and predictor.artifact["format"] == "ort"
        assert predictor.self_test().passed
    caplog.set_level(logging.WARNING)
    with Predictor(compiled.bundle, backends=["onnxruntime-gpu"], trusted_keys=trust) as predictor:
        assert predictor.describe()["target"] == "onnxruntime-gpu" and predictor.self_test().passed
        assert predictor._backend.providers == ["CPUExecutionProvider"]  # this build has no GPU providers
    assert "TensorrtExecutionProvider is not in this build" in caplog.text


def test_a_target_without_an_edge_backend_is_refused_up_front(compiled, digits_bundle):
    with pytest.raises(BackendError, match="target 'tensorrt' runs on backend 'tensorrt', which this edge runtime"):
        Predictor(compiled.bundle, backends=["tensorrt", "onnxruntime"], trusted_keys=[digits_bundle.public_key])


def test_unknown_target_and_bad_options_fail_before_any_work(digits_bundle, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(CompileError, match="unknown target 'coreml'; known targets: .*native"):
        compile_bundle(digits_bundle.root, ["coreml"], out)
    with pytest.raises(CompileError, match="onnxruntime-cpu: unknown option\\(s\\) bogus"):
        compile_bundle(digits_bundle.root, ["onnxruntime-cpu"], out, options={"onnxruntime-cpu": {"bogus": 1}})
    with pytest.raises(CompileError, match="options given for targets not compiled: tensorrt"):
        compile_bundle(digits_bundle.root, ["onnxruntime-cpu"], out, options={"tensorrt": {}})
    with pytest.raises(CompileError, match="int8 takes its scales from Q/DQ nodes; this bundle's model is fp32"):
        compile_bundle(digits_bundle.root, ["tensorrt"], out, options={"tensorrt": {"precision": "int8"}})
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing half-written is left


def test_an_artifact_that_disagrees_with_the_source_is_refused(bundle_copy, tmp_path):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    golden = dict(np.load(bundle_copy / "golden.npz"))
    name = next(k for k in golden if k.startswith("outputs/"))
    golden[name] = golden[name] + 0.5  # the source model's recorded outputs no longer match the model
    np.savez(bundle_copy / "golden.npz", **golden)
    write_manifest(bundle_copy, manifest)
    with pytest.raises(CompileError, match="disagrees with the source model on the golden examples: max abs error 0.5"):
        compile_bundle(bundle_copy, ["onnxruntime-cpu"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_recompiling_a_target_replaces_its_artifact(compiled, digits_bundle, tmp_path):
    again = compile_bundle(compiled.bundle, ["onnxruntime-cpu"], tmp_path / "again")
    targets = [a["target"] for a in again.bundle.artifacts]
    assert targets.count("onnxruntime-cpu") == 1 and again.bundle.manifest["artifacts"][-1]["format"] == "onnx"
    assert not (tmp_path / "again" / "onnxruntime-cpu" / "model.ort").exists()


def test_cli_compile_prints_the_table_and_refuses_bad_input(digits_bundle, tmp_path):
    out = tmp_path / "compiled"
    result = edgefleet("compile", str(digits_bundle.root), "-T", "onnxruntime-cpu", "-T", "tensorrt",
                       "-o", "tensorrt.max_batch=8", "--key", str(digits_bundle.private_key), "--out", str(out),
                       "--json", str(tmp_path / "c.json"))
    assert result.returncode == 0, result.stderr
    assert "onnxruntime-cpu" in result.stdout and "tensorrt unchecked" in result.stdout
    report = json.loads((tmp_path / "c.json").read_text())
    assert [r["target"] for r in report] == ["onnxruntime-cpu", "tensorrt"]
    assert report[1]["compile"]["max_batch"] == 8
    assert_user_error(edgefleet("compile", str(digits_bundle.root), "-T", "onnxruntime-cpu", "-o", "nodot=1",
                                "--out", str(tmp_path / "x")), "expected TARGET.KEY=VALUE")
    assert_user_error(edgefleet("compile", str(digits_bundle.root), "-T", "nope", "--out", str(tmp_path / "x")),
                      "unknown target 'nope'")
    assert_user_error(edgefleet("compile", str(digits_bundle.root), "-T", "onnxruntime-cpu", "--out", str(out)),
                      "exists and is not empty")
    listed = edgefleet("compile", str(digits_bundle.root), "--list")
    assert {"onnxruntime-cpu", "openvino-npu", "litert", "tensorrt", "native"} <= set(listed.stdout.split())


def test_a_listed_backend_that_is_not_installed_is_skipped_with_its_reason(digits_bundle, tmp_path, monkeypatch):
    from edgefleet.edge_runtime import backends

    monkeypatch.setitem(backends.REGISTRY, "absent", "edgefleet.edge_runtime.backends.absent_runtime:Absent")
    trust = [digits_bundle.public_key]
    predictor = Predictor(digits_bundle.root, backends=["absent", "onnxruntime"], trusted_keys=trust)
    assert predictor.fallbacks[0][0] == "absent" and "is not installed here" in predictor.fallbacks[0][1]
    with pytest.raises(BackendError, match="absent: backend 'absent' is not installed here"):
        Predictor(digits_bundle.root, backends=["absent"], trusted_keys=trust)


def _trust(digits_bundle):
    from edgefleet.core.signing import TrustStore

    return TrustStore.from_paths([digits_bundle.public_key])


def test_source_bundle_is_untouched(digits_bundle, compiled, tmp_path):
    copy = shutil.copytree(digits_bundle.root, tmp_path / "copy")
    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()}
    compile_bundle(copy, ["onnxruntime-cpu"], tmp_path / "out")
    assert {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()} == before


def test_a_compiled_bundle_travels_as_an_archive_and_serves_on_every_backend(digits_bundle, tmp_path):
    pytest.importorskip("openvino")
    key = SigningKey.load(digits_bundle.private_key)
    result = compile_bundle(digits_bundle.root, ["native", "openvino-cpu"], tmp_path / "compiled", signing_key=key)
    archive = result.bundle.pack(tmp_path / "compiled.tar.gz")  # as the registry serves it to a device
    opened = Bundle.open(archive)
    for entry in ("native", "openvino", "onnxruntime"):
        with Predictor(opened, backends=[entry], trusted_keys=[digits_bundle.public_key]) as predictor:
            assert predictor.backend_name == entry and predictor.self_test().passed


# the golden decisions (core/decision.py) ----------------------------------------------------------------
CPU_TARGETS = ["onnxruntime-cpu", "native", "openvino-cpu"]


@pytest.fixture(scope="module")
def int8(digits_bundle, digits_splits, tmp_path_factory):
    """The demo path's int8 digits bundle (static QDQ, 256 calibration rows), with a wide tolerance."""
    from tests.cloud.compress import decision_kit

    key = SigningKey.load(digits_bundle.private_key)
    return decision_kit.quantize(digits_bundle.root, tmp_path_factory.mktemp("int8") / "bundle",
                                 digits_splits.x_train, key)


def _cpu_targets() -> list[str]:
    import importlib.util

    return [t for t in CPU_TARGETS if t != "openvino-cpu" or importlib.util.find_spec("openvino") is not None]


def test_an_int8_artifact_that_flips_a_golden_top1_is_refused_inside_the_tolerance(int8, digits_bundle, tmp_path):
    from tests.cloud.compress import decision_kit

    flipped = decision_kit.flip_one_golden(int8, tmp_path / "flipped", SigningKey.load(digits_bundle.private_key))
    assert flipped["max_abs"] < flipped["atol"]  # the numeric check alone passes it (0.95 < atol 1.5)
    changed = f"example {flipped['example']}: '{flipped['source_class']}' became '{flipped['new_class']}'"
    for target in _cpu_targets():
        with pytest.raises(CompileError, match=rf"target {target}: the artifact changes the model's decision on the "
                                               rf"golden examples: top-1 changed on 1 of 8 .*{changed}.* within atol"):
            compile_bundle(flipped["root"], [target], tmp_path / target)
        assert not (tmp_path / target).exists()


def test_the_int8_digits_bundle_compiles_for_every_cpu_backend_with_its_decisions_checked(int8, digits_bundle,
                                                                                          tmp_path):
    key = SigningKey.load(digits_bundle.private_key)
    targets = _cpu_targets()
    result = compile_bundle(int8.root, targets, tmp_path / "compiled", signing_key=key)
    tie = 2 * int8.manifest["golden"]["noise"]
    for compiled in result.compiled:
        error = compiled.artifact["numeric_error"]
        assert error["decisions"] == {"compared": 8, "agreed": 8, "near_ties": 0, "tie_margin": tie}, compiled.target
    for target in targets:
        with Predictor(result.bundle, backends=[target], trusted_keys=[digits_bundle.public_key]) as predictor:
            report = predictor.self_test()
        assert report.passed and report.decisions["agreed"] == 8, (target, report.failures)


def test_golden_examples_too_close_to_call_are_refused(digits_bundle, digits_splits, tmp_path):
    from tests.cloud.compress import decision_kit

    source = Bundle.open(digits_bundle.root)
    key = SigningKey.load(digits_bundle.private_key)
    int8 = decision_kit.quantize(digits_bundle.root, tmp_path / "int8", digits_splits.x_train, key)
    x_near = decision_kit.boundary_input(source.root / "model.onnx", int8.root / "model.int8.onnx",
                                         digits_splits.x_train, digits_splits.y_train)
    inputs = np.concatenate([source.golden()[0]["pixels"][:3], np.repeat(x_near, 5, axis=0)])
    root = decision_kit.with_golden(source, tmp_path / "near", inputs, source.root / "model.onnx", key)
    with pytest.raises(CompileError, match=r"only 3 of 8 golden examples have a top-1 margin over the tie margin "
                                           r"0.0002 \(at least 4"):
        compile_bundle(root, ["onnxruntime-cpu"], tmp_path / "out")


# partial results: a target that refuses the model does not stop the others --------------------------------
class NormedMLP(torch.nn.Module):
    """A pre-norm MLP head (timm's Mlp after a LayerNorm) over running sums of its features: CumSum, which the
    native target lacks."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.norm, self.fc2 = torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.norm(self.fc1(torch.cumsum(x, dim=1)))))


@pytest.fixture(scope="module")
def normed(tmp_path_factory):
    """A signed bundle of NormedMLP and its key pair (private key file, public key)."""
    from edgefleet.compilers import export_torch

    torch.manual_seed(0)
    workdir = tmp_path_factory.mktemp("normed")
    key = SigningKey.generate()
    private, public = key.save(workdir / "keys", "release")
    data = torch.randn(64, 16)
    bundle = export_torch(NormedMLP(), data[:2], workdir / "bundle", name="normed", version=1, reference_data=data,
                          signing_key=key)
    return bundle, private, public


def test_a_refused_target_is_listed_and_the_others_enter_the_bundle(normed, tmp_path):
    pytest.importorskip("openvino")
    bundle, private, public = normed
    result = compile_bundle(bundle.root, ["onnxruntime-cpu", "native", "openvino-cpu"], tmp_path / "out",
                            signing_key=SigningKey.load(private))
    assert [c.target for c in result.compiled] == ["onnxruntime-cpu", "openvino-cpu"]
    assert [r.target for r in result.refused] == ["native"]
    assert "CumSum" in result.refused[0].reason and "op not supported" in result.refused[0].reason
    verified = Bundle.open(tmp_path / "out")
    verified.verify(TrustStore([SigningKey.load(private).public_key]))
    assert {a["target"] for a in verified.artifacts} == {"onnx", "onnxruntime-cpu", "openvino-cpu"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == ["onnxruntime-cpu", "openvino-cpu"]
    assert [s["target"] for s in verified.manifest["lineage"]["steps"] if s["stage"] == "compile"] == \
        ["onnxruntime-cpu", "openvino-cpu"]


def test_strict_stops_at_the_first_refusal_and_all_refused_writes_nothing(normed, tmp_path):
    bundle, _, _ = normed
    with pytest.raises(CompileError, match="native: the model uses what the native backend does not run"):
        compile_bundle(bundle.root, ["onnxruntime-cpu", "native"], tmp_path / "strict", strict=True)
    with pytest.raises(CompileError, match=r"no target compiled: native: .*CumSum.*; tensorrt: "
                                           r"int8 takes its scales from Q/DQ nodes"):
        compile_bundle(bundle.root, ["native", "tensorrt"], tmp_path / "none",
                       options={"tensorrt": {"precision": "int8"}})
    assert list(tmp_path.iterdir()) == []  # no bundle, no half-built directory


def test_a_refused_recompile_keeps_the_artifact_the_source_had(normed, tmp_path):
    bundle, private, _ = normed
    key = SigningKey.load(private)
    first = compile_bundle(bundle.root, ["tensorrt"], tmp_path / "first", signing_key=key)
    before = (tmp_path / "first" / "tensorrt" / "build.json").read_bytes()
    again = compile_bundle(first.bundle, ["onnxruntime-cpu", "tensorrt"], tmp_path / "again", signing_key=key,
                           options={"tensorrt": {"precision": "int8"}})
    assert [r.target for r in again.refused] == ["tensorrt"]
    assert (tmp_path / "again" / "tensorrt" / "build.json").read_bytes() == before
    verified = Bundle.open(tmp_path / "again")
    verified.verify(TrustStore([key.public_key]))
    assert [a for a in verified.artifacts if a["target"] == "tensorrt"] == \
        [a for a in first.bundle.artifacts if a["target"] == "tensorrt"]


def test_cli_compile_reports_each_refusal_and_exits_1(normed, tmp_path):
    pytest.importorskip("openvino")
    bundle, private, _ = normed
    out = tmp_path / "compiled"
    result = edgefleet("compile", str(bundle.root), "-T", "onnxruntime-cpu", "-T", "native", "-T", "openvino-cpu",
                       "--key", str(private), "--out", str(out), "--json", str(tmp_path / "c.json"))
    assert result.returncode == 1, result.stderr
    assert "refused" in result.stdout and "CumSum" in result.stdout and "Traceback" not in result.stderr
    report = json.loads((tmp_path / "c.json").read_text())
    assert [(r["target"], r["status"]) for r in report] == \
        [("onnxruntime-cpu", "compiled"), ("native", "refused"), ("openvino-cpu", "compiled")]
    assert "CumSum" in report[1]["reason"]
    assert {a["target"] for a in Bundle.open(out).artifacts} == {"onnx", "onnxruntime-cpu", "openvino-cpu"}
    strict = edgefleet("compile", str(bundle.root), "-T", "onnxruntime-cpu", "-T", "native", "--strict",
                       "--out", str(tmp_path / "strict"))
    assert_user_error(strict, "native: the model uses what the native backend does not run")
    assert not (tmp_path / "strict").exists()
    none = edgefleet("compile", str(bundle.root), "-T", "native", "-T", "tensorrt", "-o", "tensorrt.precision=int8",
                     "--out", str(tmp_path / "none"), env={"COLUMNS": "100000"})  # the long line unwrapped
    assert_user_error(none, "no target compiled: native: ")
    assert not (tmp_path / "none").exists()
