"""The offline evaluation report as tables, and in the candidate bundle.

The report is stored as the compression report is (cloud/compress/report.py): whole in the manifest's
`metrics.offline_evaluation`, with a summary in the model card's `offline_evaluation` (verdict, refusal
reasons, whether it was forced, overall figures per file), then the manifest is rewritten and signed
again, so the judgement travels with the model and cannot be edited without the key.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

from edgefleet.core import bundle as bundle_io
from edgefleet.core.bundle import Bundle
from edgefleet.core.signing import DEFAULT_VALIDITY, SigningKey

log = logging.getLogger(__name__)

VERDICT_STYLE = {"worse": "bold red", "better": "green", "within noise": "", "too few rows": "dim"}


def attach_to_bundle(report: dict, bundle_dir: Path, key: SigningKey,
                     validity: timedelta = DEFAULT_VALIDITY) -> Bundle:
    """Writes the report into the candidate's manifest and model card and signs the bundle again."""
    root = Path(bundle_dir)
    json.dumps(report, allow_nan=False)  # a manifest holds no NaN (bounded_json refuses it on the device)
    manifest = bundle_io.read_manifest(root)
    manifest.setdefault("metrics", {})["offline_evaluation"] = report
    card = dict(manifest.get("model_card") or {})
    card["offline_evaluation"] = summary(report)
    manifest["model_card"] = card
    bundle_io.write_manifest(root, manifest)
    bundle_io.sign(root, key, validity)
    log.info("attached the offline evaluation to %s, signed by %s", root, key.key_id)
    return Bundle.open(root)


def summary(report: dict) -> dict:
    """The model card's lines: against what, the verdict, and the overall figures per file."""
    decision = report["decision"]
    overall = {}
    for name, entry in report["datasets"].items():
        groups = entry.get("groups") or entry.get("agreement") or []
        first = next((g for g in groups if g["slice"] == "overall"), None)
        if first is not None and "candidate" in first:
            overall[name] = {"candidate": first["candidate"]["value"], "serving": first["serving"]["value"],
                             "verdict": first["verdict"], "rows": first["rows"]}
        elif first is not None:
            overall[name] = {"same_answer": (first.get("same_answer") or {}).get("value"), "rows": first["rows"]}
    serving = report["serving"]
    return {"against": f"{serving['name']} v{serving['version']}", "metric": report["metric"],
            "at": report["created_at"], "refused": decision["refused"], "forced": decision["forced"],
            "reasons": decision["reasons"], "overall": overall}


def render_tables(report: dict) -> list:
    """Rich tables: per file and slice (serving, candidate, improvement, verdict), then the sanity checks."""
    from rich.table import Table

    cand, serv = report["candidate"], report["serving"]
    metric = "accuracy" if report["task"] == "classification" else "MAE"
    table = Table(title=f"offline evaluation: {cand['name']} v{cand['version']} ({cand['backend']}) against "
                        f"{serv['name']} v{serv['version']} ({serv['backend']})",
                  caption="* critical slice; verdicts only when the 95% interval of the difference excludes 0"
                          + (f" (worse: below -{report['max_drop']:g}, the accepted drop)"
                             if report.get("max_drop") else ""))
    for header in ("data", "slice", "n", f"serving {metric}", f"candidate {metric}", "improvement", "verdict"):
        table.add_column(header, justify="right" if header in ("n",) or metric in header else "left")
    tables = [table]
    for name, entry in report["datasets"].items():
        for group in entry.get("groups", []):
            style = VERDICT_STYLE.get(group["verdict"], "")
            table.add_row(name, group["slice"] + (" *" if group["critical"] else ""), str(group["rows"]),
                          _figure(group["serving"]), _figure(group["candidate"]), _figure(group["improvement"], "+"),
                          f"[{style}]{group['verdict']}[/{style}]" if style else group["verdict"])
        if "baseline" in entry:
            base = entry["baseline"]
            table.add_row(name, f"baseline: {base['name']} ({_short(base['answer'])})", str(base["count"]), "",
                          _figure(base), _figure(base["candidate_improvement"], "+"),
                          f"candidate {base['candidate_improvement']['verdict']}")
        for group in entry.get("agreement", []):
            figure = group.get("same_answer") or group.get("mean_abs_difference")
            label = "same answer" if "same_answer" in group else "mean |difference|"
            table.add_row(name, group["slice"], str(group["rows"]), "", "", f"{label} {_figure(figure)}",
                          "no labels")
    tables.append(_checks_table(report["checks"]))
    return tables


def _checks_table(checks: dict) -> Any:
    from rich.table import Table

    table = Table(title=f"sanity checks (invariances declared in {checks['declared_in']})",
                  caption="a check fails when its whole 95% interval lies beyond its limit")
    for header in ("check", "serving", "candidate", "limit", "result"):
        table.add_column(header, justify="left" if header in ("check", "result") else "right")
    rows = []
    if "perturbation" in checks:
        item = checks["perturbation"]
        rows.append((f"answers changed by noise ({item['candidate']['noise']:g} sd)", item, "%"))
    rows += [(f"answers changed by {item['name']}", item, "%") for item in checks["invariance"]]
    if "calibration" in checks:
        rows.append(("expected calibration error", checks["calibration"], "ece"))
    for label, item, kind in rows:
        cells = [_ece(item[w]) if kind == "ece" else _figure(item[w], "%") for w in ("serving", "candidate")]
        limit = f"{item['limit']:.3f}" if kind == "ece" else f"{item['limit']:.1%}"
        result = "[green]pass[/green]" if item["passed"] else "[bold red]FAIL[/bold red]"
        table.add_row(label, *cells, limit, result)
    return table


def _figure(figure: dict | None, kind: str = "") -> str:
    if figure is None or figure.get("value") is None:
        return "-"
    value, interval = figure["value"], figure.get("ci95")
    if kind == "%":
        return f"{value:.1%} [{interval[0]:.1%}, {interval[1]:.1%}]"
    fmt = "+.3f" if kind == "+" else ".3f"
    return f"{value:{fmt}} [{interval[0]:{fmt}}, {interval[1]:{fmt}}]" if interval else f"{value:{fmt}}"


def _ece(figure: dict) -> str:
    interval = figure.get("ci95")
    return f"{figure['ece']:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def _short(answer: object) -> str:
    text = json.dumps(answer) if not isinstance(answer, str) else answer
    return text if len(text) <= 24 else text[:21] + "..."

