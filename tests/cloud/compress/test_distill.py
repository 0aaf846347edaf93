"""Distillation on the real digits: a DigitsCNN(width=16) teacher into a DigitsCNN(width=4) student.

Measured (teacher 15 epochs: 97.8% held-out; students 40 epochs, T=4, alpha=0.7, seeds 0-4):
student alone 94.7-96.9%, distilled 94.9-96.9% (mean +0.2 points, within seed noise: on this easy
data set the teacher's soft targets do not measurably beat the labels). So the tests assert what holds
with margin on every seed: the distilled student has ~11% of the teacher's parameters, stays within 4
points of the teacher, and is no more than 2 points behind the same student trained alone.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from edgefleet.cloud.compress.distill import DistillResult, accuracy, distill
from edgefleet.cloud.digits import DigitsCNN, train_digits_cnn
from edgefleet.cloud.training import FitOptions, fit_classifier

EPOCHS = 40


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def teacher(digits_splits) -> torch.nn.Module:
    return train_digits_cnn(digits_splits, epochs=15, seed=0)


@pytest.mark.slow
def test_distilled_student_is_small_and_close_to_the_teacher(teacher, digits_splits):
    s = digits_splits
    torch.manual_seed(0)
    student = DigitsCNN(width=4)
    alone = copy.deepcopy(student)
    teacher_before, student_before = _state(teacher), _state(student)
    teacher.train()  # the caller's flag: distill must leave it as it is

    result = distill(teacher, student, (s.x_train, s.y_train), epochs=EPOCHS, seed=0, val_data=(s.x_test, s.y_test))
    fit_classifier(alone, s.x_train, s.y_train, FitOptions(epochs=EPOCHS, seed=0))

    teacher_acc = accuracy(teacher, (s.x_test, s.y_test))
    distilled_acc = accuracy(result.student, (s.x_test, s.y_test))
    alone_acc = accuracy(alone, (s.x_test, s.y_test))
    assert _params(result.student) < 0.15 * _params(teacher)
    assert teacher_acc > 0.95
    assert distilled_acc >= teacher_acc - 0.04, (distilled_acc, teacher_acc)
    assert distilled_acc >= alone_acc - 0.02, (distilled_acc, alone_acc)
    # the teacher and the student passed in are untouched; the result is a different module
    assert teacher.training
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert all(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in student_before.items())
    assert result.student is not student and not result.student.training
    # the history tells the story: loss falls, the held-out accuracy is the one measured
    assert len(result.history) == EPOCHS
    assert result.history[-1]["loss"] < 0.5 * result.history[0]["loss"]
    assert result.history[-1]["val_accuracy"] == pytest.approx(distilled_acc)
    assert result.options == {"temperature": 4.0, "alpha": 0.7, "epochs": EPOCHS, "lr": 3e-3, "batch_size": 64,
                              "weight_decay": 1e-4, "seed": 0}


def test_same_seed_same_student(teacher, digits_splits):
    s = digits_splits
    data = (s.x_train[:300], s.y_train[:300])
    torch.manual_seed(1)
    student = DigitsCNN(width=4)
    first = distill(teacher, student, data, epochs=2, seed=3)
    rng_after = torch.random.get_rng_state()
    second = distill(teacher, student, data, epochs=2, seed=3)
    assert all(torch.equal(v, second.student.state_dict()[k]) for k, v in first.student.state_dict().items())
    assert torch.equal(rng_after, torch.random.get_rng_state())  # the caller's random stream is not reseeded


def test_accepts_a_dataloader(teacher, digits_splits):
    s = digits_splits
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(s.x_train), torch.from_numpy(s.y_train))
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    result = distill(teacher, DigitsCNN(width=4), loader, epochs=3, val_data=loader)
    assert isinstance(result, DistillResult)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.history[-1]["val_accuracy"] > 0.5


def test_alpha_zero_ignores_the_teacher(teacher, digits_splits):
    """With alpha=0 the loss is the labels' cross-entropy alone: a random teacher changes nothing."""
    s = digits_splits
    data = (s.x_train[:256], s.y_train[:256])
    torch.manual_seed(2)
    student = DigitsCNN(width=4)
    other_teacher = DigitsCNN(width=8)
    a = distill(teacher, student, data, alpha=0.0, epochs=2)
    b = distill(other_teacher, student, data, alpha=0.0, epochs=2)
    assert all(torch.allclose(v, b.student.state_dict()[k]) for k, v in a.student.state_dict().items())
    assert np.isclose(a.history[-1]["loss"], a.history[-1]["hard_loss"])


@pytest.mark.parametrize("kwargs", [{"temperature": 0.0}, {"alpha": 1.5}, {"epochs": 0}])
def test_rejects_bad_options(teacher, digits_splits, kwargs):
    with pytest.raises(ValueError):
        distill(teacher, DigitsCNN(width=4), (digits_splits.x_train, digits_splits.y_train), **kwargs)


def test_rejects_a_student_with_other_outputs(teacher, digits_splits):
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    with pytest.raises(ValueError, match="teacher"):
        distill(teacher, student, (digits_splits.x_train[:64], digits_splits.y_train[:64]), epochs=1)
