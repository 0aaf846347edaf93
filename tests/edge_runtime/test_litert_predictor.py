"""The Predictor's per-request path on imported .tflite files (the litert backend's direct path).

A request with the signature the Predictor last accepted skips the schema's comparisons, and the
backend lets SetTensor check the shape (core/schema.py InputValidator, edge_runtime/backends/litert.py):
neither may let a wrong request through nor mix up answers. The files are the committed converter
fixtures (tests/fixtures/tflite: a tiny CNN in float, and in full int8 with int8 inputs and outputs, both
with a static batch of 1); reference.npz holds what the converter environment's LiteRT answered.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

from edgefleet.compilers.import_model import import_model  # noqa: E402
from edgefleet.core.errors import SchemaError  # noqa: E402
from edgefleet.core.schema import InputValidator  # noqa: E402
from edgefleet.core.signing import SigningKey  # noqa: E402
from edgefleet.edge_runtime.predictor import Predictor  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tflite"
FILES = {"cnn_float": "float_logits", "cnn_int8": "int8_logits"}


@pytest.fixture(scope="module")
def recorded() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "reference.npz") as data:
        return dict(data)


@pytest.fixture(scope="module", params=list(FILES))
def served(request, tmp_path_factory) -> Iterator[tuple[Predictor, str]]:
    """(Predictor on litert, the reference.npz key of its outputs) for an imported fixture."""
    name, workdir = request.param, tmp_path_factory.mktemp(request.param)
    key = SigningKey.generate()
    _, public = key.save(workdir / "keys", "test")
    bundle = import_model(FIXTURES / f"{name}.tflite", workdir / "bundle", name=name.replace("_", "-"), version=1,
                          signing_key=key)
    with Predictor(bundle.root, backends=["litert"], trusted_keys=[public], threads=1) as predictor:
        assert predictor.backend_name == "litert"
        yield predictor, FILES[name]


def test_wrong_requests_between_good_ones_get_the_error_a_first_request_gets(served, recorded) -> None:
    predictor, expected = served
    rows, want = recorded["pixels"], recorded[expected]
    good = rows[:1]
    wrong = [good.astype(np.float64), good.astype(">f4"), good[..., :7], rows[:0], good[0],
             {"pixels": good.astype(np.float64)}, {"pixels": good, "mask": good}, {"image": good},
             {"pixels": good.tolist()}]
    for request in wrong:
        np.testing.assert_array_equal(predictor.predict({"pixels": good})["logits"], want[:1])
        with pytest.raises(SchemaError) as first:
            InputValidator(predictor.bundle.inputs)(request)
        with pytest.raises(SchemaError) as caught:
            predictor.predict(request)
        assert str(caught.value) == str(first.value)
    np.testing.assert_array_equal(predictor.predict(good)["logits"], want[:1])


def test_threads_with_mixed_row_counts_each_get_their_own_answer(served, recorded) -> None:
    """One row goes the direct path, more rows are refused by SetTensor and run in chunks: from several
    threads at once, every answer is the interpreter's for that request's rows."""
    predictor, expected = served
    rows, want = recorded["pixels"], recorded[expected]
    requests = [(start, count) for count in (1, 3, 1, 5) for start in range(len(rows) - count + 1)]
    errors: list[str] = []

    def worker(offset: int) -> None:
        for i in range(120):
            start, count = requests[(offset + i) % len(requests)]
            got = predictor.predict({"pixels": rows[start:start + count]})["logits"]
            if not np.array_equal(got, want[start:start + count]):
                errors.append(f"rows {start}..{start + count}: another request's answer")
                return

    threads = [threading.Thread(target=worker, args=(offset,)) for offset in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
