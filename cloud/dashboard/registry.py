"""The registry's pages: the bundles, and one bundle with its model card, metrics per class and slice,
compression report (table and the CLI's own plot), compile targets with their checked errors, and lineage.

Everything here comes from a stored manifest, which a trusted key signed but whose free-form parts
(model card, metrics, the compression report, lineage) no rule checks: the views below read them
defensively (a part of the wrong shape is shown as missing, never a 500), and the templates escape every
text. The compression plot is `edgefleet.cloud.compress.report.plot` (matplotlib, drawn here, no
internet) with math text off, so a class name such as `$\\alpha$` or `<script>` is drawn as the letters it is;
plots are cached per stored archive (its sha256), a few at a time.
"""

from __future__ import annotations

import math
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select

from edgefleet.cloud.api.bundles import BundleVersion, get_bundle
from edgefleet.cloud.api.deps import NotFoundError, SessionDep
from edgefleet.cloud.dashboard.pages import SessionAuth, render
from edgefleet.cloud.dashboard.session import DashboardRefusal
from edgefleet.cloud.db import BundleRecord

router = APIRouter(include_in_schema=False)
GROUPS = ("per_class", "per_slice")
MAX_LISTED = 500  # bundles on the registry page, newest versions first
PLOT_CACHE = 16
_plot_lock = threading.Lock()  # pyplot keeps global state: one drawing (and cache update) at a time


@dataclass(frozen=True)
class MetricTable:
    kind: str  # "per_class" or "per_slice"
    splits: list[str]
    rows: list[tuple[str, list[str]]]  # (class or slice, one "0.931 (n=45)" per split)


@dataclass(frozen=True)
class Compression:
    baseline: str
    metric: str
    note: str
    rule: str
    steps: list[dict]  # flat, formatted cells per step
    error: str | None  # why the report could not be read


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) \
        else None


def _fmt(value: object, spec: str = ".3f", suffix: str = "") -> str:
    number = _number(value)
    return "-" if number is None else f"{number:{spec}}{suffix}"


def splits_of(metrics: object) -> dict[str, Mapping]:
    """The manifest's metric splits, one level of nesting flattened ("float eval"); the compression
    report is shown on its own."""
    found: dict[str, Mapping] = {}
    if not isinstance(metrics, Mapping):
        return found
    for name, values in metrics.items():
        if name == "compression" or not isinstance(values, Mapping):
            continue
        if _number(values.get("accuracy")) is not None:
            found[str(name)] = values
            continue
        for inner, nested in values.items():
            if isinstance(nested, Mapping) and _number(nested.get("accuracy")) is not None:
                found[f"{name} {inner}"] = nested
    return found


def report_splits(report: object) -> dict[str, Mapping]:
    """Each compression step's measurement (on the report's test split, with its slices) as one more split."""
    found: dict[str, Mapping] = {}
    steps = report.get("steps") if isinstance(report, Mapping) else None
    for step in steps if isinstance(steps, list) else []:
        measurement = step.get("measurement") if isinstance(step, Mapping) else None
        metrics = measurement.get("metrics") if isinstance(measurement, Mapping) else None
        if isinstance(metrics, Mapping) and _number(metrics.get("accuracy")) is not None:
            found[f"report: {measurement.get('name')}"] = metrics
    return found


def metric_tables(splits: Mapping[str, Mapping]) -> list[MetricTable]:
    tables = []
    for kind in GROUPS:
        columns = [name for name, values in splits.items() if isinstance(values.get(kind), Mapping)]
        groups: list[str] = []
        for name in columns:
            groups += [str(g) for g in splits[name][kind] if str(g) not in groups]
        rows = []
        for group in groups:
            cells = []
            for name in columns:
                cell = splits[name][kind].get(group)
                cell = cell if isinstance(cell, Mapping) else {}
                count = _number(cell.get("count"))
                cells.append(_fmt(cell.get("accuracy")) + ("" if count is None else f" (n={count:.0f})"))
            rows.append((group, cells))
        if rows:
            tables.append(MetricTable(kind, columns, rows))
    return tables


def compression_view(report: object) -> Compression | None:
    if report is None:
        return None
    try:
        rule = report["rule"]
        steps = []
        for step in report["steps"]:
            m = step["measurement"]
            error = m.get("numeric_error") or {}
            change = _number(step["change"]["accuracy"]["absolute"])
            steps.append({
                "name": str(m["name"]), "baseline": bool(step.get("is_baseline")),
                "accuracy": _fmt(m["metrics"]["accuracy"], ".4f"),
                "change": "" if step.get("is_baseline") or change is None else f"{change * 100:+.2f} pt",
                "size": _fmt(_number(m.get("size_bytes")) and m["size_bytes"] / 1024, ".1f", " KiB"),
                "zipped": _fmt(_number(m.get("size_zipped_bytes")) and m["size_zipped_bytes"] / 1024, ".1f", " KiB"),
                "parameters": _fmt(m.get("parameters"), ",.0f"),
                "p50": _fmt((m.get("latency_ms") or {}).get("p50"), ".3f", " ms"),
                "p99": _fmt((m.get("latency_ms") or {}).get("p99"), ".3f", " ms"),
                "max_abs": _fmt(error.get("max_abs"), ".2g"), "agreement": _fmt(error.get("argmax_agreement"), ".4f"),
                "flagged": [f"{f['kind']} {f['group']}: {_fmt(f['baseline'])} → {_fmt(f['accuracy'])}"
                            for f in step.get("flagged") or []],
            })
        rule_text = (f"flagged: a drop of ≥ {_fmt(rule['min_drop'] * 100, 'g')} pt and > "
                     f"{_fmt(rule['flag_ratio'], 'g')}× the overall drop, with ≥ "
                     f"{_fmt(rule['min_count'], '.0f')} samples")
        return Compression(str(report["baseline"]), str(report.get("metric", "accuracy")), str(report.get("note", "")),
                           rule_text, steps, None)
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        return Compression("", "", "", "", [], f"the manifest's compression report is not of the expected shape "
                                               f"({type(err).__name__}: {err})")


def compile_targets(manifest: Mapping) -> list[dict]:
    """Each artifact with its checked numeric error: tolerance, agreement and the task's quality measure."""
    rows = []
    for artifact in manifest.get("artifacts") or []:
        if not isinstance(artifact, Mapping):
            continue
        error = artifact.get("numeric_error") if isinstance(artifact.get("numeric_error"), Mapping) else {}
        decisions = error.get("decisions") if isinstance(error.get("decisions"), Mapping) else {}
        quality = error.get("quality") if isinstance(error.get("quality"), Mapping) else {}
        rows.append({
            "target": str(artifact.get("target") or ""), "backend": str(artifact.get("backend") or ""),
            "format": str(artifact.get("format") or ""), "precision": str(artifact.get("precision") or ""),
            "size": _fmt(artifact.get("size"), ",.0f"),
            "checked": {True: "yes", False: "no"}.get(error.get("checked"), "-"),
            "checked_with": str(error.get("checked_with") or error.get("reference") or ""),
            "max_abs": _fmt(error.get("max_abs"), ".3g"), "max_rel": _fmt(error.get("max_rel"), ".3g"),
            "tolerance": f"atol {_fmt(error.get('atol'), '.3g')}, rtol {_fmt(error.get('rtol'), '.3g')}"
                         if "atol" in error else "-",
            "decisions": f"{decisions.get('agreed')}/{decisions.get('compared')} agree" if decisions else "-",
            "quality": ", ".join(f"{key} {_fmt(value, '.4g') if _number(value) is not None else value}"
                                 for key, value in quality.items() if key != "task") or "-",
        })
    return rows


def lineage_chain(lineage: object) -> tuple[str | None, list[dict]]:
    """(the parent bundle as "name vN" or None, the steps in order), each step a stage and its facts."""
    if not isinstance(lineage, Mapping):
        return None, []
    parent = lineage.get("parent")
    parent_text = f"{parent.get('name')} v{parent.get('version')}" if isinstance(parent, Mapping) else None
    chain = []
    for step in lineage.get("steps") or []:
        if not isinstance(step, Mapping):
            continue
        facts = [f"{key} {step[key]}" for key in ("target", "backend", "precision", "tool") if step.get(key)]
        error = step.get("numeric_error") if isinstance(step.get("numeric_error"), Mapping) else {}
        if error:
            facts.append(f"max |err| {_fmt(error.get('max_abs'), '.3g')}")
            quality = error.get("quality") if isinstance(error.get("quality"), Mapping) else {}
            facts += [f"{k} {_fmt(v, '.4g')}" for k, v in quality.items() if _number(v) is not None and k != "examples"]
        accuracy = step.get("accuracy") if isinstance(step.get("accuracy"), Mapping) else {}
        if "float" in accuracy:
            facts.append(f"{accuracy.get('metric', 'accuracy')} {_fmt(accuracy.get('float'))} → "
                         f"{_fmt(accuracy.get('quantized'))}")
        sizes = step.get("sizes") if isinstance(step.get("sizes"), Mapping) else {}
        if _number(sizes.get("ratio")) is not None:
            facts.append(f"{sizes['ratio']:.2f}× smaller")
        chain.append({"stage": str(step.get("stage") or step.get("method") or "step"), "at": str(step.get("at") or ""),
                      "facts": facts})
    return parent_text, chain


def card_texts(card: object) -> list[tuple[str, str]]:
    """The model card's text sections (intended use, limitations, ...); its evaluations are the tables."""
    if not isinstance(card, Mapping):
        return []
    return [(str(key).replace("_", " "), str(value)) for key, value in card.items()
            if isinstance(value, str | int | float) and not isinstance(value, bool)]


def _record(db: SessionDep, name: str, version: int) -> BundleRecord:
    try:
        return get_bundle(db, name, version)
    except NotFoundError as err:
        raise DashboardRefusal(str(err), 404) from err


@router.get("/bundles", response_class=HTMLResponse)
def bundles(request: Request, session: SessionAuth, db: SessionDep) -> Response:
    records = db.scalars(select(BundleRecord).order_by(BundleRecord.name, BundleRecord.version.desc())
                         .limit(MAX_LISTED)).all()
    rows = []
    for record in records:
        manifest = record.manifest or {}
        splits = splits_of(manifest.get("metrics"))
        first = next(iter(splits.values()), {})
        rows.append({"name": record.name, "version": record.version, "label": str(manifest.get("label") or ""),
                     "uploaded_at": record.uploaded_at, "size": record.size, "accuracy": _fmt(first.get("accuracy")),
                     "targets": [str(a.get("target")) for a in manifest.get("artifacts") or []
                                 if isinstance(a, Mapping) and a.get("target")],
                     "compressed": isinstance(manifest.get("metrics"), Mapping)
                     and "compression" in manifest["metrics"]})
    return render(request, "bundles.html", session, bundles=rows, limit=MAX_LISTED)


@router.get("/bundles/{name}/{version}", response_class=HTMLResponse)
def bundle(request: Request, name: str, version: BundleVersion, session: SessionAuth, db: SessionDep) -> Response:
    record = _record(db, name, version)
    manifest = record.manifest or {}
    metrics = manifest.get("metrics") if isinstance(manifest.get("metrics"), Mapping) else {}
    splits = splits_of(metrics) | report_splits(metrics.get("compression"))
    parent, chain = lineage_chain(manifest.get("lineage"))
    interface = manifest.get("interface") if isinstance(manifest.get("interface"), Mapping) else {}
    return render(request, "bundle.html", session, record=record, label=str(manifest.get("label") or ""),
                  task=str(interface.get("task") or ""), card=card_texts(manifest.get("model_card")),
                  splits=[(n, _fmt(v.get("accuracy"), ".4f"), _fmt(v.get("count"), ".0f")) for n, v in splits.items()],
                  tables=metric_tables(splits), compression=compression_view(metrics.get("compression")),
                  targets=compile_targets(manifest), parent=parent, chain=chain)


@router.get("/bundles/{name}/{version}/compression.png")
def compression_plot(request: Request, name: str, version: BundleVersion, session: SessionAuth,
                     db: SessionDep) -> Response:
    record = _record(db, name, version)
    report = (record.manifest.get("metrics") or {}).get("compression") if isinstance(record.manifest, Mapping) else None
    if report is None:
        raise DashboardRefusal(f"bundle {name} v{version} has no compression report", 404)
    cache: OrderedDict = request.app.state.dashboard_plots
    with _plot_lock:
        png = cache.get(record.sha256)
        if png is None:
            png = cache[record.sha256] = _draw(report)
            while len(cache) > PLOT_CACHE:
                cache.popitem(last=False)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600",
                                                           "X-Content-Type-Options": "nosniff"})


def _draw(report: Mapping) -> bytes:
    import matplotlib

    from edgefleet.cloud.compress.report import from_json, plot

    try:
        parsed = from_json(report)
        with matplotlib.rc_context({"text.parse_math": False}), tempfile.TemporaryDirectory() as folder:
            return plot(parsed, Path(folder) / "report.png").read_bytes()
    except (KeyError, TypeError, AttributeError, ValueError, StopIteration) as err:
        raise DashboardRefusal(f"the compression report cannot be drawn: it is not of the expected shape "
                               f"({type(err).__name__})", 422) from err
