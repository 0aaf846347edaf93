"""The accuracy gate of static quantization: keep the layers whose quantization hurts accuracy most in
float, one at a time, until the drop against the float model is within the gate, or fail with every
number measured.

The candidates are groups of nodes kept in float together (by default node_groups: each node with a
weight and the nodes after it up to the next one). "Accuracy" is the caller's metric: accuracy with
labels, top-1 agreement with the float model without (evaluate.py).

1. Quantize everything; if the drop on the evaluation data is within max_drop, done.
2. strategy "rank" (at most RANK_LIMIT groups, under "auto"): each group is scored by the accuracy of
   the model with only that group kept in float (ties: the smaller mean output error against the float
   model); groups are then kept in float in ranking order until the drop is within max_drop.
   strategy "prefix" (more groups): the first k groups in graph order are kept in float, k climbing a
   ladder (1, 2, 3, 4, 6, 8, 11, 16, ...) until the gate is met: a dozen trials instead of one per
   group, for deep networks whose error builds up from the input on (EfficientNet-Lite: the stem and
   first depthwise convolution cost most).
   strategy "sensitivity" (asked for by name): each group is the only one quantized in a trial, scored
   by the mean KL divergence of the output softmax from the float model's on the first
   SENSITIVITY_ROWS evaluation rows (continuous: every row counts, not only the few whose top-1 flips,
   so a ranking on ambiguous inputs is not noise); then the most sensitive k groups are kept in float,
   k climbing the same ladder, each step decided on every evaluation row. One trial per group: give it
   a large evaluation pool (the decision) and expect len(groups) cheap trials.
   strategy "budget" (asked for by name): the same sensitivity ranking, but the groups are kept in
   float in order of divergence per weight (the stem and first depthwise convolutions hold few weights
   and cost most), and only while the float groups hold at most FLOAT_WEIGHT_BUDGET of the model's
   weights: the model stays compressed, and when the budget cannot meet the gate it fails with every
   trial instead of quietly keeping most of the network in float (what "sensitivity" did on
   EfficientNet-Lite0: 41 of 50 groups, 1.09x smaller). Measured there (Percentile, 1,000 decision
   crops, max_drop 0.03): missed; all-int8 0.898, best 0.948 with 8 groups in float, and 0.587 with the
   single top group in float: the groups it picks are scattered islands, which onnxruntime's
   WeightBiasQuantization re-quantizes per tensor (note below). Weight rounding alone, not activation
   ranges, costs most there: per-channel int8 weights with float activations agree on 0.84 of 200
   validation crops, A16W8 on 0.845 (the crops are ambiguous: median float top-1 probability 0.16).
   strategy "prefix16" (asked for by name): mixed precision instead of float islands. Weights stay
   int8 (per channel) everywhere; when every node in int8 misses the gate, the activations go to 16 bits
   (QUInt16 QDQ, onnxruntime's quantizer, opset 21), then the first k groups in graph order are kept in
   float on the prefix ladder, each trial with 16-bit activations. A contiguous float head starts at the
   float model input, so no float convolution sits between a DequantizeLinear and a QuantizeLinear (the
   per-tensor re-quantization below never applies). Measured on EfficientNet-Lite0 (bench_quantize,
   1,000 decision crops, 600 test crops, bias correction): 16-bit activations alone 0.947-0.952 on the
   test crops, with the first 8 of 50 groups in float 0.970-0.972; the gate (Percentile) stopped at 15
   groups (validation 0.971) for 0.963 on the test crops, 3.60x smaller than float. The price is speed:
   onnxruntime's CPU provider has no 16-bit convolution, so every Conv runs in float between
   QuantizeLinear/DequantizeLinear pairs (0.44x the float model's speed there). Giving 16-bit
   activations and weights only to the stem and first depthwise convolution, the most sensitive groups,
   reached 0.937: too little; a float head with int8 activations plateaus near 0.96 (README).
3. The record keeps the strategy, the ranking and every step (excluded nodes, accuracy, drop, output
   error); if nothing meets the gate, QuantizationError carries the numbers.

onnxruntime note (measured with 1.32): a Conv/Gemm kept in float whose input comes from a per-tensor
DequantizeLinear and whose output leads (through Relu/Clip only) to a QuantizeLinear is quantized at
session load anyway (WeightBiasQuantization: per-tensor int8 weight), which on a depthwise
convolution is far worse than the per-channel weights it replaced. Groups that span from one weight to
the next avoid that pattern for every group but the last of a run; the trials are measured as
onnxruntime runs them, so a group it spoils ranks low instead of being trusted.
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


Evaluate = Callable[..., tuple[float, np.ndarray]]  # (model bytes[, rows]) -> (metric, first output)
# a drop equal to max_drop meets the gate: 1 - 0.97 is 0.030000000000000027 in floating point
EPSILON = 1e-9
RANK_LIMIT = 16  # more groups than this: the "prefix" strategy (a few trials instead of one per group)
STRATEGIES = ("rank", "prefix", "sensitivity", "budget", "prefix16")
WIDE_ACTIVATIONS = "QUInt16"  # "prefix16": the activation type of its trials after the first
FLOAT_WEIGHT_BUDGET = 0.2  # "budget": at most this fraction of the weights kept in float
SENSITIVITY_ROWS = 256  # the ranking's trials score the first rows only: the divergence is steady on fewer


def accuracy_gate(quantize: Callable[[Sequence[str]], bytes], evaluate: Evaluate, float_model: bytes,
                  max_drop: float, base: tuple[str, ...], candidates: Sequence[Sequence[str]], prepared: Path, *,
                  first: bytes | None = None, strategy: str = "auto",
                  quantize_wide: Callable[[Sequence[str]], bytes] | None = None) -> tuple[bytes, tuple[str, ...], dict]:
    """Returns (model, nodes kept in float, record). candidates: groups of nodes kept in float together
    (node_groups); first: the model already quantized with `base` kept in float, if any; quantize_wide:
    the same as quantize with WIDE_ACTIVATIONS (strategy "prefix16")."""
    float_accuracy, float_scores = evaluate(float_model)

    def trial(excluded: Sequence[str], model: bytes | None = None, rows: int | None = None,
              wide: bool = False) -> tuple[bytes, dict]:
        if model is None:
            model = quantize_wide(excluded) if wide else quantize(excluded)
        accuracy, scores = evaluate(model) if rows is None else evaluate(model, rows)
        reference = float_scores[:len(scores)]
        error = float(np.mean(np.abs(scores.astype(np.float64) - reference)))
        return model, {"excluded": list(excluded), "accuracy": accuracy, "drop": float_accuracy - accuracy,
                       "output_error": error, "divergence": divergence(reference, scores)}

    groups = [tuple(n for n in g if n not in base) for g in candidates]
    groups = [g for g in groups if g]
    if strategy == "auto":
        strategy = "rank" if len(groups) <= RANK_LIMIT else "prefix"
    if strategy not in STRATEGIES:
        raise QuantizationError(f"gate strategy must be 'auto', 'rank', 'prefix', 'sensitivity', 'budget' or "
                                f"'prefix16', got {strategy!r}")
    if strategy == "prefix16" and quantize_wide is None:
        raise QuantizationError("gate strategy 'prefix16' needs a quantizer with 16-bit activations (QDQ)")
    model, start = trial(base, first)
    steps, ranking = [start], []
    gate = {"max_drop": max_drop, "float_accuracy": float_accuracy, "strategy": strategy, "ranking": ranking,
            "steps": steps}
    log.info("quantize gate: float %.4f, quantized %.4f (drop %.4f, max %.4f)", float_accuracy, start["accuracy"],
             start["drop"], max_drop)
    if start["drop"] <= max_drop + EPSILON:
        gate["kept_in_float"] = list(base)
        return model, base, gate
    if strategy == "rank":
        found = _rank(trial, base, groups, ranking, steps, max_drop, prepared)
    elif strategy == "sensitivity":
        gate["sensitivity_rows"] = SENSITIVITY_ROWS
        found = _ladder(trial, base, _sensitivity(trial, base, groups, ranking, prepared), steps, max_drop)
    elif strategy == "budget":
        gate["sensitivity_rows"], gate["float_weight_budget"] = SENSITIVITY_ROWS, FLOAT_WEIGHT_BUDGET
        weights = weight_counts(prepared)
        found = _ladder(trial, base, _within_budget(_sensitivity(trial, base, groups, ranking, prepared), ranking,
                                                    weights), steps, max_drop)
    elif strategy == "prefix16":
        gate["activations"] = WIDE_ACTIVATIONS
        found = _wide(trial, base, groups, steps, max_drop)
    else:
        found = _ladder(trial, base, groups, steps, max_drop)
    if found is not None and set(n for g in groups for n in g) <= set(found[1]):
        raise QuantizationError(
            f"the accuracy gate is met only with every candidate node kept in float (drop {steps[-1]['drop']:.4f} "
            f"<= max_drop {max_drop:g}): nothing would be int8; allow a larger drop, calibrate on data closer to "
            f"the evaluation data, or keep the float model",
            float_accuracy=float_accuracy, best_accuracy=max(s["accuracy"] for s in steps), max_drop=max_drop,
            steps=steps)
    if found is not None:
        gate["kept_in_float"] = list(found[1])
        return found[0], found[1], gate
    best = max(steps, key=lambda s: s["accuracy"])
    measured = "; ".join(f"kept in float {len(s['excluded'])} node(s) ({', '.join(s['excluded'][:3]) or 'none'}"
                         f"{', ...' if len(s['excluded']) > 3 else ''}): drop {s['drop']:.4f}" for s in steps)
    raise QuantizationError(
        f"no set of float nodes meets the accuracy gate: float accuracy {float_accuracy:.4f}, best quantized "
        f"{best['accuracy']:.4f} (drop {best['drop']:.4f}) > max_drop {max_drop:g}; measured: {measured}",
        float_accuracy=float_accuracy, best_accuracy=best["accuracy"], max_drop=max_drop, steps=steps,
    )


def _rank(trial: Callable, base: tuple[str, ...], groups: list[tuple[str, ...]], ranking: list, steps: list,
          max_drop: float, prepared: Path) -> tuple[bytes, tuple[str, ...]] | None:
    """Each group alone, ranked; then the groups kept in float cumulatively in ranking order."""
    op_types = {n.name: n.op_type for n in onnx.load(str(prepared)).graph.node}
    trials = {}
    for group in groups:
        trials[group] = trial([*base, *group])
        ranking.append({"node": group[0], "nodes": list(group), "op_type": op_types.get(group[0], "?"),
                        **{k: trials[group][1][k] for k in ("accuracy", "drop", "output_error")}})
    ranking.sort(key=lambda r: (-r["accuracy"], r["output_error"]))
    excluded = list(base)
    for index, entry in enumerate(ranking):
        excluded.extend(entry["nodes"])
        model, step = trials[tuple(entry["nodes"])] if index == 0 else trial(excluded)
        steps.append(step)
        log.info("quantize gate: %d node(s) kept in float -> %.4f (drop %.4f)", len(excluded), step["accuracy"],
                 step["drop"])
        if step["drop"] <= max_drop + EPSILON:
            return model, tuple(excluded)
    return None


def _sensitivity(trial: Callable, base: tuple[str, ...], groups: list[tuple[str, ...]], ranking: list,
                 prepared: Path) -> list[tuple[str, ...]]:
    """The groups, most sensitive first: each group is the only one quantized in a trial, and scored by the
    mean KL divergence of that trial's softmax from the float model's over the first SENSITIVITY_ROWS
    evaluation rows (a continuous score: every row counts, not just the rows whose top-1 flips; the
    ladder then decides on every row)."""
    op_types = {n.name: n.op_type for n in onnx.load(str(prepared)).graph.node}
    everything = [n for g in groups for n in g]
    for group in groups:
        alone = set(group)
        _, record = trial([*base, *(n for n in everything if n not in alone)], rows=SENSITIVITY_ROWS)
        ranking.append({"node": group[0], "nodes": list(group), "op_type": op_types.get(group[0], "?"),
                        **{k: record[k] for k in ("divergence", "accuracy", "output_error")}})
        log.info("quantize gate: only %s int8 -> divergence %.3g, accuracy %.4f", group[0], record["divergence"],
                 record["accuracy"])
    ranking.sort(key=lambda r: -r["divergence"])
    return [tuple(r["nodes"]) for r in ranking]


def _within_budget(groups: list[tuple[str, ...]], ranking: list, weights: dict[str, int]) -> list[tuple[str, ...]]:
    """The ranked groups reordered by divergence per weight, cut where the float weights would pass
    FLOAT_WEIGHT_BUDGET of the model's (a group that does not fit is skipped; smaller ones may still)."""
    total = sum(weights.values()) or 1
    size = {g: sum(weights.get(n, 0) for n in g) for g in groups}
    score = {tuple(r["nodes"]): r["divergence"] for r in ranking}
    for entry in ranking:
        entry["weights"] = size[tuple(entry["nodes"])]
    chosen, used = [], 0
    for group in sorted(groups, key=lambda g: -score[g] / max(size[g], 1)):
        if used + size[group] <= FLOAT_WEIGHT_BUDGET * total:
            chosen.append(group)
            used += size[group]
    return chosen


def _wide(trial: Callable, base: tuple[str, ...], groups: list[tuple[str, ...]], steps: list,
          max_drop: float) -> tuple[bytes, tuple[str, ...]] | None:
    """"prefix16": every node quantized with 16-bit activations, then the prefix ladder with them."""
    model, step = trial(base, wide=True)
    steps.append({**step, "float_groups": 0, "activations": WIDE_ACTIVATIONS})
    log.info("quantize gate: 16-bit activations -> %.4f (drop %.4f)", step["accuracy"], step["drop"])
    if step["drop"] <= max_drop + EPSILON:
        return model, base
    return _ladder(lambda excluded: trial(excluded, wide=True), base, groups, steps, max_drop,
                   {"activations": WIDE_ACTIVATIONS})


def _ladder(trial: Callable, base: tuple[str, ...], groups: list[tuple[str, ...]], steps: list,
            max_drop: float, note: dict | None = None) -> tuple[bytes, tuple[str, ...]] | None:
    """The first k groups (in graph order for "prefix", most sensitive first for "sensitivity") kept in
    float, k climbing the ladder 1, 2, 3, 4, 6, 8, 11, 16,
    ... (about x1.4 a step) up to all but one group: the first k that meets the gate wins. Not a
    bisection: the measured drop is not monotonic in k (EfficientNet-Lite0, 200 validation crops:
    k=25 agrees on 0.96, k=38 on 0.94), so bisection wandered to k=48 of 50 where k=11 met the gate."""
    def head(k: int) -> list[str]:
        return [*base, *(n for g in groups[:k] for n in g)]

    for k in prefix_ladder(len(groups)):
        model, step = trial(head(k))
        steps.append({**step, "float_groups": k, **(note or {})})
        log.info("quantize gate: the first %d of %d groups in float -> %.4f (drop %.4f)", k, len(groups),
                 step["accuracy"], step["drop"])
        if step["drop"] <= max_drop + EPSILON:
            return model, tuple(head(k))
    return None


def divergence(reference: np.ndarray, scores: np.ndarray) -> float:
    """Mean KL(softmax(reference) || softmax(scores)) over the rows (first output's last axis as classes)."""
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64).reshape(len(x), -1)
        shifted = x - x.max(axis=1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))

    p_log, q_log = log_softmax(reference), log_softmax(scores)
    return float(np.mean(np.sum(np.exp(p_log) * (p_log - q_log), axis=1)))


def prefix_ladder(count: int) -> list[int]:
    """1, 2, 3, 4, 6, 8, 11, 16, 22, ... (each about 1.4 times the last), then count - 1 and count."""
    ladder, k = [], 1
    while k < count - 1:
        ladder.append(k)
        k = max(k + 1, round(k * 1.4))
    return [*ladder, *(k for k in (count - 1, count) if k >= 1 and k not in ladder)]


def node_groups(model_path: Path, given: Sequence[str | Sequence[str]] | None = None) -> list[tuple[str, ...]]:
    """The gate's candidates: the caller's (`given`: a node name, or a list kept in float together), else,
    in graph order, each node with a weight together with the nodes
    that follow it up to the next one (its activation, a residual Add, ...). Kept in float as one, so a
    float convolution is not left between a DequantizeLinear and a QuantizeLinear (onnxruntime's
    WeightBiasQuantization would quantize its float weight per tensor when the session loads)."""
    if given is not None:
        return [(c,) if isinstance(c, str) else tuple(c) for c in given]
    graph = onnx.load(str(model_path)).graph
    weighted = set(weighted_nodes(model_path))
    groups: list[list[str]] = []
    for node in graph.node:
        if node.name in weighted or not groups:
            groups.append([node.name])
        else:
            groups[-1].append(node.name)
    if groups and not any(n in weighted for n in groups[0]):  # nodes before the first weight ride with it
        head = groups.pop(0)
        if groups:
            groups[0] = [*head, *groups[0]]
    return [tuple(g) for g in groups if any(n in weighted for n in g)]


def weight_counts(model_path: Path) -> dict[str, int]:
    """Each weighted node's number of weights (its float initializers of rank >= 2)."""
    graph = onnx.load(str(model_path)).graph
    sizes = {t.name: int(np.prod(t.dims)) for t in graph.initializer
             if len(t.dims) >= 2 and t.data_type == onnx.TensorProto.FLOAT}
    return {n.name: sum(sizes.get(i, 0) for i in n.input) for n in graph.node if any(i in sizes for i in n.input)}


def weighted_nodes(model_path: Path) -> list[str]:
    """Nodes with a weight (a float initializer of rank >= 2): the ones whose quantization costs most."""
    graph = onnx.load(str(model_path)).graph
    weights = {t.name for t in graph.initializer if len(t.dims) >= 2 and t.data_type == onnx.TensorProto.FLOAT}
    return [n.name for n in graph.node if any(i in weights for i in n.input)]
