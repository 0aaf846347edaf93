"""The reference profile: how the model's inputs and outputs looked on the reference (training) data.

Telemetry on the device bins live traffic on these same edges, so device and fleet histograms merge by
adding counts and compare with the reference exactly (PSI, Jensen-Shannon, chi-square).

Features: a tabular input (batch, F) with at most ELEMENT_LIMIT columns is profiled column by column;
an input with channels (batch, C, ...) such as an image or audio is profiled through taps, the mean and
std of each channel, which is cheap enough to update on every request and catches brightness, contrast
and noise shifts.
An input whose batch axis is not axis 0 (a sequence [steps, batch, features]) is profiled with its batch
axis moved first. Which inputs are profiled is declared in the manifest (interface `profiled_inputs`,
compilers/bundle_writer.py): by default every input with a batch axis that is not a recurrent state and
whose features are a fixed set. Integer inputs are binned like floats when their columns are fixed
(category codes, counts); token ids on a symbolic tokens axis are declared unprofiled, with the reason
under the profile's "unprofiled", because their columns change with every request.
`feature_names` names a tabular input's columns (`income` rather than `x[3]`), so drift says which
column moved.

Outputs: per-task summaries under "outputs" (core/output_summary.py, the same function on the device),
and for a classifier the predicted-class counts and the confidence histogram.

Bins: `bins - 1` interior edges at the reference quantiles, so each bin holds about the same share of
the reference data; a value v lands in bin searchsorted(edges, v, side="right"); one extra column
counts NaN. Duplicate edges (from discrete values) are kept and give empty bins. Input features also get
the reference's range and tail edges beyond it, and the facts that turn counts into distances
(core/magnitude.py), so drift can tell how far values moved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from edgefleet.core.magnitude import magnitude_facts, range_edges
from edgefleet.core.schema import TensorSpec, batch_axis, samples_first

if TYPE_CHECKING:
    from edgefleet.core.output_summary import OutputSummary

ELEMENT_LIMIT = 256
_histogram_update = None  # cpp_ext.histogram_update, once bin_counts has run
DEFAULT_BINS = 10


def samples_first_spec(spec: TensorSpec) -> TensorSpec:
    """The spec with its batch axis moved to axis 0 (as `samples_first` moves the data)."""
    axis = batch_axis(spec)
    if not axis:
        return spec
    shape = list(spec.shape)
    return TensorSpec(spec.name, spec.dtype, (shape.pop(axis), *shape))


def feature_kind(spec: TensorSpec) -> str:
    if len(spec.shape) >= 3:
        return "channel_stats"
    per_sample = int(np.prod([d for d in spec.shape[1:] if isinstance(d, int)] or [1]))
    if per_sample > ELEMENT_LIMIT:
        raise ValueError(f"input {spec.name}: {per_sample} columns is too many to profile one by one "
                         f"(limit {ELEMENT_LIMIT}); reshape it to (batch, channels, ...) to profile channel taps")
    return "elements"


def extract_features(x: np.ndarray, kind: str) -> np.ndarray:
    """(N, ...) input -> (N, F) float64 features, the same function on the device and at export."""
    n = x.shape[0]
    if kind == "elements":
        return np.asarray(x, dtype=np.float64).reshape(n, -1)
    if kind == "channel_stats":
        flat = np.asarray(x, dtype=np.float64).reshape(n, x.shape[1], -1)
        return np.concatenate([flat.mean(axis=2), flat.std(axis=2)], axis=1)
    raise ValueError(f"unknown feature kind {kind!r}")


def feature_names(spec: TensorSpec, kind: str, count: int) -> list[str]:
    if kind == "channel_stats":
        channels = count // 2
        return [f"{spec.name}.c{c}.mean" for c in range(channels)] + [f"{spec.name}.c{c}.std" for c in range(channels)]
    return [f"{spec.name}[{i}]" for i in range(count)]


def quantile_edges(values: np.ndarray, bins: int = DEFAULT_BINS) -> np.ndarray:
    """(N, F) -> (F, bins - 1) interior edges at the quantiles of each feature (NaN ignored)."""
    qs = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    finite = np.where(np.isfinite(values), values, np.nan)
    edges = np.nanquantile(finite, qs, axis=0).T if len(values) else np.zeros((values.shape[1], bins - 1))
    return np.ascontiguousarray(np.nan_to_num(edges, nan=0.0), dtype=np.float64)


def reference_range(values: np.ndarray) -> dict:
    """{"min": [...], "max": [...]}: each feature's smallest and largest finite reference value (None for a
    feature without one). The device counts the values outside this range as a data-quality signal."""
    finite = np.isfinite(values)
    has = finite.any(axis=0) if len(values) else np.zeros(values.shape[1], bool)
    low = np.where(finite, values, np.inf).min(axis=0, initial=np.inf)
    high = np.where(finite, values, -np.inf).max(axis=0, initial=-np.inf)
    return {"min": [float(v) if h else None for v, h in zip(low, has, strict=True)],
            "max": [float(v) if h else None for v, h in zip(high, has, strict=True)]}


def bin_counts(values: np.ndarray, edges: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(N, F) values on (F, E) edges -> (F, E + 2) counts; the last column counts NaN. With `out` (an
    int64 (F, E + 2) C-contiguous array) the counts are added to it in place and it is returned."""
    global _histogram_update
    if _histogram_update is None:  # the native module loads on first use, once (this runs per request)
        from edgefleet.cpp_ext import histogram_update

        _histogram_update = histogram_update
    counts = np.zeros((edges.shape[0], edges.shape[1] + 2), dtype=np.int64) if out is None else out
    if values.dtype.char not in "fd" or not values.flags.c_contiguous:  # float32 is binned exactly as is
        values = np.ascontiguousarray(values, dtype=np.float64)
    _histogram_update(counts, values, edges)
    return counts


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def class_confidence(scores: np.ndarray, postprocess: str) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class and its probability from a (N, C) output (logits or probabilities)."""
    probs = softmax(scores.astype(np.float64)) if postprocess == "softmax" else scores.astype(np.float64)
    return probs.argmax(axis=1), probs.max(axis=1)


def build_profile(
    inputs: dict[str, np.ndarray],
    specs: list[TensorSpec],
    scores: np.ndarray | None,
    *,
    postprocess: str = "softmax",
    class_names: list[str] | None = None,
    bins: int = DEFAULT_BINS,
    count: int | None = None,
    names: Mapping[str, Sequence[str]] | None = None,
    summaries: Sequence[OutputSummary] = (),
    output_chunks: Sequence[Mapping[str, np.ndarray]] = (),
) -> dict:
    """The reference profile of a dataset: histograms of the features of the inputs in `specs` (`names`:
    input -> column names), the output summaries planned in `summaries` over the reference outputs (given
    in chunks of samples, as they were run) and, for classifiers, the predicted-class counts and the
    confidence histogram."""
    features = []
    for spec in specs:
        kind = feature_kind(samples_first_spec(spec))
        values = extract_features(samples_first(spec, inputs[spec.name]), kind)
        edges = range_edges(values, quantile_edges(values, bins))  # tail bins: how far values move
        given = (names or {}).get(spec.name)
        features.append(
            {
                "input": spec.name,
                "kind": kind,
                "names": list(given) if given is not None else feature_names(spec, kind, values.shape[1]),
                "edges": edges.tolist(),
                "counts": bin_counts(values, edges).tolist(),
                **reference_range(values),
                "magnitude": magnitude_facts(values, edges),
            }
        )
    if count is None:
        count = int(len(next(iter(inputs.values()))))
    profile: dict = {"count": int(count), "bins": bins, "features": features}
    if summaries and output_chunks:
        profile["outputs"] = _output_profile(summaries, output_chunks, bins)
    if scores is not None and scores.ndim == 2 and scores.shape[1] >= 2:
        predicted, confidence = class_confidence(scores, postprocess)
        classes = class_names or [str(i) for i in range(scores.shape[1])]
        conf_edges = quantile_edges(confidence[:, None], bins)
        profile["predictions"] = {
            "classes": classes,
            "counts": np.bincount(predicted, minlength=len(classes)).tolist(),
        }
        profile["confidence"] = {
            "edges": conf_edges[0].tolist(),
            "counts": bin_counts(confidence[:, None], conf_edges)[0].tolist(),
        }
    return profile


def _output_profile(summaries: Sequence[OutputSummary], chunks: Sequence[Mapping[str, np.ndarray]],
                    bins: int) -> list[dict]:
    """Edges at the quantiles of each summary row over all chunks, then counts from summarise_outputs, the
    function the device runs on every request, chunk by chunk."""
    from edgefleet.core.output_summary import summarise_outputs, summary_columns

    placed = []
    for summary in summaries:
        blocks = [summary_columns(summary, chunk[summary.output]) for chunk in chunks]
        rows = [quantile_edges(np.concatenate([b[i] for b in blocks]), bins) for i in range(len(blocks[0]))]
        placed.append(summary.with_edges(np.concatenate(rows, axis=0)))
    totals = [np.zeros((len(s.names), bins + 1), dtype=np.int64) for s in placed]
    for chunk in chunks:
        for total, counts in zip(totals, summarise_outputs(placed, chunk), strict=True):
            total += counts
    return [s.to_profile(total) for s, total in zip(placed, totals, strict=True)]
