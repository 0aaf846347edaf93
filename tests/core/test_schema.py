"""Request validation: each wrong request gets an error naming the input, what was expected and what came."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.core.errors import SchemaError
from edgefleet.core.schema import InputValidator, TensorSpec

IMAGE = TensorSpec("pixels", "float32", ("batch", 1, 8, 8))
MASK = TensorSpec("mask", "int64", ("batch", 4))


@pytest.fixture
def one() -> InputValidator:
    return InputValidator([IMAGE])


@pytest.fixture
def two() -> InputValidator:
    return InputValidator([IMAGE, MASK])


def error(validator: InputValidator, inputs) -> SchemaError:
    with pytest.raises(SchemaError) as caught:
        validator(inputs)
    return caught.value


def test_valid_array_and_dict(one):
    x = np.zeros((3, 1, 8, 8), np.float32)
    assert one(x)["pixels"] is x
    assert one({"pixels": x})["pixels"] is x


def test_wrong_dtype(one):
    err = error(one, np.zeros((2, 1, 8, 8), np.float64))
    assert (err.input_name, err.expected, err.got) == ("pixels", "float32[batch, 1, 8, 8]", "float64[2, 1, 8, 8]")
    assert str(err) == "input 'pixels': expected float32[batch, 1, 8, 8], got float64[2, 1, 8, 8]"


def test_wrong_rank(one):
    assert error(one, np.zeros((1, 8, 8), np.float32)).got == "float32[1, 8, 8]"


def test_wrong_fixed_dim(one):
    err = error(one, np.zeros((2, 1, 8, 7), np.float32))
    assert "axis 3 must be 8" in err.expected and err.got == "float32[2, 1, 8, 7]"


def test_empty_batch(one):
    assert "batch >= 1" in error(one, np.zeros((0, 1, 8, 8), np.float32)).expected


def test_not_an_array(one):
    err = error(one, {"pixels": [[0.0]]})
    assert err.input_name == "pixels" and err.got == "list"


def test_missing_input(two):
    err = error(two, {"pixels": np.zeros((2, 1, 8, 8), np.float32)})
    assert err.input_name == "mask" and "missing" in err.expected and err.got == "nothing"


def test_extra_input(two):
    feed = {"pixels": np.zeros((2, 1, 8, 8), np.float32), "mask": np.zeros((2, 4), np.int64), "x": np.zeros(1)}
    err = error(two, feed)
    assert err.input_name == "x" and "only inputs ['pixels', 'mask']" in err.expected


def test_single_array_for_two_inputs(two):
    assert "a dict with inputs" in error(two, np.zeros((2, 1, 8, 8), np.float32)).expected


def test_batch_must_agree_across_inputs(two):
    err = error(two, {"pixels": np.zeros((2, 1, 8, 8), np.float32), "mask": np.zeros((3, 4), np.int64)})
    assert err.input_name == "mask" and "batch=2" in err.expected


def test_spec_round_trip_and_unknown_dtype():
    assert TensorSpec.from_dict(IMAGE.to_dict()) == IMAGE
    with pytest.raises(TypeError):
        TensorSpec.from_dict({"name": "x", "dtype": "floaty", "shape": [1]})


GOOD = np.zeros((1, 1, 8, 8), np.float32)
WRONG = {
    "float64": GOOD.astype(np.float64), "big-endian": GOOD.astype(">f4"), "short axis": GOOD[..., :7],
    "no batch": GOOD[0], "empty batch": GOOD[:0], "extra input": {"pixels": GOOD, "x": GOOD},
    "other name": {"image": GOOD}, "a list": {"pixels": GOOD.tolist()}, "not arrays": [GOOD],
}


@pytest.mark.parametrize("label", list(WRONG))
def test_a_remembered_signature_lets_no_wrong_request_through(label: str) -> None:
    """After good requests (whose signature `check` and `guard` remember), each wrong one gets exactly
    the error a fresh validator gives it, and good ones pass again after it, with the caller's arrays."""
    validator, seen = InputValidator([IMAGE]), []
    guarded = validator.guard(lambda feed: seen.append(feed) or len(seen))
    for request in (GOOD, {"pixels": GOOD}):
        assert validator.check(request)["pixels"] is GOOD and guarded(request) == len(seen)
    wrong = WRONG[label]
    for request in (wrong, {"pixels": wrong}) if isinstance(wrong, np.ndarray) else (wrong,):
        expected = error(InputValidator([IMAGE]), request)
        for path in (validator.check, guarded):
            with pytest.raises(SchemaError) as caught:
                path(request)
            assert str(caught.value) == str(expected)
    three = np.zeros((3, 1, 8, 8), np.float32)
    assert validator.check(three)["pixels"] is three and validator.check({"pixels": GOOD})["pixels"] is GOOD
    guarded(three), guarded({"pixels": GOOD})
    assert all(feed["pixels"] is want for feed, want in zip(seen, (GOOD, GOOD, three, GOOD), strict=True))
