"""The compression report: every step side by side, and the classes or slices a step hurt.

    steps = [measure("fp32", "model.onnx", x, y, class_names=names, slices=sites),
             measure("int8", "model.int8.onnx", x, y, class_names=names, slices=sites, reference_outputs=fp32)]
    report = build_report(steps)
    for table in render_table(report): console.print(table)
    plot(report, "compression.png")
    attach_to_bundle(report, "bundle/", "keys/release.key")

A StepMeasurement holds what one model is: accuracy overall, per class and per slice (core.metrics),
size of the ONNX file raw and zlib-compressed (level 9: what a download over gzip costs), parameter
count (elements of every initializer but int64 shape constants, so a quantized model counts its
scales and zero points too),
FLOPs per sample (compilers.flops), latency at batch 1 and throughput at batch 32 on this CPU (one
onnxruntime intra-op thread, bounded runs), and the numeric error against the float model's outputs.

Flagging rule (`build_report`): a class or slice g of a step is flagged as hurt disproportionately when

    count_g >= min_count  (in the baseline and the step: too few samples say nothing)
    drop_g  >= min_drop   (an absolute drop in accuracy, e.g. 0.05 = five points)
    drop_g  >  flag_ratio × max(overall drop, 0)

where drop = baseline accuracy - step accuracy. A step that loses 1 point overall and 6 points on
class "3" (ratio 2, min_drop 0.05) flags "3"; a step that improves overall yet loses 6 points on a slice
flags the slice. With the default min_count of 20, one misclassified sample moves a group by at most
5 points, so min_drop 0.05 needs at least one more error than the baseline on the smallest groups and
proportionally more on larger ones.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgefleet.cloud.compress.evaluate import (
    ACCURACY,
    AGREEMENT,
    AGREEMENT_NOTE,
    metric_name,
    onnx_outputs,
    reference_labels,
    session,
    wilson_interval,
)
from edgefleet.compilers.flops import count_flops
from edgefleet.core import bundle as bundle_io
from edgefleet.core.bundle import Bundle
from edgefleet.core.metrics import classification_metrics
from edgefleet.core.signing import DEFAULT_VALIDITY, SigningKey

log = logging.getLogger(__name__)

THROUGHPUT_BATCH = 32
MAX_TIMING_SECONDS = 10.0  # per model and batch size, whatever latency_runs asks
WARMUP_RUNS = 10
GROUPS = ("per_class", "per_slice")


@dataclass(frozen=True)
class StepMeasurement:
    name: str
    metrics: dict  # core.metrics.classification_metrics: accuracy, count, per_class, per_slice
    size_bytes: int
    size_zipped_bytes: int
    parameters: int
    flops: int  # per sample, at batch 1
    latency_ms: dict  # batch 1: p50, p99, mean, runs
    throughput: dict  # batch THROUGHPUT_BATCH: samples_per_s, batch, runs
    numeric_error: dict | None = None  # against the float model: max_abs, argmax_agreement, samples
    metric: str = ACCURACY  # what metrics["accuracy"] is: accuracy, or top-1 agreement with the float model

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StepMeasurement:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class CompressionReport:
    baseline: str
    rule: dict  # flag_ratio, min_drop, min_count
    steps: list[dict] = field(default_factory=list)  # per step: measurement, change, flagged
    metric: str = ACCURACY  # "top1_agreement_with_float" when measured without labels
    note: str = ""  # what the metric is, when it is not accuracy


def measure(
    name: str,
    onnx_model: str | Path | bytes | Bundle,
    inputs: Mapping[str, np.ndarray] | np.ndarray,
    labels: np.ndarray | None,
    *,
    class_names: Sequence[str] | None = None,
    slices: Mapping[str, np.ndarray] | None = None,
    reference_outputs: np.ndarray | None = None,
    postprocess: str = "softmax",
    latency_runs: int = 200,
    throughput_runs: int = 30,
) -> StepMeasurement:
    """Measures one model on the evaluation data. reference_outputs: the float model's first output on
    the same inputs (e.g. evaluate.onnx_outputs of the baseline), for the numeric error. labels None:
    the float model's top-1 classes (from reference_outputs) are the labels, so "accuracy" is top-1
    agreement with the float model and the measurement's metric says so."""
    if labels is None and reference_outputs is None:
        raise ValueError("measure without labels needs reference_outputs (the float model's outputs)")
    data = _model_bytes(onnx_model)
    proto = onnx.load_from_string(data)
    sess = session(data, threads=1)
    if isinstance(inputs, np.ndarray):
        inputs = {sess.get_inputs()[0].name: inputs}
    outputs = onnx_outputs(sess, inputs)
    metric = metric_name(labels)
    if labels is None:
        labels = reference_labels(reference_outputs, postprocess)
    metrics = classification_metrics(outputs, labels, postprocess, class_names, slices)
    numeric = _numeric_error(outputs, reference_outputs) if reference_outputs is not None else None
    step = StepMeasurement(
        name=name,
        metrics=metrics,
        size_bytes=len(data),
        size_zipped_bytes=len(zlib.compress(data, 9)),
        parameters=_parameters(proto),
        flops=int(count_flops(proto, batch=1)["total"]),
        latency_ms=_latency(sess, _feed(inputs, 1), latency_runs),
        throughput=_throughput(sess, _feed(inputs, THROUGHPUT_BATCH), throughput_runs),
        numeric_error=numeric,
        metric=metric,
    )
    log.info("measured %s: accuracy %.4f, %d bytes, p50 %.3f ms", name, metrics["accuracy"], len(data),
             step.latency_ms["p50"])
    return step


def build_report(measurements: Sequence[StepMeasurement], baseline_index: int = 0, *, flag_ratio: float = 2.0,
                 min_drop: float = 0.05, min_count: int = 20) -> CompressionReport:
    """Each step against the baseline: changes overall and per class and slice, and the flagged groups
    (see the module docstring for the rule)."""
    if not measurements:
        raise ValueError("build_report needs at least one measurement")
    base = measurements[baseline_index]
    rule = {"flag_ratio": flag_ratio, "min_drop": min_drop, "min_count": min_count}
    steps = []
    for step in measurements:
        change, flagged = _compare(base.metrics, step.metrics, rule)
        count = int(step.metrics.get("count", 0))
        interval = wilson_interval(round(step.metrics["accuracy"] * count), count)
        steps.append({"measurement": asdict(step), "is_baseline": step is base, "change": change, "flagged": flagged,
                      "accuracy_ci95": list(interval)})
        for item in flagged:
            log.warning("step %s hurts %s %r: accuracy %.3f -> %.3f (overall change %+.3f)", step.name, item["kind"],
                        item["group"], item["baseline"], item["accuracy"], change["accuracy"]["absolute"])
    metrics = {m.metric for m in measurements}
    if len(metrics) > 1:
        raise ValueError(f"the measurements mix metrics ({', '.join(sorted(metrics))}): measure all with labels or "
                         f"all without")
    return CompressionReport(base.name, rule, steps, base.metric, AGREEMENT_NOTE if base.metric == AGREEMENT else "")


def to_json(report: CompressionReport) -> dict:
    return asdict(report)


def from_json(data: Mapping[str, Any]) -> CompressionReport:
    return CompressionReport(str(data["baseline"]), dict(data["rule"]), [dict(s) for s in data["steps"]],
                             str(data.get("metric", ACCURACY)), str(data.get("note", "")))


def measurements(report: CompressionReport) -> list[StepMeasurement]:
    return [StepMeasurement.from_dict(s["measurement"]) for s in report.steps]


# comparison -------------------------------------------------------------------------------------------------
def _compare(base: dict, step: dict, rule: dict) -> tuple[dict, list[dict]]:
    overall = _delta(base["accuracy"], step["accuracy"])
    overall_drop = max(-overall["absolute"], 0.0)
    change: dict[str, Any] = {"accuracy": overall}
    flagged = []
    for kind in GROUPS:
        change[kind] = {}
        for group, then in base.get(kind, {}).items():
            now = step.get(kind, {}).get(group)
            if now is None:
                continue
            delta = _delta(then["accuracy"], now["accuracy"])
            drop = -delta["absolute"]
            enough = min(then["count"], now["count"]) >= rule["min_count"]
            hurt = enough and drop >= rule["min_drop"] and drop > rule["flag_ratio"] * overall_drop
            change[kind][group] = {**delta, "count": now["count"], "flagged": bool(hurt)}
            if hurt:
                flagged.append({"kind": kind.removeprefix("per_"), "group": group, "baseline": then["accuracy"],
                                "accuracy": now["accuracy"], "drop": drop, "count": now["count"],
                                "ratio_to_overall": drop / overall_drop if overall_drop > 0 else None})
    return change, flagged


def _delta(then: float, now: float) -> dict:
    absolute = now - then
    return {"baseline": then, "accuracy": now, "absolute": absolute,
            "relative": absolute / then if then > 0 else None}


# measurement helpers ----------------------------------------------------------------------------------------
def _model_bytes(model: str | Path | bytes | Bundle) -> bytes:
    if isinstance(model, bytes):
        return model
    if isinstance(model, Bundle):
        artifact = next((a for a in model.artifacts if a.get("format") == "onnx"), None)
        if artifact is None:
            raise ValueError(f"bundle {model.root} has no ONNX artifact")
        return model.path(artifact["path"]).read_bytes()
    return Path(model).read_bytes()


def _parameters(model: onnx.ModelProto) -> int:
    """Elements of every initializer except int64 ones (shape constants such as Reshape targets)."""
    return sum(math.prod(t.dims) for t in model.graph.initializer if t.data_type != onnx.TensorProto.INT64)


def _numeric_error(outputs: np.ndarray, reference: np.ndarray) -> dict:
    reference = np.asarray(reference)
    if reference.shape != outputs.shape:
        raise ValueError(f"reference outputs have shape {reference.shape}, the model's {outputs.shape}")
    diff = np.abs(outputs.astype(np.float64) - reference.astype(np.float64))
    agreement = float((outputs.argmax(axis=1) == reference.argmax(axis=1)).mean()) if outputs.ndim == 2 else None
    return {"max_abs": float(diff.max()) if diff.size else 0.0, "mean_abs": float(diff.mean()) if diff.size else 0.0,
            "argmax_agreement": agreement, "samples": int(len(outputs))}


def _feed(inputs: Mapping[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """The first rows of the evaluation data, repeated to `batch` rows if there are fewer."""
    return {k: np.ascontiguousarray(np.take(v, np.arange(batch) % len(v), axis=0)) for k, v in inputs.items()}


def _timed_runs(sess: Any, feed: dict, runs: int) -> np.ndarray:
    """Seconds per call, after a warm-up; stops early at MAX_TIMING_SECONDS."""
    for _ in range(WARMUP_RUNS):
        sess.run(None, feed)
    times, deadline = [], time.perf_counter() + MAX_TIMING_SECONDS
    for _ in range(max(runs, 1)):
        t0 = time.perf_counter()
        sess.run(None, feed)
        t1 = time.perf_counter()
        times.append(t1 - t0)
        if t1 > deadline:
            log.info("timing stopped at %.0f s after %d of %d runs", MAX_TIMING_SECONDS, len(times), runs)
            break
    return np.asarray(times)


def _latency(sess: Any, feed: dict, runs: int) -> dict:
    ms = _timed_runs(sess, feed, runs) * 1e3
    p50, p99 = np.percentile(ms, [50, 99])
    return {"p50": float(p50), "p99": float(p99), "mean": float(ms.mean()), "runs": int(len(ms)), "batch": 1}


def _throughput(sess: Any, feed: dict, runs: int) -> dict:
    seconds = _timed_runs(sess, feed, runs)
    batch = len(next(iter(feed.values())))
    return {"samples_per_s": float(batch * len(seconds) / seconds.sum()), "batch": batch, "runs": int(len(seconds))}


# output: terminal, picture, bundle ---------------------------------------------------------------------------
def render_table(report: CompressionReport) -> list:
    """Rich tables: one row per step (size, speed, accuracy), then accuracy per class and slice with the
    change against the baseline; flagged cells are red and marked with "!"."""
    tables = [_summary_table(report)]
    tables += [_group_table(report, kind) for kind in GROUPS if any(s["change"].get(kind) for s in report.steps)]
    return tables


def plot(report: CompressionReport, path: str | Path) -> Path:
    """A PNG: accuracy against zipped size per step, and the change of accuracy per class and slice
    for every step against the baseline, flagged groups highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    groups = _plot_groups(report)
    others = [s for s in report.steps if not s["is_baseline"]]
    figure, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5), gridspec_kw={"width_ratios": [1, 1.7]})
    _draw_tradeoff(left, report)
    _draw_changes(right, report, others, groups)
    figure.suptitle(f"compression report: every step against {report.baseline!r}", fontsize=13)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def attach_to_bundle(report: CompressionReport, bundle_dir: str | Path, key: SigningKey | str | Path, *,
                     step: str | None = None, validity: timedelta = DEFAULT_VALIDITY) -> Bundle:
    """Puts the report into the bundle's manifest (metrics.compression) and its model card (evaluation
    by slice of `step`, default the last step), rewrites the manifest and signs it with `key`."""
    root = Path(bundle_dir)
    signing_key = key if isinstance(key, SigningKey) else SigningKey.load(Path(key))
    chosen = report.steps[-1] if step is None else next((s for s in report.steps
                                                          if s["measurement"]["name"] == step), None)
    if chosen is None:
        raise ValueError(f"no step named {step!r} in the report")
    manifest = bundle_io.read_manifest(root)
    manifest.setdefault("metrics", {})["compression"] = to_json(report)
    card = dict(manifest.get("model_card") or {})
    card["evaluation_by_slice"] = _card_section(report, chosen)
    manifest["model_card"] = card
    bundle_io.write_manifest(root, manifest)
    bundle_io.sign(root, signing_key, validity)
    log.info("attached the compression report (%d steps) to %s, signed by %s", len(report.steps), root,
             signing_key.key_id)
    return Bundle.open(root)


def _card_section(report: CompressionReport, chosen: dict) -> dict:
    metrics = chosen["measurement"]["metrics"]
    section = {
        "model": chosen["measurement"]["name"],
        "compared_with": report.baseline,
        "accuracy": metrics["accuracy"],
        "accuracy_change": chosen["change"]["accuracy"]["absolute"],
        "count": metrics["count"],
        **({"accuracy_ci95": chosen["accuracy_ci95"]} if "accuracy_ci95" in chosen else {}),
        "flag_rule": report.rule,
        "flagged": chosen["flagged"],
    }
    for kind in GROUPS:
        if kind in metrics:
            section[kind] = {group: {**values, "change": chosen["change"][kind].get(group, {}).get("absolute")}
                             for group, values in metrics[kind].items()}
    return section


# tables and plot --------------------------------------------------------------------------------------------
def _size(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def _summary_table(report: CompressionReport) -> Any:
    from rich.table import Table

    caption = "* baseline" + (f"; {report.note}" if report.note else "")
    table = Table(title=f"compression steps against {report.baseline!r}", caption=caption)
    metric = "accuracy" if report.metric == ACCURACY else "top-1 agreement"
    for header in ("step", metric, "95% interval", "Δ", "size", "zipped", "params", "MFLOPs", "p50 ms", "p99 ms",
                   f"samples/s @{THROUGHPUT_BATCH}", "max |err|", "argmax =", "flagged"):
        table.add_column(header, justify="left" if header in ("step", "flagged") else "right")
    for step in report.steps:
        m, change = step["measurement"], step["change"]["accuracy"]
        err = m["numeric_error"] or {}
        agreement = err.get("argmax_agreement")
        table.add_row(
            m["name"] + (" *" if step["is_baseline"] else ""), f"{m['metrics']['accuracy']:.4f}",
            "{:.3f}-{:.3f}".format(*step["accuracy_ci95"]) if "accuracy_ci95" in step else "-",
            "" if step["is_baseline"] else f"{change['absolute'] * 100:+.2f} pt", _size(m["size_bytes"]),
            _size(m["size_zipped_bytes"]), f"{m['parameters']:,}", f"{m['flops'] / 1e6:.3f}",
            f"{m['latency_ms']['p50']:.3f}", f"{m['latency_ms']['p99']:.3f}",
            f"{m['throughput']['samples_per_s']:,.0f}", f"{err['max_abs']:.2g}" if err else "-",
            f"{agreement:.4f}" if agreement is not None else "-",
            ", ".join(f"[red]{f['group']}[/red]" for f in step["flagged"]) or "-",
        )
    return table


def _group_table(report: CompressionReport, kind: str) -> Any:
    from rich.table import Table

    rule = report.rule
    table = Table(title=f"accuracy {kind.replace('_', ' ')} (change vs {report.baseline!r}, points)",
                  caption=f"! flagged: drop >= {rule['min_drop'] * 100:g} pt and > {rule['flag_ratio']:g}× the "
                          f"overall drop, with >= {rule['min_count']} samples")
    table.add_column(kind.removeprefix("per_"), justify="left")
    table.add_column("n", justify="right")
    for step in report.steps:
        table.add_column(step["measurement"]["name"], justify="right")
    base = next(s for s in report.steps if s["is_baseline"])
    for group, values in base["measurement"]["metrics"].get(kind, {}).items():
        cells = []
        for step in report.steps:
            change = step["change"].get(kind, {}).get(group)
            if step["is_baseline"] or change is None:
                accuracy = step["measurement"]["metrics"].get(kind, {}).get(group, {}).get("accuracy")
                cells.append(f"{accuracy:.3f}" if accuracy is not None else "-")
            else:
                cell = f"{change['accuracy']:.3f} ({change['absolute'] * 100:+.1f})"
                cells.append(f"[bold red]{cell} ![/bold red]" if change["flagged"] else cell)
        table.add_row(group, str(values["count"]), *cells)
    return table


def _plot_groups(report: CompressionReport) -> list[tuple[str, str]]:
    base = next(s for s in report.steps if s["is_baseline"])["measurement"]["metrics"]
    return [(kind, group) for kind in GROUPS for group in base.get(kind, {})]


def _draw_tradeoff(axes: Any, report: CompressionReport) -> None:
    for index, step in enumerate(report.steps):
        m = step["measurement"]
        x, y = m["size_zipped_bytes"] / 1024, m["metrics"]["accuracy"] * 100
        colour = "tab:red" if step["flagged"] else "tab:blue"
        axes.scatter([x], [y], s=70, color=colour, marker="s" if step["is_baseline"] else "o", zorder=3)
        axes.annotate(m["name"], (x, y), textcoords="offset points", xytext=(6, 6 if index % 2 else -14), fontsize=9)
    axes.set_xlabel("model size, zlib-compressed (KiB)")
    axes.set_ylabel("accuracy (%)")
    axes.set_title("size against accuracy (red: step with flagged classes/slices)", fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.margins(0.2)


def _draw_changes(axes: Any, report: CompressionReport, steps: list[dict], groups: list[tuple[str, str]]) -> None:
    if not steps or not groups:
        axes.text(0.5, 0.5, "no step to compare", ha="center", va="center", transform=axes.transAxes)
        axes.set_axis_off()
        return
    width = 0.8 / len(steps)
    colours = [f"C{i}" for i in range(len(steps))]
    positions = np.arange(len(groups))
    for index, step in enumerate(steps):
        changes = [step["change"][kind].get(group) for kind, group in groups]
        heights = [c["absolute"] * 100 if c else 0.0 for c in changes]
        flagged = [bool(c and c["flagged"]) for c in changes]
        offsets = positions - 0.4 + width * (index + 0.5)
        bars = axes.bar(offsets, heights, width, color=colours[index], label=step["measurement"]["name"])
        for bar, hurt in zip(bars, flagged, strict=True):
            if hurt:
                bar.set_edgecolor("red")
                bar.set_linewidth(2.5)
                bar.set_hatch("//")
                axes.annotate("flagged", (bar.get_x() + bar.get_width() / 2, bar.get_height()), color="red",
                              ha="center", va="top", xytext=(0, -4), textcoords="offset points", fontsize=8,
                              fontweight="bold")
        overall = step["change"]["accuracy"]["absolute"] * 100
        axes.axhline(overall, color=colours[index], linestyle="--", linewidth=1, alpha=0.8)
    axes.axhline(0, color="black", linewidth=0.8)
    labels = [group if kind == "per_class" else f"slice\n{group}" for kind, group in groups]
    classes = sum(1 for kind, _ in groups if kind == "per_class")
    if 0 < classes < len(groups):
        axes.axvline(classes - 0.5, color="grey", linewidth=1, linestyle=":")
    crowded = len(groups) > 12
    axes.set_xticks(positions, labels, rotation=45 if crowded else 0, ha="right" if crowded else "center")
    axes.set_xlabel("class / slice")
    axes.set_ylabel("accuracy change vs baseline (points)")
    axes.set_title("accuracy change per class and slice (dashed: overall change; red hatched: flagged)", fontsize=10)
    axes.legend(fontsize=8, loc="lower left")
    axes.grid(True, axis="y", alpha=0.3)
