"""Where the sanity checks' limits and invariances come from (a policy file, else the bundles' model
cards), every refusal of a bad declaration, and the transformations themselves."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.cloud.loop.eval_checks import Invariance, beyond, changed, load_policy, transformed
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.schema import TensorSpec

IMAGE = TensorSpec("pixels", "float32", ("batch", 1, 8, 8))
FLIP = {"name": "hflip", "transform": "flip", "axis": -1, "max_changed": 0.02}


def test_defaults_without_a_file_or_declarations():
    policy = load_policy(None, [("candidate", {}), ("serving", {"model_card": {}})])
    assert (policy.noise, policy.max_changed_under_noise, policy.bins, policy.max_ece) == (0.05, 0.05, 10, 0.10)
    assert policy.invariances == () and policy.declared_in == "nowhere"


def test_a_policy_file_sets_limits_and_its_invariances_replace_the_bundles(tmp_path):
    path = tmp_path / "checks.toml"
    path.write_text('[perturbation]\nnoise = 0.1\nmax_changed = 0.2\n[calibration]\nbins = 15\nmax_ece = 0.05\n'
                    '[[invariance]]\nname = "brighter"\ntransform = "offset"\nvalue = 0.1\n')
    card = {"model_card": {"invariances": [FLIP]}}
    policy = load_policy(path, [("candidate", card)])
    assert (policy.noise, policy.max_changed_under_noise, policy.bins, policy.max_ece) == (0.1, 0.2, 15, 0.05)
    assert policy.invariances == (Invariance("brighter", "offset", 0.1, None, None, 0.01),)
    assert policy.declared_in == f"--checks {path}"


def test_the_candidates_model_card_declares_invariances_else_the_serving_ones():
    serving = {"model_card": {"invariances": [{"transform": "scale", "value": 1.05}]}}
    policy = load_policy(None, [("candidate", {"model_card": {"invariances": [FLIP]}}), ("serving", serving)])
    assert policy.invariances == (Invariance("hflip", "flip", None, -1, None, 0.02),)
    assert policy.declared_in == "the candidate bundle's model_card.invariances"
    policy = load_policy(None, [("candidate", {"model_card": {}}), ("serving", serving)])
    assert policy.invariances[0].transform == "scale" and policy.invariances[0].name == "scale 1.05"
    assert policy.declared_in == "the serving bundle's model_card.invariances"


@pytest.mark.parametrize(("text", "message"), [
    ("[perturbation]\nnoise = -1\n", "noise must be a number from 0, got -1"),
    ("[calibration]\nmax_ece = 'high'\n", "max_ece must be a number from 0 to 1, got 'high'"),
    ("[shadow]\nx = 1\n", "unknown table(s) shadow"),
    ("[[invariance]]\ntransform = 'rotate'\n", "invariance 1: transform must be one of flip, offset, scale, roll, "
                                               "got 'rotate'"),
    ("[[invariance]]\ntransform = 'offset'\n", "invariance 1: transform offset needs a value"),
    ("[[invariance]]\ntransform = 'flip'\naxis = 'x'\n", "invariance 1: axis must be an integer, got 'x'"),
    ("[[invariance]]\ntransform = 'flip'\nexec = 'rm -rf /'\n", "invariance 1: unknown key(s) exec"),
    ("[perturbation\n", "cannot read it as TOML"),
])
def test_a_bad_policy_file_is_one_message(tmp_path, text, message):
    path = tmp_path / "checks.toml"
    path.write_text(text)
    with pytest.raises(EdgefleetError) as caught:
        load_policy(path, [])
    assert message in str(caught.value) and str(path) in str(caught.value)


def test_transformations_touch_only_the_declared_input():
    x = np.arange(2 * 64, dtype=np.float32).reshape(2, 1, 8, 8)
    other = TensorSpec("rate", "float32", ("batch", 1))
    inputs = {"pixels": x, "rate": np.ones((2, 1), np.float32)}
    flipped = transformed(inputs, [IMAGE, other], Invariance("h", "flip", axis=-1))
    assert np.array_equal(flipped["pixels"], x[..., ::-1]) and flipped["rate"] is inputs["rate"]
    rolled = transformed(inputs, [IMAGE, other], Invariance("r", "roll", value=2, axis=2))
    assert np.array_equal(rolled["pixels"], np.roll(x, 2, axis=2))
    shifted = transformed(inputs, [IMAGE, other], Invariance("o", "offset", value=0.5, input="rate"))
    assert np.array_equal(shifted["rate"], np.full((2, 1), 1.5, np.float32)) and shifted["pixels"] is x
    assert shifted["rate"].dtype == np.float32
    scaled = transformed(inputs, [IMAGE], Invariance("s", "scale", value=2.0))
    assert np.array_equal(scaled["pixels"], x * 2)


@pytest.mark.parametrize(("invariance", "message"), [
    (Invariance("b", "flip", axis=0), "axis 0 is not a sample axis of input 'pixels' float32[batch, 1, 8, 8]"),
    (Invariance("b", "flip", axis=4), "axis 4 is not a sample axis"),
    (Invariance("b", "offset", value=1.0, input="audio"), "the model has no input 'audio' (inputs: pixels)"),
])
def test_a_transformation_that_cannot_apply_is_one_message(invariance, message):
    with pytest.raises(EdgefleetError) as caught:
        transformed({"pixels": np.zeros((2, 1, 8, 8), np.float32)}, [IMAGE], invariance)
    assert message in str(caught.value)


def test_changed_answers_and_the_failing_rule():
    assert changed(np.array([1, 2, 3]), np.array([1, 0, 3]), None).tolist() == [False, True, False]
    values = np.array([[1.0], [2.0], [3.0]])
    assert changed(values, values + [[0.05], [0.2], [-0.3]], 0.1).tolist() == [False, True, True]
    assert beyond({"ci95": [0.06, 0.1]}, 0.05) and not beyond({"ci95": [0.04, 0.1]}, 0.05)
    assert not beyond(None, 0.05)
