"""Knowledge distillation: train a small student to imitate a big teacher (Hinton et al., 2015).

    result = distill(teacher, DigitsCNN(width=4), (x_train, y_train), epochs=30, val_data=(x_val, y_val))
    small = result.student          # a trained copy; the student passed in is untouched
    result.history[-1]              # {"epoch", "loss", "soft_loss", "hard_loss", "val_accuracy"}

The loss per batch, with T the temperature and alpha the weight of the teacher's soft targets:

    alpha * T² * KL(softmax(teacher / T) || softmax(student / T))  +  (1 - alpha) * CE(student, labels)

The T² keeps the soft term's gradients on the scale of the hard term's whatever T is. alpha=1 learns
from the teacher only (labels unused), alpha=0 is plain training on the labels.

The teacher runs in eval mode without gradients on a private copy, so the caller's module (its
weights, its train/eval flags, its requires_grad flags) is never modified. The student is trained on
a deep copy. `train_data` is (x, y) numpy arrays, shuffled each epoch by a generator seeded with
`seed`, or any iterable of (x, y) batches such as a torch DataLoader, used as it comes (its own
shuffling and augmentation apply; `batch_size` is then ignored).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

Batches = tuple[np.ndarray, np.ndarray] | Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class DistillResult:
    student: torch.nn.Module  # the trained copy, in eval mode
    history: list[dict]  # one entry per epoch: epoch, loss, soft_loss, hard_loss (means), val_accuracy
    options: dict = field(default_factory=dict)  # what the lineage step records


def distill(
    teacher: torch.nn.Module,
    student: torch.nn.Module,
    train_data: Batches,
    *,
    temperature: float = 4.0,
    alpha: float = 0.7,
    epochs: int = 30,
    lr: float = 3e-3,
    batch_size: int = 64,
    weight_decay: float = 1e-4,
    seed: int = 0,
    val_data: Batches | None = None,
) -> DistillResult:
    """Trains a copy of `student` on the teacher's softened outputs plus the hard labels, with Adam."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    with torch.random.fork_rng(devices=[]):  # seeds randomness inside the student without leaking out
        torch.manual_seed(seed)
        return _train(teacher, student, train_data, temperature, alpha, epochs, lr, batch_size, weight_decay, seed,
                      val_data)


def _train(teacher: torch.nn.Module, student: torch.nn.Module, train_data: Batches, temperature: float,
           alpha: float, epochs: int, lr: float, batch_size: int, weight_decay: float, seed: int,
           val_data: Batches | None) -> DistillResult:
    frozen = copy.deepcopy(teacher).eval().requires_grad_(False)
    learner = copy.deepcopy(student)
    optimizer = torch.optim.Adam(learner.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(1, epochs + 1):
        learner.train()
        sums, seen = {"loss": 0.0, "soft_loss": 0.0, "hard_loss": 0.0}, 0
        for x, y in _batches(train_data, batch_size, generator):
            with torch.no_grad():
                teacher_logits = frozen(x)
            logits = learner(x)
            if logits.shape != teacher_logits.shape:
                raise ValueError(f"the student gives {tuple(logits.shape)}, the teacher {tuple(teacher_logits.shape)}")
            soft = _soft_loss(logits, teacher_logits, temperature)
            hard = F.cross_entropy(logits, y)
            loss = alpha * soft + (1.0 - alpha) * hard
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            for key, value in (("loss", loss), ("soft_loss", soft), ("hard_loss", hard)):
                sums[key] += value.item() * len(y)
            seen += len(y)
        if seen == 0:
            raise ValueError("train_data yielded no batches")
        entry = {"epoch": epoch, **{k: v / seen for k, v in sums.items()}}
        if val_data is not None:
            entry["val_accuracy"] = accuracy(learner, val_data)
        history.append(entry)
        log.debug("distill epoch %d: %s", epoch, entry)
    learner.eval()
    options = {"temperature": temperature, "alpha": alpha, "epochs": epochs, "lr": lr, "batch_size": batch_size,
               "weight_decay": weight_decay, "seed": seed}
    log.info("distilled %s into %s: final loss %.4f%s", type(teacher).__name__, type(student).__name__,
             history[-1]["loss"], f", val accuracy {history[-1]['val_accuracy']:.4f}" if val_data is not None else "")
    return DistillResult(learner, history, options)


def _soft_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(teacher || student) between the temperature-softened distributions, mean over the batch."""
    student_log_p = F.log_softmax(student_logits / temperature, dim=1)
    teacher_log_p = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(student_log_p, teacher_log_p, reduction="batchmean", log_target=True) * temperature**2


def accuracy(model: torch.nn.Module, data: Batches, batch_size: int = 256) -> float:
    """Top-1 accuracy of `model` on (x, y) arrays or (x, y) batches; the model's train flag is restored."""
    was_training = model.training
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in _batches(data, batch_size, None):
            correct += int((model(x).argmax(dim=1) == y).sum())
            total += len(y)
    model.train(was_training)
    return correct / total if total else float("nan")


def _batches(data: Batches, batch_size: int, generator: torch.Generator | None) -> Iterator[tuple[torch.Tensor, ...]]:
    """(x, y) tensors: slices of arrays (shuffled when a generator is given), or the loader's own batches."""
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], np.ndarray):
        x, y = torch.from_numpy(np.ascontiguousarray(data[0])), torch.from_numpy(np.asarray(data[1]).astype(np.int64))
        if len(x) != len(y):
            raise ValueError(f"{len(x)} inputs for {len(y)} labels")
        order = torch.randperm(len(x), generator=generator) if generator is not None else torch.arange(len(x))
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            yield x[index], y[index]
        return
    for x, y in data:
        yield torch.as_tensor(x), torch.as_tensor(y).long()
