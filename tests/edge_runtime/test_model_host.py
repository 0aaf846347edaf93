"""ModelHost on the real digits CNN: swaps under load, shadow and canary tests, telemetry across swaps."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edgefleet.edge_runtime.health import HealthPolicy, judge
from edgefleet.edge_runtime.model_host import ModelHost, ModelOutputError
from edgefleet.edge_runtime.predictor import Predictor
from edgefleet.edge_runtime.telemetry import TelemetryAggregator
from tests.edge_runtime.ota_kit import StrictPredictor, make_variant


@pytest.fixture(scope="module")
def perturbed_root(digits_bundle, tmp_path_factory):
    return make_variant(digits_bundle.root, tmp_path_factory.mktemp("perturbed") / "bundle", digits_bundle.private_key,
                        version=2, weight_noise=0.5)


@pytest.fixture(scope="module")
def nan_root(digits_bundle, tmp_path_factory):
    """A signed bundle whose weights are so large that every finite input gives NaN logits."""
    return make_variant(digits_bundle.root, tmp_path_factory.mktemp("nan") / "bundle", digits_bundle.private_key,
                        version=2, weight_noise=1e30)


@pytest.fixture
def make(digits_bundle):
    made: list[Predictor] = []

    def make_predictor(root=None, cls=Predictor) -> Predictor:
        predictor = cls(root or digits_bundle.root, trusted_keys=[digits_bundle.public_key], threads=1)
        made.append(predictor)
        return predictor

    yield make_predictor
    for predictor in made:
        predictor.close()


@pytest.fixture(scope="module")
def x(digits_splits):
    return digits_splits.x_test[:8]


def load(host: ModelHost, x: np.ndarray, stop: threading.Event, answers: list, failures: list) -> None:
    while not stop.is_set():
        try:
            answers.append(host.predict(x)["logits"])
        except Exception as err:  # noqa: BLE001 - the test counts them
            failures.append(repr(err))


def run_load(host: ModelHost, x: np.ndarray, threads: int = 4):
    stop, answers, failures = threading.Event(), [], []
    workers = [threading.Thread(target=load, args=(host, x, stop, answers, failures)) for _ in range(threads)]
    for worker in workers:
        worker.start()
    return stop, workers, answers, failures


def test_swap_under_load_fails_no_request(make, perturbed_root, x):
    a, b = make(), make(perturbed_root)
    want_a, want_b = a.predict(x)["logits"], b.predict(x)["logits"]
    assert not np.allclose(want_a, want_b)
    host = ModelHost(a)
    stop, workers, answers, failures = run_load(host, x)
    try:
        for i in range(100):
            old = host.swap(b if i % 2 == 0 else a)
            assert old is (a if i % 2 == 0 else b)
            time.sleep(0.002)
    finally:
        stop.set()
        for worker in workers:
            worker.join(10)
    assert failures == []
    from_a = sum(np.array_equal(answer, want_a) for answer in answers)
    from_b = sum(np.array_equal(answer, want_b) for answer in answers)
    assert from_a + from_b == len(answers) > 200  # every answer is whole, from one of the two models
    assert from_a > 0 and from_b > 0


def test_old_predictor_is_closed_only_after_its_calls(make, x):
    """Fresh predictors swapped in with close_old=True: a premature close would fail a request."""
    host = ModelHost(make(cls=StrictPredictor))
    stop, workers, answers, failures = run_load(host, x)
    retired = []
    try:
        for _ in range(15):
            retired.append(host.swap(make(cls=StrictPredictor), close_old=True))
            time.sleep(0.005)
    finally:
        stop.set()
        for worker in workers:
            worker.join(10)
    assert failures == []
    assert all(p.closed for p in retired) and not host.current.closed
    assert len(answers) > 100


def test_telemetry_follows_the_served_model_across_swaps(make, perturbed_root, x):
    windows = []

    def aggregator(predictor: Predictor) -> TelemetryAggregator:
        return TelemetryAggregator(predictor.bundle, fleet="lab", device="pi-01")

    def on_retire(predictor: Predictor) -> None:
        windows.append(predictor.telemetry.close_window())

    a, b = make(), make(perturbed_root)
    host = ModelHost(a, telemetry=aggregator, on_retire=on_retire)
    assert a.telemetry is not None and b.telemetry is None
    stop, workers, answers, failures = run_load(host, x, threads=3)
    time.sleep(0.05)
    host.swap(b)
    time.sleep(0.05)
    stop.set()
    for worker in workers:
        worker.join(10)
    assert failures == [] and b.telemetry is not None
    windows.append(b.telemetry.close_window())
    assert [w.model_version for w in windows] == [1, 2]
    # each version's windows count exactly the requests that version answered
    assert windows[0].requests > 0 and windows[1].requests > 0
    assert windows[0].requests + windows[1].requests == len(answers)
    assert windows[0].samples == 8 * windows[0].requests


def wait_compared(host: ModelHost, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        report = host.shadow_report()
        if report["compared"] + report["candidate_errors"] == report["mirrored"] and report["pending"] == 0:
            return report
        time.sleep(0.01)
    raise AssertionError(f"the shadow worker did not catch up: {host.shadow_report()}")


@pytest.mark.parametrize("perturbed", [False, True])
def test_shadow_users_get_current_answers(make, perturbed_root, digits_splits, perturbed):
    current = make()
    candidate = make(perturbed_root if perturbed else None)
    host = ModelHost(current)
    host.start_shadow(candidate)
    batches = np.array_split(digits_splits.x_test, 30)
    for batch in batches:
        np.testing.assert_array_equal(host.predict(batch)["logits"], current.predict(batch)["logits"])
        time.sleep(0.002)  # a trickle, so the bounded queue never fills
    report = wait_compared(host)
    assert report["mirrored"] == 30 and report["dropped"] == 0 and report["candidate_errors"] == 0
    assert report["candidate"] == {"name": "digits-cnn", "version": 2 if perturbed else 1}
    assert report["latency_p50_ms"]["current"] > 0 and report["latency_p50_ms"]["candidate"] > 0
    if perturbed:
        assert 0.3 < report["agreement"] < 1.0 and report["max_abs_diff"] > 0.1
    else:
        assert report["agreement"] == 1.0 and report["max_abs_diff"] < 1e-5
    final = host.stop_test()
    assert final["mode"] == "shadow" and host.shadow_report() is None


class SlowPredictor:
    """Duck-typed stand-in for a candidate that is much slower than the served model."""

    def __init__(self, inner: Predictor, seconds: float, fail: bool = False) -> None:
        self.inner, self.seconds, self.fail = inner, seconds, fail
        self.bundle = inner.bundle
        self.telemetry = None
        self.calls = 0

    def predict(self, inputs):  # noqa: ANN001, ANN201
        self.calls += 1
        time.sleep(self.seconds)
        if self.fail:
            raise RuntimeError("candidate broke")
        return self.inner.predict(inputs)

    def close(self) -> None:
        pass


def test_shadow_drops_when_the_queue_is_full_and_stays_off_the_request_path(make, x):
    host = ModelHost(make())
    host.start_shadow(SlowPredictor(make(), 0.05), queue_size=2)
    started = time.perf_counter()
    for _ in range(50):
        host.predict(x)
    elapsed = time.perf_counter() - started
    report = host.stop_test()
    assert elapsed < 1.0  # 50 candidate calls would take 2.5 s on the request path
    assert report["dropped"] > 30 and report["mirrored"] + report["dropped"] == 50


def test_shadow_counts_candidate_errors(make, x):
    host = ModelHost(make())
    host.start_shadow(SlowPredictor(make(), 0.0, fail=True))
    for _ in range(5):
        assert host.predict(x)["logits"].shape == (8, 10)
        time.sleep(0.01)
    report = wait_compared(host)
    assert report["candidate_errors"] == 5 and report["candidate_error_rate"] == 1.0


def test_canary_answers_the_fraction(make, perturbed_root, x):
    current, candidate = make(), make(perturbed_root)
    want_current, want_candidate = current.predict(x)["logits"], candidate.predict(x)["logits"]
    host = ModelHost(current)
    host.start_canary(candidate, 0.2)
    stop, workers, answers, failures = run_load(host, x)
    time.sleep(0.4)
    stop.set()
    for worker in workers:
        worker.join(10)
    report = host.stop_test()
    assert failures == []
    from_candidate = sum(np.array_equal(answer, want_candidate) for answer in answers)
    from_current = sum(np.array_equal(answer, want_current) for answer in answers)
    assert from_candidate + from_current == len(answers) > 200
    assert abs(from_candidate / len(answers) - 0.2) < 0.02
    arms = report["arms"]
    assert arms["candidate"]["requests"] == from_candidate and arms["current"]["requests"] == from_current
    assert arms["candidate"]["errors"] == 0 and arms["candidate"]["latency_p99_ms"] > 0
    assert abs(report["observed_fraction"] - 0.2) < 0.02
    # after the test every request is the current model's
    assert all(np.array_equal(host.predict(x)["logits"], want_current) for _ in range(20))


def test_canary_is_deterministic_and_a_failing_candidate_is_invisible(make, x):
    current = make()
    host = ModelHost(current)
    host.start_canary(SlowPredictor(make(), 0.0, fail=True), 0.25)
    want = current.predict(x)["logits"]
    for _ in range(100):
        np.testing.assert_array_equal(host.predict(x)["logits"], want)
    report = host.stop_test()
    assert report["arms"]["candidate"]["requests"] == 25 and report["arms"]["candidate"]["errors"] == 25
    assert report["fallbacks"] == 25 and report["arms"]["current"]["requests"] == 100


def test_stats_count_errors_and_rejections_of_the_current_model(make, x):
    host = ModelHost(make())
    host.predict(x)
    with pytest.raises(Exception, match="expected float32"):
        host.predict(x.astype(np.float64))
    stats = host.stats()
    assert stats["requests"] == 2 and stats["rejected"] == 1 and stats["errors"] == 0
    assert stats["error_rate"] == 0.0 and stats["model"] == {"name": "digits-cnn", "version": 1}
    host.swap(make())
    assert host.stats()["requests"] == 0


def test_a_nan_answer_is_a_model_error_when_the_caller_needs_finite_numbers(make, nan_root, x):
    host = ModelHost(make(nan_root))
    assert np.isnan(host.predict(x)["logits"]).all()  # the Python API hands NaN over as NaN
    for _ in range(20):
        with pytest.raises(ModelOutputError, match=r"model digits-cnn v2 produced 80 non-finite value\(s\)"):
            host.predict(x, finite=True)  # as the HTTP API asks: its JSON would carry NaN as null
    stats = host.stats()
    assert stats["requests"] == 21 and stats["errors"] == 20 and stats["rejected"] == 0
    # so an update to this model fails its health window instead of passing with NaN answers
    failure = judge(stats, HealthPolicy(max_error_rate=0.02), None, latency=False)
    assert failure is not None and failure.reason == "error_rate"


def test_a_canary_answering_nan_falls_back_to_the_current_model(make, nan_root, x):
    current = make()
    want = current.predict(x)["logits"]
    host = ModelHost(current)
    host.start_canary(make(nan_root), 0.5)
    for _ in range(20):
        np.testing.assert_array_equal(host.predict(x, finite=True)["logits"], want)
    report = host.stop_test()
    assert report["arms"]["candidate"]["errors"] == 10 and report["fallbacks"] == 10
