"""`edgefleet loop stage train` on real models and data: the project's digits CNN trained on scikit-learn's
clean digits is the serving model; the fleet's new condition is the negative image (1 - pixels), which it
gets mostly wrong. The dataset is 500 inverted training images with their labels, in the layout `edgefleet
dataset export` writes; the held-out check is the inverted test split, run through the new bundle's ONNX
model in onnxruntime (what a device runs), not the torch model. Training functions: train_fns.py."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edgefleet.cloud.digits import CLASS_NAMES, DigitsCNN, load_splits
from edgefleet.cloud.loop.retrain import TrainSpec, retrain
from edgefleet.cloud.training import FitOptions, fit_classifier
from edgefleet.core import bundle as bundle_io
from edgefleet.core.bundle import Bundle
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.signing import SigningKey, TrustStore
from tests.cli.test_bundle_commands import assert_user_error, edgefleet
from tests.cloud.loop.train_fns import FINETUNE, SCRATCH

FNS = "tests.cloud.loop.train_fns"
DATASET_ROWS = 500


@dataclass(frozen=True)
class Kit:
    serving: Path
    weights: Path
    key: SigningKey
    private_key: Path
    public_key: Path
    reference: Path
    dataset: Path
    record: dict
    x_test: np.ndarray
    y_test: np.ndarray


def inverted(x: np.ndarray) -> np.ndarray:
    return (1.0 - x).astype(np.float32)


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    from edgefleet.compilers import export_torch

    folder = tmp_path_factory.mktemp("stage-train")
    splits = load_splits()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = DigitsCNN()
        fit_classifier(model, splits.x_train, splits.y_train, FitOptions(epochs=6, seed=0))
    finally:
        torch.set_num_threads(threads)
    torch.save(model.state_dict(), folder / "serving.pt")
    key = SigningKey.generate()
    private, public = key.save(folder / "keys", "release")
    serving = export_torch(model.eval(), splits.x_train[:4], folder / "serving", name="digits-cnn", version=1,
                           reference_data=splits.x_train, labels=splits.y_train, class_names=CLASS_NAMES,
                           input_names=["pixels"], output_names=["logits"], signing_key=key).root
    np.savez(folder / "reference.npz", pixels=splits.x_train, y=splits.y_train)
    dataset = folder / "dataset"
    dataset.mkdir()
    np.savez(dataset / "dataset.npz", pixels=inverted(splits.x_train[:DATASET_ROWS]), y=splits.y_train[:DATASET_ROWS])
    record = {"name": "lab-inverted", "version": 2, "samples": DATASET_ROWS, "rows": DATASET_ROWS,
              "fingerprint": hashlib.sha256((dataset / "dataset.npz").read_bytes()).hexdigest()}
    (dataset / "dataset.json").write_text(json.dumps(record))
    return Kit(serving, folder / "serving.pt", key, private, public, folder / "reference.npz", dataset, record,
               splits.x_test, splits.y_test)


@pytest.fixture
def serving_weights(kit, monkeypatch):
    monkeypatch.setenv("EDGEFLEET_TEST_SERVING_WEIGHTS", str(kit.weights))


def bundle_accuracy(root: Path, x: np.ndarray, y: np.ndarray) -> float:
    session = ort.InferenceSession(str(root / "model.onnx"), providers=["CPUExecutionProvider"])
    return float((session.run(None, {"pixels": x})[0].argmax(axis=1) == y).mean())


def run_library(kit, out: Path, mode: str, fn: str = "train", **options) -> Bundle:
    spec = TrainSpec(kit.serving, f"{FNS}:{fn}", kit.dataset, mode, kit.reference,
                     options.pop("torch_model", f"{FNS}:serving" if mode == "finetune" else None))
    return retrain(spec, out, kit.key).bundle


def test_finetune_on_the_new_condition_improves_it_and_names_its_data(kit, serving_weights, tmp_path):
    bundle = run_library(kit, tmp_path / "v2", "finetune")
    bundle.verify(TrustStore.from_paths([kit.public_key]))
    before = bundle_accuracy(kit.serving, inverted(kit.x_test), kit.y_test)
    after = bundle_accuracy(bundle.root, inverted(kit.x_test), kit.y_test)
    print(f"inverted test split ({len(kit.y_test)} rows): serving {before:.3f}, finetuned {after:.3f}")
    # Measured 0.044 -> 0.856; 450 rows give a binomial s.d. under 0.024, so +0.50 is far outside noise.
    assert after >= before + 0.50, (before, after)
    manifest, serving = bundle.manifest, Bundle.open(kit.serving)
    assert (bundle.name, bundle.version) == ("digits-cnn", 2)
    assert manifest["interface"]["class_names"] == CLASS_NAMES
    assert [s.to_dict() for s in bundle.inputs] == [s.to_dict() for s in serving.inputs]
    assert [s.to_dict() for s in bundle.outputs] == [s.to_dict() for s in serving.outputs]
    lineage = manifest["lineage"]
    assert lineage["parent"] == {"name": "digits-cnn", "version": 1, "manifest_sha256":
                                 bundle_io.file_digest(kit.serving / "manifest.json")}
    assert lineage["dataset"] == {"name": "lab-inverted", "version": 2, "fingerprint": kit.record["fingerprint"]}
    step = lineage["steps"][0]
    assert step["stage"] == "train" and step["mode"] == "finetune" and step["function"] == f"{FNS}:train"
    assert kit.record["fingerprint"] in manifest["model_card"]["training_data"]
    # The profile follows the world: reference rows and the new condition's rows.
    assert manifest["reference_profile"]["count"] == 1347 + DATASET_ROWS


def test_scratch_and_finetune_both_record_their_costs(kit, serving_weights, tmp_path):
    costs = {mode: run_library(kit, tmp_path / mode, mode).manifest["lineage"]["steps"][0]["cost"]
             for mode in ("finetune", "scratch")}
    print(json.dumps(costs))
    for mode in costs:  # the figures of the report: finetuning on the new data only forgets some clean digits
        print(mode, {name: round(bundle_accuracy(tmp_path / mode, x, kit.y_test), 3)
                     for name, x in (("clean", kit.x_test), ("inverted", inverted(kit.x_test)))})

    # rows_seen counts the rows forwarded in training mode: epochs x the rows each function trains on
    assert costs["finetune"]["rows_seen"] == FINETUNE.epochs * DATASET_ROWS
    assert costs["scratch"]["rows_seen"] == SCRATCH.epochs * (1347 + DATASET_ROWS)
    for cost in costs.values():
        assert cost["rows_given"] == {"reference": 1347, "dataset": DATASET_ROWS}
        assert cost["wall_s"] > 0 and cost["cpu_s"] > 0 and cost["peak_rss_bytes"] > 50 * 2**20


def test_finetune_needs_the_serving_weights_and_checks_them(kit, serving_weights, tmp_path):
    with pytest.raises(EdgefleetError, match="holds ONNX only: pass --torch-model module:function"):
        run_library(kit, tmp_path / "a", "finetune", torch_model=None)
    with pytest.raises(EdgefleetError, match=r"is not the serving model digits-cnn v1: its 'logits' on the golden "
                                              r"inputs differs"):
        run_library(kit, tmp_path / "b", "finetune", torch_model=f"{FNS}:fresh")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def stage(kit, out: Path, fn: str, *extra: str) -> object:
    env = {"EDGEFLEET_TEST_SERVING_WEIGHTS": str(kit.weights)}
    return edgefleet("loop", "stage", "train", "--serving", str(kit.serving), "--train-fn", fn, "--dataset",
                     str(kit.dataset), "--reference-data", str(kit.reference), "--key", str(kit.private_key),
                     "--trust", str(kit.public_key), "--out", str(out), *extra, env=env,
                     cwd=Path(__file__).parents[3])


def test_cli_finetunes_into_a_signed_next_version(kit, tmp_path):
    result = stage(kit, tmp_path / "v2", f"{FNS}:train", "--torch-model", f"{FNS}:serving")
    assert result.returncode == 0, result.stderr
    assert "digits-cnn v2 (finetune)" in result.stdout
    assert f"{FINETUNE.epochs * DATASET_ROWS} rows seen" in result.stdout
    assert kit.record["fingerprint"][:12] in result.stdout
    Bundle.open(tmp_path / "v2").verify(TrustStore.from_paths([kit.public_key]))


@pytest.mark.parametrize(("fn", "message"), [
    ("tests.cloud.loop.nothing:train", "--train-fn tests.cloud.loop.nothing:train: cannot import it "
                                       "(ModuleNotFoundError: No module named 'tests.cloud.loop.nothing')"),
    (f"{FNS}:missing", f"--train-fn {FNS}:missing: cannot import it (AttributeError: "),
    (f"{FNS}:not_a_function", f"--train-fn {FNS}:not_a_function: int is not callable"),
    ("train_fns", "--train-fn: expected module:function, got 'train_fns'"),
    (f"{FNS}:returns_weights", f"--train-fn {FNS}:returns_weights returned OrderedDict, not a torch.nn.Module"),
    (f"{FNS}:raises", f"--train-fn {FNS}:raises raised ValueError: no GPU for 500 rows"),
    (f"{FNS}:wrong_width", f"the model --train-fn {FNS}:wrong_width returned gives 'logits' of shape [4, 3] for 4 "
                           f"rows; digits-cnn's is "),
])
def test_cli_refuses_a_bad_training_function_with_one_line(kit, tmp_path, fn, message):
    result = stage(kit, tmp_path / "v2", fn, "--torch-model", f"{FNS}:serving")
    assert_user_error(result, message)
    assert not (tmp_path / "v2").exists()


def test_cli_refuses_a_dataset_without_labels(kit, tmp_path):
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    np.savez(unlabelled / "dataset.npz", pixels=inverted(kit.x_test))
    (unlabelled / "dataset.json").write_text(json.dumps(kit.record))
    result = edgefleet("loop", "stage", "train", "--serving", str(kit.serving), "--train-fn", f"{FNS}:train",
                       "--dataset", str(unlabelled), "--mode", "scratch", "--key", str(kit.private_key), "--trust",
                       str(kit.public_key), "--out", str(tmp_path / "v2"), cwd=Path(__file__).parents[3])
    assert_user_error(result, "has no labels 'y' (it holds: pixels); training needs a dataset frozen with labels")
    assert os.listdir(tmp_path) == ["unlabelled"]


def test_a_dataset_exported_from_the_cloud_trains_and_is_named_in_the_lineage(kit, cloud, tmp_path):
    """The whole path: a device uploads 500 inverted digits (10 captures of 50 rows), their labels arrive
    by the feedback API, the cloud freezes them, `dataset export` writes the files and `loop stage train`
    finetunes on them."""
    from tests.cloud.test_captures import register, sample, upload

    pixels, labels = inverted(load_splits().x_train[:DATASET_ROWS]), load_splits().y_train[:DATASET_ROWS]
    auth = register(cloud, "cam-1", "lab")
    from edgefleet.edge_runtime.capture import encode_arrays

    captures = [sample("cam-1", f"req-{i}", model={"name": "digits-cnn", "version": 1},
                       inputs=encode_arrays({"pixels": pixels[i:i + 50]})) for i in range(0, DATASET_ROWS, 50)]
    answer = upload(cloud, auth, captures)
    assert answer.status_code == 200 and answer.json()["stored"] == 10, answer.text
    for i in range(0, DATASET_ROWS, 50):
        sent = cloud.client.post("/api/v1/feedback", json={"device": "cam-1", "request_id": f"req-{i}",
                                                           "label": labels[i:i + 50].tolist()})
        assert sent.status_code == 202, sent.text
    made = cloud.client.post("/api/v1/datasets", json={"name": "lab-inverted", "fleet": "lab", "labelled_only": True})
    assert made.status_code == 201, made.text
    env = {"EDGEFLEET_CLOUD": cloud.server.url, "EDGEFLEET_TOKEN": cloud.token}
    exported = edgefleet("dataset", "export", "lab-inverted", str(tmp_path / "data"), env=env)
    assert exported.returncode == 0, exported.stderr
    result = edgefleet("loop", "stage", "train", "--serving", str(kit.serving), "--train-fn", f"{FNS}:train",
                       "--torch-model", f"{FNS}:serving", "--dataset", str(tmp_path / "data"), "--key",
                       str(kit.private_key), "--trust", str(kit.public_key), "--out", str(tmp_path / "v2"),
                       env={"EDGEFLEET_TEST_SERVING_WEIGHTS": str(kit.weights)}, cwd=Path(__file__).parents[3])
    assert result.returncode == 0, result.stderr
    manifest = Bundle.open(tmp_path / "v2").manifest
    assert manifest["lineage"]["dataset"] == {"name": "lab-inverted", "version": 1,
                                              "fingerprint": made.json()["fingerprint"]}
    assert manifest["reference_profile"]["count"] == DATASET_ROWS  # no --reference-data: the new data alone
    before = bundle_accuracy(kit.serving, inverted(kit.x_test), kit.y_test)
    after = bundle_accuracy(tmp_path / "v2", inverted(kit.x_test), kit.y_test)
    print(f"cloud dataset: inverted test split serving {before:.3f}, finetuned {after:.3f}")
    assert after >= before + 0.50, (before, after)
