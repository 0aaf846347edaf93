"""One signed bundle per task, exported from torch models of public architectures (no downloads), for the
task-answer tests over HTTP, in `edgefleet predict` and in the bench: a MobileNetV2-style classifier
with class names, a regression MLP, a BERT-style encoder as an embedding model (its pooled output), and
import_kit's FCOS-style detector (boxes [N, 16, 4], scores [N, 16] at 32x32) with its threshold in the
manifest (DETECTION_THRESHOLD: untrained, its scores lie within 0.512..0.52; this one splits them with a
margin of 1.8e-4 either side on the sample images), and a GRU step with its state as "other"."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tests.compilers.import_kit import RecurrentStep, RegressionMLP, TinyDetector, TinyEncoder, TinyMobileNet

DETECTION_THRESHOLD = 0.5157
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass(frozen=True)
class TaskBundle:
    root: Path
    public_key: Path
    sample: dict[str, np.ndarray]  # a request of a few samples the model takes


def images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, 32, 32)).astype(np.float32)


def tokens(count: int, length: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((count, length), dtype=np.int64)
    mask[0, length // 2:] = 0  # one padded sequence
    return {"input_ids": rng.integers(1, 64, (count, length)).astype(np.int64), "attention_mask": mask}


def build(task: str, folder: Path) -> TaskBundle:
    """The bundle of `task` ("classification", "regression", "embedding", "detection", "other"), signed,
    in folder."""
    from edgefleet.compilers import export_torch
    from edgefleet.core.signing import SigningKey

    torch.manual_seed(0)
    key = SigningKey.generate()
    _private, public = key.save(folder / "keys", "release")
    common = {"version": 1, "signing_key": key, "task": task}
    if task == "classification":
        export_torch(TinyMobileNet(), images(16, 1), folder / "b", name="cnn", input_names=["image"],
                     output_names=["logits"], class_names=CLASS_NAMES, **common)
        sample = {"image": images(3, 2)}
    elif task == "regression":
        data = np.random.default_rng(1).standard_normal((16, 8)).astype(np.float32)
        export_torch(RegressionMLP(), data, folder / "b", name="mlp", input_names=["features"],
                     output_names=["value"], **common)
        sample = {"features": np.random.default_rng(2).standard_normal((4, 8)).astype(np.float32)}
    elif task == "embedding":
        axes = {"input_ids": {1: "tokens"}, "attention_mask": {1: "tokens"}}
        examples = {k: torch.from_numpy(v) for k, v in tokens(4, 24, 1).items()}
        export_torch(TinyEncoder(), examples, folder / "b", name="encoder", input_names=list(examples),
                     output_names=["hidden", "pooled"], dynamic_axes=axes, **common)
        sample = tokens(3, 16, 2)
    elif task == "detection":
        export_torch(TinyDetector(), images(8, 1), folder / "b", name="detector", input_names=["image"],
                     output_names=["boxes", "scores"],
                     detection={"scores": "scores", "score_threshold": DETECTION_THRESHOLD}, **common)
        sample = {"image": images(3, 2)}
    elif task == "other":  # a GRU step with its state: batch on axis 1, nothing to read into its outputs
        axes = {"x": {0: None, 1: "batch"}, "state": {0: None, 1: "batch"}}
        rng = np.random.default_rng(1)
        examples = tuple(rng.standard_normal(shape).astype(np.float32) for shape in ((5, 3, 8), (2, 3, 16)))
        export_torch(RecurrentStep(), examples, folder / "b", name="gru", input_names=["x", "state"],
                     output_names=["y", "next_state"], dynamic_axes=axes, **common)
        sample = {"x": examples[0][:, :2], "state": examples[1][:, :2]}
    else:
        raise ValueError(task)
    return TaskBundle(folder / "b", public, sample)
