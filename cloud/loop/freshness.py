"""The data-freshness report: how the serving model does on captured data by the data's age, which answers
"how often should this model be updated".

    report = freshness(serving_dir, "dataset/dataset.npz", trust=store,
                       options=FreshnessOptions(bucket_s=86400, min_accuracy=0.9))
    report["buckets"], report["trend"], report["verdict"]["text"]

The serving bundle runs through the edge runtime's own Predictor (offline_eval.ServedModel) on labelled
captured rows: the .npz of `edgefleet dataset export` (inputs, `y`, and `captured_at`, each row's capture
time in Unix seconds). A row's age is its capture time minus the time the model was trained (by default
the bundle's `created_at`). Rows are grouped in age buckets of `bucket_s` seconds, each reported with its
accuracy and Wilson interval (mean absolute error with a bootstrap interval for regression) and its count.

The trend is the least-squares slope of the per-row score (correct 1/0, or absolute error) on age in days,
over rows captured after training, with a percentile bootstrap interval (rows resampled). It is "falling"
only when the whole interval says worse (accuracy down, error up); then, given a threshold (a minimum
accuracy or a maximum error), the fitted line says when it is crossed, with the interval of that age
from the same resamples (its upper end may be "never"). Fewer than `min_rows` rows in each of two
buckets after training is "too little data": no trend is claimed. Rows captured before training are
shown in their own (negative) buckets and left out of the trend: the model may have seen them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet.cloud.loop.eval_data import class_labels, read_data, regression_targets
from edgefleet.cloud.loop.eval_stats import LEVEL, RESAMPLES, ROW_CHUNK, paired_interval, proportion
from edgefleet.cloud.loop.offline_eval import ServedModel
from edgefleet.core.canonical import format_time, parse_time, utc_now
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.npz import load_npz
from edgefleet.core.signing import TrustStore

DAY = 86400.0
TIMES = "captured_at"  # the .npz key of each row's capture time (cloud/dataset_store.py)
REPORT_SCHEMA = 1
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class FreshnessOptions:
    bucket_s: float = DAY
    trained_at: float | None = None  # Unix seconds; None: the bundle's created_at
    min_accuracy: float | None = None  # the threshold of a classifier
    max_mae: float | None = None  # the threshold of a regression model
    min_rows: int = 20
    backends: tuple[str, ...] | None = None
    seed: int = 0


def parse_bucket(text: str) -> float:
    """'1d', '6h', '30m', '90s', '2w' or plain seconds, above zero; one message otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    seconds = float(match[1]) * _UNITS[match[2] or "s"] if match else 0.0
    if seconds <= 0:
        raise EdgefleetError(f"--bucket: expected a duration above zero like 1d, 6h, 30m or 90s, got {text!r}")
    return seconds


def dataset_file(path: Path) -> Path:
    """A dataset directory (its dataset.npz) or an .npz file."""
    path = Path(path)
    if path.is_dir():
        path = path / "dataset.npz"
    if not path.is_file():
        raise EdgefleetError(f"--dataset {path}: no such file (give the directory of `edgefleet dataset export` "
                             f"or an .npz)")
    return path


def freshness(serving: Path, dataset: Path, *, trust: TrustStore,
              options: FreshnessOptions = FreshnessOptions()) -> dict:  # noqa: B008 - frozen
    """The report (module docstring); EdgefleetError with one message for a bad bundle, file or option."""
    model = ServedModel("serving", Path(serving), trust, options.backends)
    try:
        return _report(model, dataset_file(dataset), options)
    finally:
        model.close()


def _report(model: ServedModel, path: Path, options: FreshnessOptions) -> dict:
    regression = model.task == "regression"
    if regression and options.min_accuracy is not None:
        raise EdgefleetError("--min-accuracy is for a classifier; this is a regression model (use --max-mae)")
    if not regression and options.max_mae is not None:
        raise EdgefleetError("--max-mae is for a regression model; this is a classifier (use --min-accuracy)")
    threshold = options.max_mae if regression else options.min_accuracy
    trained_at = options.trained_at if options.trained_at is not None else _created_at(model)
    data = _dataset_error(lambda: read_data(path, "recent", model.bundle.inputs))
    if data.labels is None:
        raise EdgefleetError(f"--dataset {path} has no labels 'y': the report measures the model on labelled rows "
                             f"(create the dataset with labelled_only)")
    times = _times(path, data.count)
    scores = model.scores(data.inputs)
    if regression:
        targets = _dataset_error(lambda: regression_targets(data, scores.shape[1]))
        per_row = np.abs(scores.astype(np.float64) - targets).mean(axis=1)
    else:
        per_row = (scores.argmax(axis=1) == _dataset_error(lambda: class_labels(data, scores.shape[1])))
        per_row = per_row.astype(np.float64)
    age_s = times - trained_at
    metric = "mean_absolute_error" if regression else "accuracy"
    buckets = _buckets(age_s, per_row, options.bucket_s, regression, options.seed)
    after = age_s >= 0
    trend = _trend(age_s[after] / DAY, per_row[after], buckets, options, threshold, regression)
    return {
        "kind": "freshness", "schema": REPORT_SCHEMA, "created_at": format_time(utc_now()), "task": model.task,
        "metric": metric, "serving": model.describe(), "dataset": str(path), "rows": int(data.count),
        "trained_at": trained_at, "bucket_s": options.bucket_s, "min_rows": options.min_rows, "level": LEVEL,
        "threshold": threshold, "before_training": int((~after).sum()),
        "overall": _group(per_row, regression, options.seed), "buckets": buckets, "trend": trend,
        "verdict": _verdict(trend, metric, threshold),
    }


def _dataset_error(read):  # noqa: ANN001, ANN202 - a reader of eval_data, whose messages name --recent
    """eval_data's messages name its own flag (--recent); this command's is --dataset."""
    try:
        return read()
    except EdgefleetError as err:
        raise EdgefleetError(str(err).replace("--recent ", "--dataset ", 1)) from err


def _created_at(model: ServedModel) -> float:
    text = model.bundle.manifest.get("created_at")
    try:
        return parse_time(text).timestamp()
    except (TypeError, ValueError) as err:
        raise EdgefleetError(f"--serving {model.bundle.root}: its manifest has no readable created_at "
                             f"({text!r}); pass --trained-at") from err


def _times(path: Path, count: int) -> np.ndarray:
    try:
        times = load_npz(path, [TIMES])[TIMES]
    except KeyError:
        raise EdgefleetError(f"--dataset {path} lacks {TIMES!r}, each row's capture time (export the dataset "
                             f"again: `edgefleet dataset export` writes it)") from None
    if times.shape != (count,) or times.dtype.kind not in "iuf" or not np.isfinite(times).all():
        raise EdgefleetError(f"--dataset {path}: {TIMES!r} must hold one finite Unix time per row ({count}); got "
                             f"{times.dtype}{list(times.shape)}")
    return times.astype(np.float64)


def _group(per_row: np.ndarray, regression: bool, seed: int) -> dict:
    if regression:
        return paired_interval(per_row, seed=seed)
    return proportion(int(per_row.sum()), per_row.size)


def _buckets(age_s: np.ndarray, per_row: np.ndarray, bucket_s: float, regression: bool, seed: int) -> list[dict]:
    index = np.floor(age_s / bucket_s).astype(np.int64)
    out = []
    for value in np.unique(index):
        mask = index == value
        out.append({"from_days": value * bucket_s / DAY, "to_days": (value + 1) * bucket_s / DAY,
                    "mean_age_days": float(age_s[mask].mean() / DAY),
                    **_group(per_row[mask], regression, seed)})
    return out


def _fit(t: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares slopes and intercepts of each row of s on the same row of t (2-D, resamples first)."""
    tm, sm = t.mean(axis=1, keepdims=True), s.mean(axis=1, keepdims=True)
    var = ((t - tm) ** 2).mean(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = ((t - tm) * (s - sm)).mean(axis=1) / var
    return slope, sm[:, 0] - slope * tm[:, 0]


def _trend(days: np.ndarray, per_row: np.ndarray, buckets: list[dict], options: FreshnessOptions,
           threshold: float | None, regression: bool) -> dict:
    full = [b for b in buckets if b["from_days"] >= 0 and b["count"] >= options.min_rows]
    base = {"rows": int(days.size), "buckets_used": len(full), "max_age_days": float(days.max()) if days.size else None}
    if len(full) < 2 or np.ptp(days) == 0:
        return {**base, "state": "too little data"}
    slope, intercept = (float(v[0]) for v in _fit(days[None], per_row[None]))
    rng = np.random.default_rng(options.seed)
    n, per_chunk = days.size, max(1, ROW_CHUNK // days.size)
    slopes, intercepts = [], []
    for start in range(0, RESAMPLES, per_chunk):
        draw = rng.integers(0, n, (min(per_chunk, RESAMPLES - start), n))
        a, b = _fit(days[draw], per_row[draw])
        slopes.append(a)
        intercepts.append(b)
    slopes, intercepts = np.concatenate(slopes), np.concatenate(intercepts)
    ok = np.isfinite(slopes)
    slopes, intercepts = slopes[ok], intercepts[ok]
    low, high = (float(v) for v in np.quantile(slopes, [(1 - LEVEL) / 2, (1 + LEVEL) / 2]))
    worse = low > 0 if regression else high < 0
    trend = {**base, "state": "falling" if worse else "not falling", "slope_per_day": slope,
             "slope_ci95": [low, high], "intercept": intercept}
    if worse and threshold is not None:
        trend["crossing_days"], trend["crossing_ci95"] = _crossing(slope, intercept, slopes, intercepts,
                                                                   threshold, regression)
    return trend


def _crossing(slope: float, intercept: float, slopes: np.ndarray, intercepts: np.ndarray, threshold: float,
              regression: bool) -> tuple[float, list]:
    """The age (days) at which the fitted line reaches the threshold (0 if already past), and its interval from
    the resampled lines; a resample not heading for the threshold never crosses (None in the interval)."""
    sign = -1.0 if regression else 1.0  # higher sign * score is better

    def when(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            days = (threshold - b) / a
        return np.where(sign * a < 0, np.maximum(days, 0.0), np.inf)

    point = float(when(np.array([slope]), np.array([intercept]))[0])
    ages = when(slopes, intercepts)
    low = float(np.quantile(ages, (1 - LEVEL) / 2, method="lower"))
    high = float(np.quantile(ages, (1 + LEVEL) / 2, method="higher"))
    return point, [low, None if math.isinf(high) else high]


def _days(value: float) -> str:
    return f"{value:.1f} days" if value < 10 else f"{value:.0f} days"


def _verdict(trend: dict, metric: str, threshold: float | None) -> dict:
    """The answer in plain words, beside the state it comes from."""
    name = "accuracy" if metric == "accuracy" else "mean absolute error"
    unit, scale = (" points", 100.0) if metric == "accuracy" else ("", 1.0)
    limit = "below" if metric == "accuracy" else "above"
    state = trend["state"]
    if state == "too little data":
        text = (f"too little data: {trend['rows']} labelled rows captured after training fill "
                f"{trend['buckets_used']} age bucket(s) with enough rows; the trend needs two or more")
        return {"state": state, "update_every_days": None, "text": text}
    low, high = (abs(v) * scale for v in trend["slope_ci95"])
    oldest = trend["max_age_days"]
    if state == "not falling":
        text = (f"{name} is not falling: {trend['slope_per_day'] * scale:+.2f}{unit} per day (95% interval "
                f"{trend['slope_ci95'][0] * scale:+.2f} to {trend['slope_ci95'][1] * scale:+.2f}) over data up to "
                f"{_days(oldest)} old; freshness gives no reason to update it within that age")
        return {"state": state, "update_every_days": None, "text": text}
    moves = "falls" if metric == "accuracy" else "rises"
    text = (f"{name} {moves} by {abs(trend['slope_per_day']) * scale:.2f}{unit} per day (95% interval "
            f"{min(low, high):.2f} to {max(low, high):.2f})")
    if threshold is None:
        flag = "--min-accuracy" if metric == "accuracy" else "--max-mae"
        return {"state": state, "update_every_days": None, "text": text + f"; pass {flag} to know when it crosses "
                                                                         f"your limit"}
    crossing, (first, last) = trend["crossing_days"], trend["crossing_ci95"]
    if crossing <= 0:
        text += f"; it is already {limit} {threshold:g} on data captured right after training: update it now"
        return {"state": "below threshold", "update_every_days": 0.0, "text": text}
    span = f"{_days(first)} to {_days(last) if last is not None else 'never'}"
    text += (f"; it is expected to fall {limit} {threshold:g} about {_days(crossing)} after training (95% interval "
             f"{span}): update the model at least every {_days(crossing)}") if metric == "accuracy" else \
        (f"; it is expected to rise {limit} {threshold:g} about {_days(crossing)} after training (95% interval "
         f"{span}): update the model at least every {_days(crossing)}")
    if crossing > oldest:
        text += f" (an extrapolation: the oldest data is {_days(oldest)} old)"
    return {"state": state, "update_every_days": crossing, "text": text}


def render_table(report: dict):  # noqa: ANN201 - a rich Table
    """The buckets as a table, titled with the model and the training time."""
    from rich.table import Table

    metric = "accuracy" if report["metric"] == "accuracy" else "MAE"
    serving = report["serving"]
    table = Table(title=f"freshness: {serving['name']} v{serving['version']} trained "
                        f"{format_time(_utc(report['trained_at']))}, buckets of {_days(report['bucket_s'] / DAY)}")
    for header in ("age (days)", "n", metric, "95% interval"):
        table.add_column(header)
    for b in report["buckets"]:
        low, high = b["ci95"] if b["ci95"] else (math.nan, math.nan)
        table.add_row(f"{b['from_days']:g} to {b['to_days']:g}" + (" (before training)" if b["from_days"] < 0 else ""),
                      str(b["count"]), f"{b['value']:.3f}", f"{low:.3f} to {high:.3f}")
    return table


def _utc(seconds: float):  # noqa: ANN202 - datetime
    from datetime import datetime, timezone

    return datetime.fromtimestamp(seconds, timezone.utc)


def plot(report: dict, path: Path) -> None:
    """A PNG of each bucket's figure with its interval against age, the fitted line and the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buckets = report["buckets"]
    ages = [b["mean_age_days"] for b in buckets]
    values = [b["value"] for b in buckets]
    errors = [[v - b["ci95"][0] for v, b in zip(values, buckets, strict=True)],
              [b["ci95"][1] - v for v, b in zip(values, buckets, strict=True)]]
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.errorbar(ages, values, yerr=errors, fmt="o", capsize=3, label=report["metric"].replace("_", " "))
    trend = report["trend"]
    if "slope_per_day" in trend:
        line = np.array([0.0, max(trend["max_age_days"], trend.get("crossing_days") or 0.0)])
        axes.plot(line, trend["intercept"] + trend["slope_per_day"] * line, "--", label="trend")
    if report["threshold"] is not None:
        axes.axhline(report["threshold"], color="red", linewidth=1, label="threshold")
    axes.set_xlabel("age of the data since training (days)")
    axes.set_title(report["verdict"]["state"])
    axes.legend()
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=100)
    except OSError as err:
        raise EdgefleetError(f"--plot {path}: cannot write it ({err.strerror or err})") from err
    finally:
        plt.close(figure)
