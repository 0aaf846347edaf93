"""Data quality in the device's telemetry (issue 14): non-finite values, values outside the reference range
and stuck inputs, counted by the one telemetry sketch per request, on real data (scikit-learn's diabetes
table and digits images) and real bundles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_diabetes

from edgefleet.compilers.export import export_torch
from edgefleet.core.profile import bin_counts, extract_features, quantile_edges, reference_range
from edgefleet.core.signing import SigningKey
from edgefleet.core.telemetry import parse_telemetry
from edgefleet.cpp_ext import histogram_update
from edgefleet.edge_runtime.data_quality import FeatureQuality
from edgefleet.edge_runtime.predictor import Predictor
from edgefleet.edge_runtime.telemetry import TelemetryAggregator
from tests.compilers import import_kit as kit


@pytest.fixture(scope="module")
def diabetes() -> np.ndarray:
    return load_diabetes().data.astype(np.float64)  # 442 patients x 10 measurements


def test_augmented_counts_fold_back_to_the_profile_and_count_quality_exactly(diabetes):
    reference, live = diabetes[:300], diabetes[300:].copy() * 1.5  # half again as wide: some leave the range
    live[0, 0], live[1, 1], live[2, 2] = np.nan, np.inf, -np.inf
    live[10:60, 3] = live[9, 3]  # one column repeats a value
    edges = quantile_edges(reference)
    for entry in ({"edges": edges.tolist(), **reference_range(reference)}, {"edges": edges.tolist()}):
        probe = live[9].copy()
        probe[5] = np.nan  # a feature without a probe
        plan = FeatureQuality(entry).plan(probe)
        counts = np.zeros((10, plan.edges.shape[1] + 2), np.int64)
        histogram_update(counts, live, plan.edges)
        features, quality = plan.split(counts)
        assert (features == bin_counts(live, edges)).all()  # the drift monitor's counts are unchanged
        finite = np.isfinite(live)
        ranged = "min" in entry
        low, high = (reference.min(axis=0), reference.max(axis=0)) if ranged else (-np.inf, np.inf)
        assert quality[:, 0].tolist() == (~finite).sum(axis=0).tolist()
        assert quality[:, 1].tolist() == (finite & (live < low)).sum(axis=0).tolist()
        assert quality[:, 2].tolist() == (finite & (live > high)).sum(axis=0).tolist()
        want_probe = (live == probe).sum(axis=0)
        assert quality[:, 3].tolist() == want_probe.tolist() and quality[3, 3] >= 51 and quality[5, 3] == 0
        assert quality[:, 1:3].sum() > 0 if ranged else quality[:, 1:3].sum() == 0


@pytest.fixture(scope="module")
def table_bundle(tmp_path_factory, diabetes):
    work = tmp_path_factory.mktemp("quality")
    key = SigningKey.generate()
    torch.manual_seed(0)
    x = diabetes[:300].astype(np.float32)
    bundle = export_torch(kit.RegressionMLP(10), x[:4], work / "mlp", name="sugar", version=1, reference_data=x,
                          input_names=["features"], output_names=["progression"], task="regression", signing_key=key)
    return bundle, key.save(work / "keys", "release")[1]


def test_a_dead_sensor_is_stuck_from_its_second_window_and_the_others_are_not(table_bundle, diabetes):
    bundle, public = table_bundle
    live = diabetes[300:].astype(np.float32)
    with Predictor(bundle.root, trusted_keys=[public], threads=1) as predictor:
        aggregator = TelemetryAggregator(predictor.bundle, fleet="lab", device="pi-01")
        predictor.enable_telemetry(aggregator)
        windows = []
        for part in (live[:40], live[40:80], live[80:120]):
            for row in part:
                row = row.copy()[None]
                row[0, 4] = 0.0125  # column 4's sensor died before the first window closed
                predictor.predict(row)
            windows.append(aggregator.close_window())
        # the feature counts are what the profile's edges give the same values
        edges = np.asarray(bundle.reference_profile()["features"][0]["edges"])
        sent = live[40:80].astype(np.float64)
        sent[:, 4] = np.float32(0.0125)
        assert [list(r) for r in windows[1].features[0].counts] == bin_counts(sent, edges).tolist()
    first, second, third = (np.asarray(w.quality[0].counts) for w in windows)
    assert first[:, 3].tolist() == [0] * 10  # no earlier window: nothing to compare with yet
    assert second[4, 3] == third[4, 3] == 40  # every sample equals the last one of the window before
    sent = [live[i:i + 40].copy() for i in (0, 40, 80)]
    for part in sent:
        part[:, 4] = 0.0125
    for counts, part, before in ((second, sent[1], sent[0][-1]), (third, sent[2], sent[1][-1])):
        assert counts[:, 3].tolist() == (part == before).sum(axis=0).tolist()  # sex (column 1) repeats often
        assert np.flatnonzero(counts[:, 3] == 40).tolist() == [4]  # but only the dead sensor never moves
    reference = diabetes[:300].astype(np.float32).astype(np.float64)
    sent = live[:40].astype(np.float64)
    sent[:, 4] = np.float32(0.0125)
    assert first[:, 1].tolist() == (sent < reference.min(axis=0)).sum(axis=0).tolist()  # held-out patients
    assert first[:, 2].tolist() == (sent > reference.max(axis=0)).sum(axis=0).tolist()  # beyond the reference
    assert parse_telemetry(windows[2].to_payload()).quality == windows[2].quality


def test_a_dead_camera_nan_frames_and_overexposed_frames_on_the_digits_cnn(digits_bundle):
    from sklearn.datasets import load_digits

    images = (load_digits().images[1500:1560] / 16.0).astype(np.float32)[:, None]
    with Predictor(digits_bundle.root, trusted_keys=[digits_bundle.public_key]) as predictor:
        aggregator = TelemetryAggregator(predictor.bundle, fleet="lab", device="cam-1")
        predictor.enable_telemetry(aggregator)
        assert aggregator.fast_path  # the inlined path keeps counting quality too
        for image in images[:30]:
            predictor.predict(image[None])
        healthy = aggregator.close_window()
        frozen = images[30:31]
        for _ in range(25):
            predictor.predict(frozen)
        aggregator.close_window()
        broken = frozen.copy()
        broken[0, 0, 3, 3] = np.nan
        for _ in range(25):
            predictor.predict(frozen)
        predictor.predict(broken)
        predictor.predict(np.clip(frozen * 40.0, 0, 40.0))
        window = aggregator.close_window()
    edges = np.asarray(predictor.bundle.reference_profile()["features"][0]["edges"])
    assert [list(r) for r in healthy.features[0].counts] == bin_counts(
        extract_features(images[:30], "channel_stats"), edges).tolist()
    counts = np.asarray(window.quality[0].counts)  # rows: c0.mean, c0.std
    assert counts[:, 3].tolist() == [25, 25]  # the frozen frame, matched within the probe's tolerance
    assert counts[:, 0].tolist() == [1, 1]  # a NaN pixel makes the mean and the std NaN
    assert counts[:, 2].tolist() == [1, 1]  # 40x the brightness: above every reference frame's mean and std
    assert np.asarray(healthy.quality[0].counts)[:, :3].sum() == 0


def test_a_bundle_profile_without_ranges_counts_no_range_values():
    quality = FeatureQuality({"edges": [[0.0, 1.0]]})
    assert not quality.has_range
    plan = quality.plan(np.array([5.0]))
    counts = np.zeros((1, plan.edges.shape[1] + 2), np.int64)
    histogram_update(counts, np.array([[-1e300], [1e300], [5.0], [np.nan]]), plan.edges)
    assert plan.split(counts)[1].tolist() == [[1, 0, 0, 1]]
