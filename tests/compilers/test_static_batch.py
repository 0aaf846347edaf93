"""The batch-axis loose ends: an export whose example holds a 0-d scalar (a sample rate), and model files
with a static batch imported with more reference rows than that batch (core/schema.py batch_axis)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgefleet.compilers.export import export_torch
from edgefleet.core.bundle import Bundle
from edgefleet.core.signing import SigningKey, TrustStore
from edgefleet.edge_runtime.predictor import Predictor


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


class RateScaled(torch.nn.Module):
    """Features scaled by a sample rate given as a 0-d tensor (one value for every sample of a request)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))

    def forward(self, x: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
        return self.net(x * (rate / 16000.0))


def test_export_with_a_0d_example_input_has_no_batch_axis_for_it_and_verifies_predicts_self_tests(tmp_path, key):
    torch.manual_seed(0)
    model = RateScaled().eval()
    bundle = export_torch(model, (torch.randn(6, 4), torch.tensor(16000.0)), tmp_path / "b", name="rate", version=1,
                          input_names=["x", "rate"], output_names=["y"], task="regression", signing_key=key)
    assert [s.shape for s in bundle.inputs] == [("batch", 4), ()]
    Bundle.open(bundle.root).verify(TrustStore([key.public_key]))
    assert bundle.manifest["golden"]["count"] == 6
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x), torch.tensor(8000.0)).numpy()
    with Predictor(bundle.root, trusted_keys=TrustStore([key.public_key])) as predictor:
        got = predictor.predict({"x": x, "rate": np.array(8000.0, np.float32)})["y"]
        report = predictor.self_test()
    assert np.allclose(got, want, atol=1e-5), np.abs(got - want).max()
    assert not np.allclose(got, model(torch.from_numpy(x), torch.tensor(16000.0)).detach().numpy(), atol=1e-3)
    assert report.passed, report.failures
