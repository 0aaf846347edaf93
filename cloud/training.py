"""A small, plain training loop for classifiers: enough for examples, tests and compression fine-tuning."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitOptions:
    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0


def fit_classifier(
    model: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    options: FitOptions = FitOptions(),
    on_epoch: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Trains with Adam and cross-entropy; returns the mean loss per epoch."""
    generator = torch.Generator().manual_seed(options.seed)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    losses = []
    model.train()
    for epoch in range(options.epochs):
        order = torch.randperm(len(inputs), generator=generator)
        total = 0.0
        for start in range(0, len(order), options.batch_size):
            batch = order[start:start + options.batch_size]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(inputs[batch]), targets[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        losses.append(total / len(order))
        log.debug("epoch %d loss %.4f", epoch + 1, losses[-1])
        if on_epoch:
            on_epoch(epoch + 1, losses[-1])
    model.eval()
    return losses


def accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float((predicted == y).mean())
