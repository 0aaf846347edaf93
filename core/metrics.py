"""Model quality, the same way everywhere: accuracy overall, per class, and per user-given slice.

Used by the exporter (reference and held-out metrics in the manifest), the compression report (what a
step cost, by class and slice) and the model card.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from edgefleet.core.profile import class_confidence


def classification_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    postprocess: str = "softmax",
    class_names: Sequence[str] | None = None,
    slices: Mapping[str, np.ndarray] | None = None,
) -> dict:
    """{"accuracy", "count", "per_class": {name: {"accuracy", "count"}}, "per_slice": {...}}.

    scores: (N, C) logits or probabilities; labels: (N,) class indices; slices: name -> boolean mask
    (or row indices) over the N rows, for the groups a user cares about (a site, a sensor, a cohort).
    """
    predicted, _ = class_confidence(scores, postprocess)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if len(labels) != len(predicted):
        raise ValueError(f"{len(labels)} labels for {len(predicted)} predictions")
    names = list(class_names) if class_names is not None else [str(i) for i in range(scores.shape[1])]
    correct = predicted == labels
    per_class = {}
    for index, name in enumerate(names):
        mask = labels == index
        if mask.any():
            per_class[name] = {"accuracy": float(correct[mask].mean()), "count": int(mask.sum())}
    result = {"accuracy": float(correct.mean()), "count": int(len(labels)), "per_class": per_class}
    if slices:
        result["per_slice"] = {}
        for name, selector in slices.items():
            chosen = correct[np.asarray(selector)]
            if chosen.size:
                result["per_slice"][name] = {"accuracy": float(chosen.mean()), "count": int(chosen.size)}
    return result
