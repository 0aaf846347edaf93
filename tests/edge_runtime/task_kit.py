"""One signed bundle per task, exported from torch models of public architectures (no downloads), for the
task-answer tests over HTTP, in `edgefleet predict` and in the bench: a MobileNetV2-style classifier
with class names, a regression MLP, a BERT-style encoder as an embedding model (its pooled output), and
an SSD-style single-scale detector (boxes [N, 16, 4], scores [N, 16])."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tests.compilers.import_kit import RegressionMLP, TinyEncoder, TinyMobileNet, conv_bn

CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class TinyDetector(nn.Module):
    """SSD-style: a stride-8 conv backbone on 32x32 RGB, one anchor per cell of the 4x4 grid, a box head
    (sigmoid cx, cy, w, h) and an objectness head (sigmoid) -> boxes [N, 16, 4], scores [N, 16]."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(conv_bn(3, 8, stride=2), conv_bn(8, 16, stride=2), conv_bn(16, 16, stride=2))
        self.box, self.score = nn.Conv2d(16, 4, 1), nn.Conv2d(16, 1, 1)
        nn.init.normal_(self.score.weight, std=2.0)  # spread as a trained head's: some cells above 0.5, some not
        nn.init.zeros_(self.score.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(x)
        boxes = self.box(features).flatten(2).transpose(1, 2).sigmoid()
        return boxes, self.score(features).flatten(1).sigmoid()


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
    """The bundle of `task` ("classification", "regression", "embedding", "detection"), signed, in folder."""
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
                     output_names=["boxes", "scores"], **common)
        sample = {"image": images(3, 2)}
    else:
        raise ValueError(task)
    return TaskBundle(folder / "b", public, sample)
