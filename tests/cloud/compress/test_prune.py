"""Pruning on real data: the digits CNN (structured and unstructured) and an MLP on breast_cancer."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from edgefleet.cloud.compress.prune import FineTune, PruneError, prune_channels, prune_unstructured
from edgefleet.cloud.training import FitOptions, accuracy

pytestmark = pytest.mark.slow

# Measured (seed 0, 10 training epochs, 5 fine-tuning epochs): 0.973 before, 0.98 after 50% channel pruning.
ACCURACY_MARGIN = 0.03


@pytest.fixture(scope="module")
def cnn(digits_splits):
    from edgefleet.cloud.digits import train_digits_cnn

    return train_digits_cnn(digits_splits, epochs=10)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


def onnx_conv_shapes(model: nn.Module, example: np.ndarray) -> list[tuple[int, ...]]:
    """The Conv weight shapes of the exported ONNX graph, read from its initializers."""
    from edgefleet.compilers.export import _export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        _export_onnx(copy.deepcopy(model).eval(), (torch.from_numpy(example),), path, ["input"], None)
        graph = onnx.load(str(path)).graph
    weights = {t.name: numpy_helper.to_array(t).shape for t in graph.initializer}
    return [weights[n.input[1]] for n in graph.node if n.op_type == "Conv"]


def test_prune_channels_halves_the_cnn(cnn, digits_splits):
    s = digits_splits
    before = snapshot(cnn)
    accuracy_before = accuracy(cnn, s.x_test, s.y_test)
    result = prune_channels(cnn, 0.5, s.x_train[:8], fine_tune=FineTune(s.x_train, s.y_train, FitOptions(epochs=5)))
    assert_unchanged(cnn, before)
    assert result.param_reduction == pytest.approx(0.5, abs=0.05)
    assert result.flops_reduction == pytest.approx(0.5, abs=0.08)
    assert result.params_after == sum(p.numel() for p in result.model.parameters())
    # the exported graph really is smaller: conv weights with fewer output (and input) channels
    assert onnx_conv_shapes(cnn, s.x_train[:4]) == [(16, 1, 3, 3), (32, 16, 3, 3)]
    conv1, conv2 = onnx_conv_shapes(result.model, s.x_train[:4])
    assert conv1[0] < 16 and conv2[0] < 32 and conv2[1] == conv1[0]
    assert result.model.head.in_features == conv2[0] * 4
    assert accuracy(result.model, s.x_test, s.y_test) >= accuracy_before - ACCURACY_MARGIN
    step = result.lineage_step()
    assert step["stage"] == "prune_channels" and step["options"]["amount"] == 0.5
    assert step["options"]["fine_tune"]["epochs"] == 5


def test_channel_target_and_schedule(cnn, digits_splits):
    s = digits_splits
    calls = []
    result = prune_channels(cnn, 0.5, s.x_train[:8], target="channels", schedule_steps=2,
                            fine_tune=lambda m: calls.append(sum(p.numel() for p in m.parameters())),
                            measure_flops=False)
    assert [(c.before, c.after) for c in result.layers] == [(16, 8), (32, 16)]
    assert len(calls) == 2 and calls[0] > calls[1]  # fine-tuned between steps, on a smaller model each time
    # half the channels of two layers in a row: parameters fall by more than half
    assert 0.5 < result.param_reduction < 0.75


def test_prune_channels_mlp(cancer):
    model, x_train, y_train, x_test, y_test = cancer
    before = snapshot(model)
    result = prune_channels(model, 0.5, x_train[:8], fine_tune=FineTune(x_train, y_train, FitOptions(epochs=10)))
    assert_unchanged(model, before)
    assert [layer.name for layer in result.layers] == ["0", "2"]  # the output layer keeps its 2 classes
    assert result.model[4].out_features == 2
    assert result.param_reduction == pytest.approx(0.5, abs=0.05)
    assert accuracy(result.model, x_test, y_test) >= accuracy(model, x_test, y_test) - ACCURACY_MARGIN


def test_batchnorm_follows_its_conv(digits_splits):
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    result = prune_channels(model, 0.5, digits_splits.x_train[:8], target="channels", measure_flops=False)
    assert result.model[1].num_features == 4 and result.model[1].running_mean.shape == (4,)
    assert result.model[3].in_channels == 4 and result.model[7].in_features == 4
    assert result.model(torch.from_numpy(digits_splits.x_train[:3])).shape == (3, 10)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8 * 64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.stem(x))
        return self.head(torch.flatten(y + self.body(y), 1))


def test_residual_add_is_refused(digits_splits):
    model = Residual()
    with pytest.raises(PruneError, match="layer 'stem'.*used by 2 nodes.*residual add") as caught:
        prune_channels(model, 0.5, digits_splits.x_train[:4])
    assert caught.value.layer == "stem"
    with pytest.raises(PruneError, match="layer 'body'.*add"):
        prune_channels(model, 0.5, digits_splits.x_train[:4], exclude=["stem"])
    with pytest.raises(PruneError, match="found no Conv/Linear layer"):
        prune_channels(model, 0.5, digits_splits.x_train[:4], exclude=["stem", "body"])


def test_prune_unstructured_sparsity(cnn, digits_splits):
    s = digits_splits
    before = snapshot(cnn)
    result = prune_unstructured(cnn, 0.7, schedule_steps=2,
                                fine_tune=FineTune(s.x_train, s.y_train, FitOptions(epochs=2)))
    assert_unchanged(cnn, before)
    assert result.sparsity == pytest.approx(0.7, abs=0.005)
    assert result.params_after == result.params_before  # same tensors, now with real zeros
    assert result.nonzero_after < 0.4 * result.nonzero_before
    assert not any(name.endswith(("_orig", "_mask")) for name in result.model.state_dict())
    assert accuracy(result.model, s.x_test, s.y_test) >= accuracy(cnn, s.x_test, s.y_test) - 0.05


def test_bad_amount():
    with pytest.raises(PruneError, match="amount"):
        prune_unstructured(nn.Linear(4, 2), 1.5)
