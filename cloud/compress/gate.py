"""The accuracy gate of static quantization: keep the layers whose quantization hurts accuracy most in
float, one at a time, until the drop against the float model is within the gate, or fail with every
number measured.

1. Quantize everything; if the drop on the evaluation data is within max_drop, done.
2. Rank the candidates (by default the nodes with a weight): each is scored by the accuracy of the model
   with only that node kept in float; ties go to the smaller mean output error against the float model.
3. Keep nodes in float in ranking order until the drop is within max_drop; the record keeps the ranking
   and every step (excluded nodes, accuracy, drop, output error).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx

from edgefleet.core.errors import EdgefleetError

log = logging.getLogger(__name__)


class QuantizationError(EdgefleetError):
    """Quantization cannot run as asked, or no allowed set of float nodes meets the accuracy gate."""

    def __init__(self, message: str, *, float_accuracy: float | None = None, best_accuracy: float | None = None,
                 max_drop: float | None = None, steps: Sequence[dict] = ()) -> None:
        super().__init__(message)
        self.float_accuracy = float_accuracy
        self.best_accuracy = best_accuracy
        self.max_drop = max_drop
        self.steps = list(steps)


Evaluate = Callable[[bytes], tuple[float, np.ndarray]]


def accuracy_gate(quantize: Callable[[Sequence[str]], bytes], evaluate: Evaluate, float_model: bytes,
                   max_drop: float, base: tuple[str, ...], candidates: list[str],
                   prepared: Path) -> tuple[bytes, tuple[str, ...], dict]:
    float_accuracy, float_scores = evaluate(float_model)

    def trial(excluded: Sequence[str]) -> tuple[bytes, dict]:
        model = quantize(excluded)
        accuracy, scores = evaluate(model)
        error = float(np.mean(np.abs(scores.astype(np.float64) - float_scores)))
        return model, {"excluded": list(excluded), "accuracy": accuracy, "drop": float_accuracy - accuracy,
                       "output_error": error}

    model, first = trial(base)
    steps, ranking = [first], []
    gate = {"max_drop": max_drop, "float_accuracy": float_accuracy, "ranking": ranking, "steps": steps}
    log.info("quantize gate: float accuracy %.4f, quantized %.4f (drop %.4f, max %.4f)",
             float_accuracy, first["accuracy"], first["drop"], max_drop)
    if first["drop"] <= max_drop:
        return model, base, gate
    op_types = {n.name: n.op_type for n in onnx.load(str(prepared)).graph.node}
    trials: dict[str, tuple[bytes, dict]] = {}
    for node in (c for c in candidates if c not in base):
        trials[node] = trial([*base, node])
        ranking.append({"node": node, "op_type": op_types.get(node, "?"),
                        **{k: trials[node][1][k] for k in ("accuracy", "drop", "output_error")}})
    ranking.sort(key=lambda r: (-r["accuracy"], r["output_error"]))
    excluded = list(base)
    for entry in ranking:
        excluded.append(entry["node"])
        model, step = trials[entry["node"]] if len(excluded) == len(base) + 1 else trial(excluded)
        steps.append(step)
        log.info("quantize gate: %s kept in float -> accuracy %.4f (drop %.4f)", excluded, step["accuracy"],
                 step["drop"])
        if step["drop"] <= max_drop:
            return model, tuple(excluded), gate
    best = max(steps, key=lambda s: s["accuracy"])
    measured = "; ".join(f"kept in float {', '.join(s['excluded']) or 'nothing'}: drop {s['drop']:.4f}"
                         for s in steps)
    raise QuantizationError(
        f"no set of float nodes meets the accuracy gate: float accuracy {float_accuracy:.4f}, best quantized "
        f"{best['accuracy']:.4f} (drop {best['drop']:.4f}) > max_drop {max_drop:g}; measured: {measured}",
        float_accuracy=float_accuracy, best_accuracy=best["accuracy"], max_drop=max_drop, steps=steps,
    )


def weighted_nodes(model_path: Path) -> list[str]:
    """Nodes with a weight (a float initializer of rank >= 2): the ones whose quantization costs most."""
    graph = onnx.load(str(model_path)).graph
    weights = {t.name for t in graph.initializer if len(t.dims) >= 2 and t.data_type == onnx.TensorProto.FLOAT}
    return [n.name for n in graph.node if any(i in weights for i in n.input)]
