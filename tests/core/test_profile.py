from __future__ import annotations

import numpy as np
import pytest

from edgefleet.core.magnitude import TAIL_EDGES
from edgefleet.core.profile import build_profile, extract_features, feature_kind, quantile_edges
from edgefleet.core.schema import TensorSpec


def test_feature_kinds():
    assert feature_kind(TensorSpec("x", "float32", ("batch", 30))) == "elements"
    assert feature_kind(TensorSpec("img", "float32", ("batch", 3, 32, 32))) == "channel_stats"
    with pytest.raises(ValueError, match="1000 columns is too many"):
        feature_kind(TensorSpec("x", "float32", ("batch", 1000)))


def test_channel_taps_are_mean_and_std_per_channel():
    x = np.stack([np.full((2, 4, 4), 1.0), np.stack([np.zeros((4, 4)), np.eye(4)])]).astype(np.float32)
    features = extract_features(x, "channel_stats")
    np.testing.assert_allclose(features[0], [1.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(features[1], [0.0, 0.25, 0.0, np.sqrt(0.25 * 0.75)])


def test_quantile_edges_split_the_data_evenly():
    values = np.arange(1000, dtype=np.float64)[:, None]
    edges = quantile_edges(values, bins=4)
    np.testing.assert_allclose(edges, [[249.75, 499.5, 749.25]])


def test_profile_of_tabular_classifier():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3)).astype(np.float32)
    scores = rng.normal(size=(500, 4)).astype(np.float32)
    profile = build_profile({"x": x}, [TensorSpec("x", "float32", ("batch", 3))], scores, bins=5)
    counts = np.array(profile["features"][0]["counts"])
    assert counts.shape == (3, 6 + TAIL_EDGES) and (counts.sum(axis=1) == 500).all()
    assert counts[:, -1].sum() == 0  # no NaN in the data
    tail = TAIL_EDGES // 2  # the reference has no value beyond its own range
    assert (counts[:, tail:tail + 5] == 100).all()  # quantile bins hold a fifth each
    assert counts[:, :tail].sum() == 0 and counts[:, tail + 5:-1].sum() == 0
    assert sum(profile["predictions"]["counts"]) == 500 and profile["predictions"]["classes"] == ["0", "1", "2", "3"]
