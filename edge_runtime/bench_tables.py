"""The bench report (edge_runtime/bench.py) as rich tables for the terminal: what was measured where,
latency, throughput, the Predictor against the bare runtime, and several backends side by side."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table


def render_tables(report: dict) -> list[Table]:
    """The report as rich tables, each fitting 80 columns: what was measured where, latency, throughput,
    and (with compare_raw) the Predictor against the bare runtime."""
    results = report["results"]
    scale, unit = (1e3, "µs") if max(r["latency_ms"]["p50"] for r in results) < 1 else (1.0, "ms")
    tables = [
        _summary_table(report), _latency_table(results, scale, unit), _throughput_table(results, scale, unit)
    ]
    compared = [r for r in results if "raw" in r]
    if compared:
        tables.append(_overhead_table(compared, scale, unit))
    return tables


def quality_text(quality: dict | None) -> str:
    """The report's quality fields (core/task_quality.py) in a few words."""
    if not quality:
        return "no golden examples"
    if "error" in quality:
        return f"not measured: {escape(quality['error'])}"
    parts = []
    if "top1_agreement" in quality:
        parts.append(f"top-1 agreement {quality['top1_agreement']:.1%}")
    if "count_agreement" in quality:
        parts.append(f"detection count agreement {quality['count_agreement']:.1%}")
    if "max_score_error" in quality:
        parts.append(f"max score error {quality['max_score_error']:.3g}")
    if "min_cosine" in quality:
        parts.append(f"min cosine {quality['min_cosine']:.6f}")
    if "max_abs_error" in quality:
        parts.append(f"max abs error {quality['max_abs_error']:.3g}")
    if "max_rel_error" in quality:
        parts.append(f"max rel error {quality['max_rel_error']:.3g}")
    return f"{', '.join(parts)} ({quality['task']}, {quality['examples']} examples)"


def _num(value: float) -> str:
    """A few significant digits, whatever the magnitude, so columns stay narrow."""
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _summary_table(report: dict) -> Table:
    bundle, machine, memory = report["bundle"], report["machine"], report["memory"]
    artifact = bundle["artifact"]
    libraries = ", ".join(f"{k} {v}" for k, v in machine["libraries"].items() if v)
    cores = f"{machine['logical_cores']} logical, {machine['physical_cores'] or '?'} physical, " \
            f"{machine['usable_cores']} usable"
    memory_total = machine["memory_total_bytes"]
    flops = report["flops_per_sample"]
    rows = [
        ("model", f"{bundle['name']} v{bundle['version']}"),
        ("artifact", f"{artifact['path']} ({artifact['target']}, sha256 {(artifact['sha256'] or '?')[:12]})"),
        ("backend", f"{report['backend']}, threads: {report['threads'] or 'runtime default'}"),
        ("inputs", report["input_source"]),
        ("FLOPs per sample", f"{flops / 1e6:,.3f} M" if flops else "unknown"),
        ("load (verify + backend)", f"{report['load_seconds'] * 1e3:,.1f} ms"),
        ("first inference", f"{report['first_inference_ms']:,.3f} ms"),
        ("quality vs golden", quality_text(report.get("quality"))),
        ("peak RSS", f"{memory['peak_rss_mb']} MB" if memory["peak_rss_mb"] is not None else "unknown"),
        ("CPU", f"{machine['cpu_model'] or '?'} ({machine['architecture']}); {cores}"),
        ("CPU flags", " ".join(machine["cpu_flags"]) or "none detected"),
        ("memory", f"{memory_total / 2**30:.1f} GiB" if memory_total else "unknown"),
        ("system", f"{machine['os_release'] or machine['os']}, kernel {machine['kernel']}, "
                   f"Python {machine['python']}"),
        ("libraries", libraries),
    ]
    table = Table(title="edgefleet bench", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for row in rows:
        table.add_row(*row)
    return table


def _latency_table(results: list[dict], scale: float, unit: str) -> Table:
    capped = any(r["stopped_by"] == "time_cap" for r in results)
    table = Table(title=f"latency per call ({unit})",
                  caption="* stopped by the time cap before the run target" if capped else None)
    for header in ("batch", "runs", "min", "p50", "p90", "p95", "p99", "p99.9", "max"):
        table.add_column(header, justify="right")
    for result in results:
        latency = result["latency_ms"]
        runs = f"{result['runs']}" + ("*" if result["stopped_by"] == "time_cap" else "")
        table.add_row(str(result["batch"]), runs, *(
            _num(latency[key] * scale) for key in ("min", "p50", "p90", "p95", "p99", "p99_9", "max")
        ))
    return table


def _throughput_table(results: list[dict], scale: float, unit: str) -> Table:
    table = Table(title="throughput, one call at a time")
    for header in ("batch", f"mean ({unit})", "calls/s", "samples/s", "GFLOP/s"):
        table.add_column(header, justify="right")
    for result in results:
        throughput, gflops = result["throughput"], result["gflops_per_s"]
        table.add_row(
            str(result["batch"]), _num(result["latency_ms"]["mean"] * scale),
            f"{throughput['calls_per_s']:,.0f}", f"{throughput['samples_per_s']:,.0f}",
            _num(gflops) if gflops is not None else "-",
        )
    return table


def _overhead_table(results: list[dict], scale: float, unit: str) -> Table:
    table = Table(title=f"Predictor.predict vs bare InferenceSession.run, interleaved ({unit})")
    for header in ("batch", "p50 ours", "p50 raw", "p50 ×", "mean ours", "mean raw", "mean ×"):
        table.add_column(header, justify="right")
    for result in results:
        ours, theirs = result["latency_ms"], result["raw"]["latency_ms"]
        table.add_row(
            str(result["batch"]),
            _num(ours["p50"] * scale), _num(theirs["p50"] * scale), f"{result['overhead_ratio']:.3f}",
            _num(ours["mean"] * scale), _num(theirs["mean"] * scale), f"{result['overhead_ratio_mean']:.3f}",
        )
    return table


def comparison_table(reports: list[dict]) -> Table:
    """Several backends' reports side by side: what each ran, latency, throughput, load time and memory;
    a backend that could not run the bundle (status "refused") is one row with its reason."""
    table = Table(title="backends side by side (each in its own process, one after another)")
    headers = ("backend", "artifact", "batch", "p50 ms", "p90 ms", "p99 ms", "samples/s", "load ms", "peak RSS MB",
               "quality vs golden")
    for header in headers:
        table.add_column(header, justify="left" if header in ("backend", "artifact", "quality vs golden") else "right")
    for report in reports:
        if report.get("status") == "refused":
            table.add_row(report["entry"], f"[red]cannot run[/]: {escape(report['reason'])}", *["-"] * 8)
            continue
        quality = quality_text(report.get("quality"))
        artifact = report["bundle"]["artifact"]
        for result in report["results"]:
            latency = result["latency_ms"]
            table.add_row(report.get("entry", report["backend"]), f"{artifact['target']} ({artifact['format']})",
                          str(result["batch"]), *(f"{latency[k]:.4f}" for k in ("p50", "p90", "p99")),
                          f"{result['throughput']['samples_per_s']:,.0f}", f"{report['load_seconds'] * 1e3:,.1f}",
                          str(report["memory"]["peak_rss_mb"]), quality)
    return table
