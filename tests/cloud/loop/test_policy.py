"""The retraining policy file: a whole valid policy is read with its paths resolved beside it, and each
mistake is one line naming the file, the table and the key, through the CLI with exit code 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgefleet.cloud.loop.policy import PolicyError, load_policy
from edgefleet.core.signing import SigningKey
from examples.loop_fleet import policy_text
from tests.cli.test_bundle_commands import assert_user_error, edgefleet

VALID = policy_text(function="examples.loop_train_digits:retrain", key="keys/release.key",
                    trust="keys/release.pub", min_samples=100, window="7d", critical=("clean",))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    SigningKey.generate().save(tmp_path / "keys", "release")
    for name in ("reference.npz", "heldout.npz"):
        np.savez(tmp_path / name, pixels=np.zeros((2, 1, 8, 8), np.float32), y=np.zeros(2, np.int64))
    return tmp_path


def write(folder: Path, text: str) -> Path:
    path = folder / "policy.toml"
    path.write_text(text)
    return path


def test_a_valid_policy_is_read_whole_with_paths_beside_it(folder):
    policy = load_policy(write(folder, VALID))
    assert (policy.name, policy.model, policy.fleet, policy.trigger) == ("digits-bright", "digits-cnn", "lab", "drift")
    assert policy.training.mode == "scratch" and policy.training.reference_data == folder / "reference.npz"
    assert policy.dataset.name == "digits-bright" and policy.dataset.window_s == 7 * 86400
    assert policy.dataset.min_samples == 100 and policy.dataset.holdout_fraction == 0.25
    assert [s.method for s in policy.recipe.recipe.steps] == ["quantize_dynamic"]
    assert policy.recipe.targets == ("onnxruntime-cpu",) and policy.recipe.source == "inline"
    assert policy.evaluation.heldout == folder / "heldout.npz" and policy.evaluation.critical_slices == ("clean",)
    assert policy.evaluation.max_drop == 0.02
    assert policy.deployment.waves == (50, 100) and policy.deployment.gates["max_accuracy_drop"] == 0.05
    assert policy.key == folder / "keys" / "release.key" and policy.trust == (folder / "keys" / "release.pub",)


def test_stateful_means_finetune_and_needs_the_serving_torch_model(folder):
    text = VALID.replace('mode = "scratch"', 'mode = "stateful"')
    with pytest.raises(PolicyError, match=r"\[training\] torch_model: required by mode = 'stateful'"):
        load_policy(write(folder, text))
    text = text.replace('mode = "stateful"', 'mode = "stateful"\ntorch_model = "mymodels:serving"')
    assert load_policy(write(folder, text)).training.mode == "finetune"


@pytest.mark.parametrize(("old", "new", "message"), [
    ('kind = "drift"', 'kind = "alert"', "[trigger] kind: 'alert' is not one of drift, performance, schedule, manual"),
    ('kind = "drift"', 'kind = "schedule"', "[trigger] every: required by kind = 'schedule'"),
    ('kind = "drift"', 'kind = "schedule"\nevery = "soon"', "[trigger] every: expected a duration like 30m"),
    ('function = "examples.loop_train_digits:retrain"', 'function = "retrain"',
     "[training] function: expected module:function, got 'retrain'"),
    ('mode = "scratch"', 'mode = "warm"', "[training] mode: 'warm' is not one of finetune, stateful, scratch"),
    ('window = "7d"', 'window = "7d"\nsince = 5', "[dataset] since: give window or since, not both"),
    ("min_samples = 100", "min_samples = 0", "[dataset] min_samples: 0 is outside [1, 1e+09]"),
    ("holdout_fraction = 0.25", "holdout_fraction = true", "[dataset] holdout_fraction: expected an integer or a "
                                                           "number, got True"),
    ('method = "quantize_dynamic"', 'method = "prune_channels"\namount = 0.5',
     "[recipe] step: the loop compresses the retrained bundle, so its recipe takes ONNX steps only"),
    ('method = "quantize_dynamic"', 'method = "zip"', "[recipe] step: step 1 field 'method': expected one of"),
    ('targets = ["onnxruntime-cpu"]', 'targets = ["abacus"]', "[recipe] targets: unknown target 'abacus'"),
    ('heldout = "heldout.npz"', 'heldout = "missing.npz"', "[evaluation] heldout: no file "),
    ("max_drop = 0.02", "max_drop = -0.1", "[evaluation] max_drop: -0.1 is outside [0, 1e+09]"),
    ("waves = [50, 100]", "waves = [50, 80]", "[deployment] waves: expected rising whole percentages ending at 100"),
    ("max_accuracy_drop = 0.05", "max_accuracy_dorp = 0.05", "[deployment] gates: unknown gate field "
                                                              "'max_accuracy_dorp'"),
    ("observation_seconds = 8", 'observation_seconds = "long"', "[deployment] gates: observation_seconds: Input "
                                                                 "should be a valid number"),
    ('fleet = "lab"', 'fleet = "lab"\ncolour = "red"', "colour: unknown key"),
    ('key = "keys/release.key"', "", "[signing] key: required"),
])
def test_each_mistake_is_one_line_naming_the_key(folder, old, new, message):
    assert old in VALID
    path = write(folder, VALID.replace(old, new, 1))
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert message in str(caught.value) and str(path) in str(caught.value), str(caught.value)


def test_the_cli_refuses_a_bad_policy_with_exit_2(folder):
    path = write(folder, VALID.replace("[training]", "[training\n"))
    result = edgefleet("loop", "run", "--policy", str(path), "--cloud", "http://127.0.0.1:9", "--token", "t")
    assert_user_error(result, f"--policy {path}: not valid TOML")
    missing = edgefleet("loop", "run", "--policy", str(folder / "nope.toml"), "--cloud", "http://127.0.0.1:9",
                        "--token", "t")
    assert_user_error(missing, f"--policy {folder / 'nope.toml'}: cannot read it (No such file or directory)")


def test_cloud_up_refuses_a_bad_policy_before_it_starts(folder):
    path = write(folder, VALID.replace('kind = "drift"', 'kind = "drift"\nevery = "1d"'))
    result = edgefleet("cloud", "up", "--loop", str(path), "--data", str(folder / "cloud"), "--port", "0")
    assert_user_error(result, f"{path}: [trigger] every: only for kind = 'schedule' (kind is 'drift')")
    assert not (folder / "cloud").exists()
