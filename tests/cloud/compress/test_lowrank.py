"""Low-rank factorisation on real data: an MLP on scikit-learn's breast_cancer, standardized."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgefleet.cloud.compress.lowrank import LowRankError, factorize
from edgefleet.cloud.compress.prune import FineTune
from edgefleet.cloud.training import FitOptions, accuracy

# Measured (seed 0): 0.947 before; energy 0.9 keeps 0.947 with rank 49 of 128 in the hidden layer.
ACCURACY_BUDGET = 0.02


def test_energy_rule_shrinks_the_mlp(cancer):
    model, _, _, x_test, y_test = cancer
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = factorize(model, energy=0.9)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # input untouched
    hidden = next(layer for layer in result.layers if layer.name == "2")
    assert hidden.factorized and hidden.rank < 64 and hidden.energy >= 0.9
    assert hidden.params_after == hidden.rank * (128 + 128) + 128 < hidden.params_before
    assert isinstance(result.model[2], nn.Sequential)
    assert result.params_after < result.params_before * 0.9
    assert result.params_after == sum(p.numel() for p in result.model.parameters())
    # layers where two factors would not be smaller are left whole and listed
    assert all(layer.params_after == layer.params_before for layer in result.layers if not layer.factorized)
    assert accuracy(result.model, x_test, y_test) >= accuracy(model, x_test, y_test) - ACCURACY_BUDGET


def test_accuracy_budget_and_fine_tune(cancer):
    model, x_train, y_train, x_test, y_test = cancer
    baseline = accuracy(model, x_test, y_test)
    result = factorize(model, accuracy_budget=(lambda m: accuracy(m, x_test, y_test), 0.01),
                       fine_tune=FineTune(x_train, y_train, FitOptions(epochs=3)))
    assert result.param_reduction > 0.5
    assert result.options["max_accuracy_drop"] == 0.01 and result.options["fine_tune"]["epochs"] == 3
    assert accuracy(result.model, x_test, y_test) >= baseline - ACCURACY_BUDGET


def test_fixed_rank_on_conv1x1_and_linear():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(64, 64, 1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 4, 64), nn.Linear(64, 8))
    result = factorize(model, rank=8, min_reduction=0.0)
    ranks = {layer.name: (layer.rank, layer.factorized) for layer in result.layers}
    # Linear(64 -> 8) at rank 8 costs 8·72 > 512 weights: left whole
    assert ranks == {"0": (8, True), "3": (8, True), "4": (8, False)}
    assert isinstance(result.model[0][0], nn.Conv2d) and result.model[0][0].out_channels == 8
    assert result.model(torch.randn(5, 64, 2, 2)).shape == (5, 8)


def test_an_exactly_low_rank_layer_is_reproduced():
    torch.manual_seed(0)
    layer = nn.Linear(40, 30)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(30, 4) @ torch.randn(4, 40))  # rank 4
    result = factorize(nn.Sequential(layer), energy=0.999999)
    assert result.layers[0].rank == 4
    x = torch.randn(16, 40)
    torch.testing.assert_close(result.model(x), layer(x), atol=1e-4, rtol=1e-4)


def test_bad_options(cancer):
    model = cancer[0]
    with pytest.raises(LowRankError, match="one rule"):
        factorize(model, energy=0.9, rank=4)
    with pytest.raises(LowRankError, match="not a Linear or 1x1 Conv2d layer.*nope"):
        factorize(model, layers=["nope"])
