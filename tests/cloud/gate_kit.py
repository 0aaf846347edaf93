"""The pieces of the quality gate tests with real agents that are not tests: candidates remade from the
digits bundle by editing its classifier head (signed, golden outputs recomputed, so that they pass the
device's self-test and health check: only their answers are wrong), and live traffic over each device's
HTTP API with every prediction's true label sent to its POST /v1/feedback."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from edgefleet.core.bundle import sign, write_manifest
from edgefleet.core.signing import SigningKey
from edgefleet.edge_runtime.background import BackgroundThreads

HEAD_WEIGHT, HEAD_BIAS = "head.weight", "head.bias"


def head_variant(src: Path, dst: Path, private_key: Path, version: int,
                 edit: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]) -> Path:
    """A signed copy of the digits bundle at `version` whose head (weight (10, 128), bias (10,)) is
    edit(weight, bias); the golden outputs are the new model's, the reference profile stays the old one's."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    dst = Path(shutil.copytree(src, dst))
    model = onnx.load(str(dst / "model.onnx"))
    tensors = {init.name: init for init in model.graph.initializer}
    weight, bias = edit(numpy_helper.to_array(tensors[HEAD_WEIGHT]).copy(),
                        numpy_helper.to_array(tensors[HEAD_BIAS]).copy())
    tensors[HEAD_WEIGHT].CopyFrom(numpy_helper.from_array(weight.astype(np.float32), HEAD_WEIGHT))
    tensors[HEAD_BIAS].CopyFrom(numpy_helper.from_array(bias.astype(np.float32), HEAD_BIAS))
    onnx.save(model, str(dst / "model.onnx"))
    with np.load(dst / "golden.npz") as data:
        arrays = dict(data)
    session = ort.InferenceSession(str(dst / "model.onnx"), providers=["CPUExecutionProvider"])
    arrays["outputs/logits"] = session.run(None, {"pixels": arrays["inputs/pixels"]})[0]
    np.savez(dst / "golden.npz", **arrays)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest.update(version=version, label=f"{manifest['name']} v{version}")
    write_manifest(dst, manifest)
    sign(dst, SigningKey.load(private_key))
    return dst


def constant_class(cls: int) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A head that ignores its input and answers `cls` for everything."""
    def edit(weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = np.zeros_like(bias)
        out[cls] = 10.0
        return np.zeros_like(weight), out
    return edit


def swapped_classes(a: int, b: int) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A head whose classes a and b trade places: the same answer distribution on balanced data, as sure
    of itself as before, and wrong on every a and b (only labels reveal it)."""
    def edit(weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        weight[[a, b]], bias[[a, b]] = weight[[b, a]], bias[[b, a]]
        return weight, bias
    return edit


class Traffic(BackgroundThreads):
    """Per device URL, a thread asking for 4 test digits every `period` s and sending each prediction's
    true labels to POST /v1/feedback right after (unless `labels` is False)."""

    def __init__(self, urls: list[str], x: np.ndarray, y: np.ndarray, period: float = 0.05,
                 labels: bool = True) -> None:
        self.urls, self.x, self.y, self.period, self.send_labels = urls, x, y, period, labels
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.retired = 0  # labels refused because the model that made the prediction no longer serves
        self.threads = [threading.Thread(target=self._run, args=(url, seed), daemon=True)
                        for seed, url in enumerate(urls)]

    def _run(self, url: str, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=url, timeout=30) as client:
            while not self.stop.wait(self.period):
                rows = rng.integers(0, len(self.x), 4)
                answer = client.post("/v1/predict", json={"inputs": self.x[rows].tolist()})
                if answer.status_code != 200:
                    self.failures.append(f"predict {answer.status_code}: {answer.text}")
                    continue
                if not self.send_labels:
                    continue
                sent = client.post("/v1/feedback", json={"request_id": answer.json()["request_id"],
                                                         "label": [int(v) for v in self.y[rows]]})
                if sent.status_code == 409 and sent.json().get("reason") == "model_retired":
                    self.retired += 1  # asked just before an update swapped the model: the device says so
                elif sent.status_code != 200:
                    self.failures.append(f"feedback {sent.status_code}: {sent.text}")

