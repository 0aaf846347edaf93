"""import_model on ONNX files built here from public architectures: each imported bundle verifies with the
test key, predicts what a bare onnxruntime session on the source file predicts, passes its self-test,
and (the CNN) compiles; refusals are one ExportError and leave nothing behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgefleet.compilers.import_model import import_model
from edgefleet.core.errors import CompileError, ExportError, SchemaError, VerificationError
from edgefleet.core.manifest_rules import check_structure
from edgefleet.core.signing import SigningKey, TrustStore
from edgefleet.edge_runtime.predictor import Predictor
from tests.compilers import import_kit as kit

CLASSES = [f"class{i}" for i in range(10)]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("import")


@pytest.fixture(scope="module")
def key(work: Path) -> tuple[SigningKey, Path]:
    signing = SigningKey.generate()
    _, public = signing.save(work / "keys", "test")
    return signing, public


@pytest.fixture(scope="module")
def mobilenet(work: Path) -> Path:
    return kit.mobilenet_onnx(work / "mobilenet.onnx")


@pytest.fixture(scope="module")
def encoder(work: Path) -> Path:
    return kit.encoder_onnx(work / "encoder.onnx")


@pytest.fixture(scope="module")
def mlp(work: Path) -> Path:
    return kit.mlp_onnx(work / "mlp.onnx")


@pytest.fixture(scope="module")
def mobilenet_bundle(work: Path, mobilenet: Path, key) -> Path:
    images = np.random.default_rng(1).standard_normal((40, 3, 32, 32)).astype(np.float32)
    np.savez(work / "images.npz", image=images)
    bundle = import_model(mobilenet, work / "mobilenet-bundle", name="mobilenet", version=1,
                          reference_data=work / "images.npz", class_names=CLASSES, signing_key=key[0])
    return bundle.root


def bare(path: Path, feed: dict) -> dict:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def assert_served_like_onnxruntime(root: Path, public: Path, source: Path, feeds: list[dict]) -> None:
    with Predictor(root, trusted_keys=[public], threads=1) as predictor:
        report = predictor.self_test()
        assert report.passed, report.failures
        for feed in feeds:
            got, want = predictor.predict(feed), bare(source, feed)
            assert set(got) == set(want)
            for name in want:  # equal up to float rounding (the Predictor runs one thread, the bare session all)
                assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape
                np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6)


# --- the models ---------------------------------------------------------------------------------------
def test_cnn_with_reference_data_is_a_classifier_with_a_profile(mobilenet_bundle, mobilenet, key):
    trust = TrustStore.from_paths([key[1]])
    from edgefleet.core.bundle import Bundle

    bundle = Bundle.open(mobilenet_bundle)
    assert bundle.verify(trust).name == "mobilenet"
    manifest = bundle.manifest
    assert manifest["interface"]["inputs"] == [{"name": "image", "dtype": "float32", "shape": ["batch", 3, 32, 32]}]
    assert manifest["interface"]["task"] == "classification" and manifest["interface"]["postprocess"] == "softmax"
    assert manifest["golden"]["count"] == 8 and "generated" not in manifest["golden"]
    assert manifest["reference_profile"]["count"] == 40
    assert manifest["lineage"]["dataset_fingerprint"].startswith("sha256:")
    step = manifest["lineage"]["steps"][0]
    assert step["stage"] == "import" and step["source"]["file"] == "mobilenet.onnx"
    artifact = manifest["artifacts"][0]
    assert (artifact["target"], artifact["path"], artifact["precision"]) == ("onnx", "model.onnx", "fp32")
    assert artifact["flops_per_sample"] > 0
    assert json.loads((mobilenet_bundle / "profile.json").read_text())["predictions"]["classes"] == CLASSES
    rng = np.random.default_rng(2)
    feeds = [{"image": rng.standard_normal((n, 3, 32, 32)).astype(np.float32)} for n in (1, 5)]
    assert_served_like_onnxruntime(mobilenet_bundle, key[1], mobilenet, feeds)


def test_imported_cnn_compiles_for_onnxruntime_openvino_and_native(mobilenet_bundle, work, key):
    from edgefleet.compilers.compile import compile_bundle

    pytest.importorskip("openvino")
    compiled = compile_bundle(mobilenet_bundle, ["onnxruntime-cpu", "openvino-cpu"], work / "mobilenet-compiled",
                              signing_key=key[0])
    assert all(c.checked for c in compiled.compiled)
    feed = {"image": np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)}
    want = bare(mobilenet_bundle / "model.onnx", feed)["logits"]
    for target in ("onnxruntime-cpu", "openvino-cpu"):
        with Predictor(compiled.bundle.root, backends=[target], trusted_keys=[key[1]], threads=1) as predictor:
            assert predictor.self_test().passed
            np.testing.assert_allclose(predictor.predict(feed)["logits"], want, atol=1e-3, rtol=1e-3)
    try:
        native = compile_bundle(mobilenet_bundle, ["native"], work / "mobilenet-native", signing_key=key[0])
    except CompileError as err:  # a refusal names what the native backend does not run
        ops = {n.op_type for n in onnx.load(str(mobilenet_bundle / "model.onnx")).graph.node}
        assert any(op in str(err) for op in ops), str(err)
    else:
        with Predictor(native.bundle.root, backends=["native"], trusted_keys=[key[1]], threads=1) as predictor:
            assert predictor.self_test().passed


def test_encoder_keeps_its_dynamic_token_axis(encoder, work, key):
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 64, (12, 24)).astype(np.int64)
    mask = np.ones((12, 24), np.int64)
    mask[::3, 20:] = 0
    np.savez(work / "tokens.npz", input_ids=ids, attention_mask=mask)
    with pytest.raises(ExportError, match="reference data is one array, but the model has 2 inputs"):
        import_model(encoder, work / "encoder-one-array", name="encoder", version=2, reference_data=ids)
    bundle = import_model(encoder, work / "encoder-bundle", name="encoder", version=2,
                          reference_data=work / "tokens.npz", signing_key=key[0])
    interface = bundle.manifest["interface"]
    assert [s["shape"] for s in interface["inputs"]] == [["batch", "tokens"], ["batch", "tokens"]]
    assert [s["dtype"] for s in interface["inputs"]] == ["int64", "int64"]
    assert interface["outputs"][0]["shape"] == ["batch", "tokens", 32]
    assert interface["task"] == "other" and interface["postprocess"] == "none"  # 2-D "pooled" is not a class list
    unprofiled = bundle.reference_profile()["unprofiled"]
    assert [u["input"] for u in unprofiled] == ["input_ids", "attention_mask"]
    assert "columns vary with tokens" in unprofiled[0]["reason"]
    feeds = []
    for tokens in (16, 32):
        mask = np.ones((3, tokens), np.int64)
        mask[1, tokens // 2:] = 0
        feeds.append({"input_ids": rng.integers(0, 64, (3, tokens)).astype(np.int64), "attention_mask": mask})
    assert_served_like_onnxruntime(bundle.root, key[1], encoder, feeds)


def test_encoder_without_data_gets_generated_golden_at_the_given_dim(encoder, work, key):
    bundle = import_model(encoder, work / "encoder-generated", name="encoder", version=1, dims={"tokens": 16},
                          signing_key=key[0])
    manifest = bundle.manifest
    assert manifest["golden"]["generated"] is True
    assert "reference_profile" not in manifest and manifest["lineage"]["dataset_fingerprint"] is None
    assert "generated from the input schema" in manifest["model_card"]["golden_examples"]
    assert manifest["interface"]["inputs"][0]["shape"] == ["batch", 16]
    inputs, _, _ = bundle.golden()
    assert inputs["input_ids"].shape == (8, 16) and set(np.unique(inputs["attention_mask"])) <= {0, 1}
    assert_served_like_onnxruntime(bundle.root, key[1], encoder, [])


def test_regression_mlp_is_served_without_invented_classes(mlp, work, key):
    from edgefleet.edge_runtime.http_api import create_app
    from edgefleet.edge_runtime.model_host import ModelHost
    from tests.edge_runtime.http_kit import serve

    data = np.random.default_rng(5).standard_normal((30, 8)).astype(np.float64)  # float64 data, float32 input
    bundle = import_model(mlp, work / "mlp-bundle", name="mlp", version=1, task="regression",
                          reference_data=data, signing_key=key[0])  # one bare array: the one input's data
    assert bundle.manifest["interface"]["task"] == "regression"
    profile = json.loads((bundle.root / "profile.json").read_text())
    assert "predictions" not in profile and "confidence" not in profile
    feed = {"features": data[:4].astype(np.float32)}
    assert_served_like_onnxruntime(bundle.root, key[1], mlp, [feed])
    with Predictor(bundle.root, trusted_keys=[key[1]], threads=1) as predictor, \
            serve(create_app(ModelHost(predictor))) as base:
        answer = httpx.post(base + "/v1/predict", json={"inputs": feed["features"].tolist()}, timeout=10).json()
    assert set(answer) == {"model", "task", "outputs", "values", "request_id"} and answer["task"] == "regression"
    assert "class" not in json.dumps(answer) and "confidence" not in json.dumps(answer)
    np.testing.assert_allclose(answer["outputs"]["value"], bare(mlp, feed)["value"], rtol=1e-6)
    expected = bare(mlp, feed)["value"]
    np.testing.assert_allclose(np.reshape([row["value"] for row in answer["values"]], expected.shape), expected,
                               rtol=1e-6)


def test_unnamed_dims_become_distinct_symbols_and_dim_fixes_one(work, key):
    path = kit.unnamed_dims_onnx(work / "unnamed.onnx")
    bundle = import_model(path, work / "unnamed-bundle", name="unnamed", version=1, signing_key=key[0])
    assert bundle.manifest["interface"]["inputs"][0]["shape"] == ["x_d0", 3, "x_d2", "x_d3"]
    feed = {"x": np.random.default_rng(6).standard_normal((2, 3, 5, 7)).astype(np.float32)}  # H != W
    assert_served_like_onnxruntime(bundle.root, key[1], path, [feed])
    fixed = import_model(path, work / "unnamed-fixed", name="unnamed", version=1, dims={"x_d2": 5},
                         signing_key=key[0])
    assert fixed.manifest["interface"]["inputs"][0]["shape"] == ["x_d0", 3, 5, "x_d3"]
    with Predictor(fixed.root, trusted_keys=[key[1]]) as predictor:
        predictor.predict(feed)
        with pytest.raises(SchemaError, match="axis 2 must be 5"):
            predictor.predict({"x": np.zeros((1, 3, 6, 7), np.float32)})


def test_every_dtype_and_initializers_listed_as_inputs(work, key):
    path = kit.dtypes_onnx(work / "dtypes.onnx")
    bundle = import_model(path, work / "dtypes-bundle", name="dtypes", version=1, signing_key=key[0])
    assert [s.dtype for s in bundle.inputs] == ["int64", "bool", "float16", "int8", "uint8"]
    assert [s.dtype for s in bundle.outputs] == ["int64", "bool", "float16", "int8", "uint8"]
    feed = {s.name: np.ones((2, 4), s.dtype) for s in bundle.inputs}
    assert_served_like_onnxruntime(bundle.root, key[1], path, [feed])

    weights = kit.initializer_input_onnx(work / "init.onnx")
    init = import_model(weights, work / "init-bundle", name="init", version=1, signing_key=key[0])
    assert [s.name for s in init.inputs] == ["x"]
    assert_served_like_onnxruntime(init.root, key[1], weights, [{"x": np.ones((3, 4), np.float32)}])


def test_external_data_is_listed_hashed_and_loaded_from_the_bundle(mobilenet, work, key):
    source = kit.with_external_data(mobilenet, work / "ext-source")
    bundle = import_model(source, work / "ext-bundle", name="ext", version=1, class_names=CLASSES,
                          signing_key=key[0])
    assert sorted(bundle.manifest["files"]) == ["golden.npz", "model.onnx", "weights.bin"]
    assert bundle.manifest["files"]["weights.bin"]["size"] == (work / "ext-source" / "weights.bin").stat().st_size
    feed = {"image": np.random.default_rng(7).standard_normal((2, 3, 32, 32)).astype(np.float32)}
    want = bare(source, feed)
    shutil.rmtree(work / "ext-source")  # the bundle needs nothing outside itself
    with Predictor(bundle.root, trusted_keys=[key[1]]) as predictor:
        assert predictor.self_test().passed
        np.testing.assert_array_equal(predictor.predict(feed)["logits"], want["logits"])
    from edgefleet.compilers.compile import compile_bundle

    compiled = compile_bundle(bundle, ["onnxruntime-cpu"], work / "ext-compiled", signing_key=key[0])
    assert {"onnxruntime-cpu/model.onnx", "onnxruntime-cpu/model.onnx.data"} <= set(compiled.bundle.manifest["files"])
    with Predictor(compiled.bundle.root, backends=["onnxruntime-cpu"], trusted_keys=[key[1]]) as predictor:
        assert predictor.self_test().passed
        np.testing.assert_allclose(predictor.predict(feed)["logits"], want["logits"], rtol=1e-5, atol=1e-5)
    tampered = Path(shutil.copytree(bundle.root, work / "ext-tampered"))
    data = bytearray((tampered / "weights.bin").read_bytes())
    data[100] ^= 1
    (tampered / "weights.bin").write_bytes(bytes(data))
    with pytest.raises(VerificationError) as caught:
        Predictor(tampered, trusted_keys=[key[1]])
    assert caught.value.reason == "hash_mismatch"


def test_an_input_too_wide_to_profile_is_listed_and_telemetry_leaves_it_out(work, key):
    from onnx import TensorProto, helper

    from edgefleet.edge_runtime.telemetry import TelemetryAggregator

    x = helper.make_tensor_value_info("wide", TensorProto.FLOAT, ["batch", 300])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 300])
    path = kit._save(helper.make_graph([helper.make_node("Relu", ["wide"], ["y"])], "wide", [x], [y]),
                     work / "wide.onnx")
    data = {"wide": np.random.default_rng(8).standard_normal((16, 300)).astype(np.float32)}
    bundle = import_model(path, work / "wide-bundle", name="wide", version=1, reference_data=data,
                          signing_key=key[0])
    profile = bundle.reference_profile()
    assert profile["count"] == 16 and profile["features"] == []
    assert profile["unprofiled"] == [{"input": "wide", "reason": "input wide: 300 columns is too many to profile one "
                                      "by one (limit 256); reshape it to (batch, channels, ...) to profile channel "
                                      "taps"}]
    assert bundle.manifest["interface"]["profiled_inputs"] == []
    aggregator = TelemetryAggregator(bundle, fleet="f", device="d")  # profiles the declared inputs: none
    aggregator.observe(data, {"y": data["wide"]}, 1000)
    window = aggregator.close_window()
    assert window.features == () and window.samples == 16


def test_task_is_inferred_only_from_class_names(mobilenet, work):
    plain = import_model(mobilenet, work / "task-other", name="m", version=1)
    assert plain.manifest["interface"]["task"] == "other"  # a [batch, 10] output alone is not a classifier
    with pytest.raises(ExportError, match=r"first output must be \[batch, 3\] for 3 class names; 'logits' is "
                                          r"float32\[batch, 10\]"):
        import_model(mobilenet, work / "task-bad", name="m", version=1, class_names=["a", "b", "c"])
    softmax = _softmax_onnx(work / "softmax.onnx")
    probs = import_model(softmax, work / "task-probs", name="p", version=1, class_names=list("abcd"))
    assert probs.manifest["interface"]["postprocess"] == "none"  # the rows are probabilities already


# --- refusals -----------------------------------------------------------------------------------------------
def test_refusals_are_one_export_error_and_leave_nothing_behind(mobilenet, work):
    out = work / "refused" / "bundle"
    out.parent.mkdir()
    (work / "text.onnx").write_text("this is not a model\n")
    np.savez(work / "images.npz", image=np.zeros((1, 3, 32, 32), np.float32))  # a data file given as the model
    np.savez(work / "wrong-key.npz", pixels=np.zeros((2, 3, 32, 32), np.float32))
    np.savez(work / "wrong-shape.npz", image=np.zeros((2, 3, 28, 28), np.float32))
    np.savez(work / "wrong-dtype.npz", image=np.zeros((2, 3, 32, 32), np.int64))
    cases = [
        (work / "missing.onnx", {}, "no model file at"),
        (work / "text.onnx", {}, "is not an ONNX model file"),
        (work / "images.npz", {}, r"cannot import a \.npz file; edgefleet imports \.onnx, \.tflite files"),
        (mobilenet, {"dims": {"height": 32}}, "no dimension named 'height' .*they have batch"),
        (mobilenet, {"dims": {"batch": 0}}, "a size must be an integer >= 1"),
        (mobilenet, {"reference_data": work / "wrong-key.npz"},
         "no array for input.* 'image' and arrays for unknown input.* 'pixels'"),
        (mobilenet, {"reference_data": work / "wrong-shape.npz"}, r"input 'image': expected float32\[batch, 3, 32, "
                                                                   r"32\] \(axis 2 must be 32\)"),
        (mobilenet, {"reference_data": work / "wrong-dtype.npz"}, r"expected float32\[batch, 3, 32, 32\], got int64"),
        (mobilenet, {"task": "segmentation"}, "task must be one of"),
        (mobilenet, {"bins": 2000}, "bins must be an integer from 2 to 1016"),
        (mobilenet, {"reference_data": [[1.0]]}, "reference data must be a mapping of input name to array, an "
                                                 "array .one-input model. or the path of an .npz, got list"),
        (mobilenet, {"class_names": ["a"]}, "first output must be"),
        (mobilenet, {"postprocess": "sigmoid"}, "postprocess must be softmax or none, got 'sigmoid'"),
        (mobilenet, {"atol": float("nan")}, "atol and rtol must be finite numbers >= 0"),
        (mobilenet, {"name": ""}, "name must be a non-empty string"),
        (mobilenet, {"version": 0}, "version must be an integer from 1 to 2"),
    ]
    for path, options, message in cases:
        with pytest.raises(ExportError, match=message):
            import_model(path, out, **{"name": "m", "version": 1, **options})
        assert not out.exists() and list(out.parent.iterdir()) == [], (path, options)
    out.mkdir()
    (out / "old.txt").write_text("x")
    with pytest.raises(ExportError, match="is not empty"):
        import_model(mobilenet, out, name="m", version=1)


def test_values_edgefleet_cannot_carry_are_refused_by_name(work):
    from onnx import TensorProto, helper

    def graph(x: onnx.ValueInfoProto, name: str) -> Path:
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])
        return kit._save(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], name, [x], [y]),
                         work / f"{name}.onnx")

    text = graph(helper.make_tensor_value_info("x", TensorProto.STRING, ["batch", 2]), "strings")
    with pytest.raises(ExportError, match="input 'x' has element type STRING; edgefleet carries bool, int8"):
        import_model(text, work / "strings-bundle", name="m", version=1)
    rankless = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)
    with pytest.raises(ExportError, match=r"input 'x' has no shape \(unknown rank\)"):
        import_model(graph(rankless, "rankless"), work / "rankless-bundle", name="m", version=1)
    sequence = helper.make_tensor_sequence_value_info("x", TensorProto.FLOAT, ["batch", 2])
    with pytest.raises(ExportError, match="input 'x' is a sequence_type, not a tensor"):
        import_model(graph(sequence, "sequence"), work / "sequence-bundle", name="m", version=1)


def test_external_data_outside_the_model_folder_is_refused(mobilenet, work):
    source = kit.with_external_data(mobilenet, work / "escape")
    model = onnx.load(str(source), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../secret.bin"
    onnx.save_model(model, str(source))
    with pytest.raises(ExportError, match=r"external data location '\.\./secret\.bin'"):
        import_model(source, work / "escape-bundle", name="m", version=1)


def test_generated_must_be_true_or_false_in_a_manifest(mobilenet_bundle):
    from edgefleet.core.bundle import Bundle

    manifest = Bundle.open(mobilenet_bundle).manifest
    check_structure({**manifest, "golden": {**manifest["golden"], "generated": True}})
    with pytest.raises(VerificationError, match="golden.generated must be true or false, got 'yes'"):
        check_structure({**manifest, "golden": {**manifest["golden"], "generated": "yes"}})


def _softmax_onnx(path: Path) -> Path:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["probs"], axis=1)], "softmax", [x], [y])
    return kit._save(graph, path)
