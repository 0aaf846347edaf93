"""Bundle commands: keys, sign, inspect, verify, predict, bench. Device-side: they import core and
edge_runtime only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from edgefleet.cli.app import BundleArg, TrustOption, app, err_console, keys_app, out, trust_store
from edgefleet.core.bundle import SIGNATURE, Bundle, sign
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.manifest_rules import MAX_SIGNATURE_BYTES, MAX_SIGNATURE_DEPTH, check_structure, read_document
from edgefleet.core.signing import DEFAULT_VALIDITY, SigningKey

DEFAULT_BACKEND_HELP = ("(default: the backends of the bundle's own artifacts, onnxruntime first for an ONNX "
                        "artifact; the output says which ran)")


# --- keys and signing -------------------------------------------------------------------------------
@keys_app.command("generate")
def keys_generate(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for NAME.key and NAME.pub")] = Path("keys"),
    name: Annotated[str, typer.Option(help="File name stem")] = "release",
) -> None:
    """Create an Ed25519 signing key (NAME.key, mode 0600) and its public key (NAME.pub)."""
    key = SigningKey.generate()
    private, public = key.save(out_dir, name)
    out.print(f"key id [bold]{key.key_id}[/]")
    out.print(f"  private: {private}  (keep secret)\n  public:  {public}  (give to devices)")


@app.command("sign")
def sign_command(
    bundle: BundleArg,
    key: Annotated[Path, typer.Option("--key", "-k", help="Private key file (.key)")],
    days: Annotated[int, typer.Option(help="Days until the signature expires")] = DEFAULT_VALIDITY.days,
) -> None:
    """Sign (or re-sign) a bundle directory."""
    from datetime import timedelta

    opened = Bundle.open(bundle)
    if not opened.root.samefile(bundle):
        raise EdgefleetError("sign works on a bundle directory; unpack the archive first")
    doc = sign(opened.root, SigningKey.load(key), timedelta(days=days))
    out.print(f"signed {opened.name} v{opened.version} with key {doc['key_id']}, expires {doc['expires_at']}")


# --- looking at a bundle ----------------------------------------------------------------------------
@app.command("inspect")
def inspect(
    bundle: BundleArg, as_json: Annotated[bool, typer.Option("--json", help="Print the manifest")] = False
) -> None:
    """Show what a bundle holds (does not verify it: use `verify`). A manifest of the wrong structure is
    refused with the field it names, as verify would."""
    opened = Bundle.open(bundle)
    manifest = opened.manifest
    if as_json:
        out.print_json(data=manifest)
        return
    check_structure(manifest)
    table = Table(title=escape(f"{opened.name} v{opened.version}"), show_header=False)
    table.add_row("label", escape(str(manifest.get("label") or "")))
    table.add_row("created", escape(str(manifest.get("created_at") or "")))
    table.add_row("signature", _signature_summary(opened.root / SIGNATURE))
    for spec in opened.inputs:
        table.add_row("input", escape(f"{spec.name}: {spec.describe()}"))
    for spec in opened.outputs:
        table.add_row("output", escape(f"{spec.name}: {spec.describe()}"))
    for art in opened.artifacts:
        err = art.get("numeric_error") or {}
        checked = (f"max abs err {err['max_abs']:.2g}" if err.get("max_abs") is not None
                   else "unchecked (device self-test)")
        table.add_row("artifact", escape(
            f"{art['path']} [{art.get('target')} / {art.get('backend')}, {art.get('precision')}] "
            f"{(art.get('size') or 0) / 1024:.1f} KiB, {checked}"))
    for split, metrics in manifest.get("metrics", {}).items():
        if "accuracy" in metrics:
            table.add_row(escape(f"accuracy ({split})"), f"{metrics['accuracy']:.4f} on {metrics.get('count')} samples")
    if manifest.get("golden"):
        table.add_row("golden examples", str(manifest["golden"].get("count")))
    out.print(table)


def _signature_summary(path: Path) -> str:
    """Who signed and until when, as signature.json says (read within its limits, not verified)."""
    try:
        signed = read_document(path, max_bytes=MAX_SIGNATURE_BYTES, max_depth=MAX_SIGNATURE_DEPTH,
                               malformed="bad_signature")
    except FileNotFoundError:
        return "[red]unsigned[/]"
    except (OSError, EdgefleetError) as err:
        return f"[red]unreadable[/]: {escape(str(err))}"
    return escape(f"key {signed.get('key_id')}, expires {signed.get('expires_at')} (not verified here)")


@app.command("verify")
def verify(
    bundle: BundleArg,
    trust: TrustOption = None,
    self_test: Annotated[bool, typer.Option("--self-test/--no-self-test", help="Run the golden examples")] = True,
    backend: Annotated[str | None, typer.Option(help=f"Backend for the self-test {DEFAULT_BACKEND_HELP}")] = None,
) -> None:
    """Check signature, expiry and every file's hash; then run the self-test on the golden examples."""
    opened = Bundle.open(bundle)
    store = trust_store(trust)
    verified = opened.verify(store)
    out.print(f"[green]verified[/] {verified.name} v{verified.version}: signed by {verified.key_id}, "
              f"expires {verified.expires_at}, {len(opened.manifest['files'])} files match")
    if not self_test:
        return
    from edgefleet.edge_runtime.predictor import Predictor

    with Predictor(opened, backends=_backends(opened, backend and [backend]), trusted_keys=store) as predictor:
        report = predictor.self_test()
    if not report.passed:
        err_console.print("[red]self-test failed[/]: " + "; ".join(report.failures))
        raise typer.Exit(1)
    out.print(f"[green]self-test passed[/] on {report.examples} golden examples with {predictor.backend_name} "
              f"(max abs error {report.max_abs_error:.2g}, {report.seconds * 1000:.1f} ms)")


# --- running it -------------------------------------------------------------------------------------
def _backends(bundle: Bundle, named: list[str] | None) -> list[str]:
    """The backends named on the command line, else the bundle's own order (edge_runtime/backends)."""
    from edgefleet.edge_runtime.backends import default_backends

    return list(named) if named else default_backends(bundle)


@app.command("predict")
def predict(
    bundle: BundleArg,
    input_file: Annotated[Path, typer.Option("--input", "-i", help=".npy, .npz or .json request")],
    trust: TrustOption = None,
    backend: Annotated[list[str] | None, typer.Option(help="Backend(s) in order of preference "
                                                           f"{DEFAULT_BACKEND_HELP}")] = None,
    labels: Annotated[Path | None, typer.Option(help=".npy of true classes: print accuracy (classifiers)")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write outputs (.json/.npz/.npy)")] = None,
    show: Annotated[int, typer.Option(help="Rows to print")] = 10,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Classes per row, best first (classifiers; "
                                                               "default 1)")] = None,
    normalize: Annotated[bool, typer.Option("--normalize", help="Unit-length vectors (embeddings)")] = False,
    score_threshold: Annotated[str | None, typer.Option(
        "--score-threshold", help="Detections at or above this score, 0 to 1 (detectors; default: the "
                                  "bundle's)")] = None,
) -> None:
    """Run the model on inputs from a file and print the task's answer (the same as the HTTP API's:
    top-k classes, regression values, embedding norms, detections; the raw output shapes otherwise)."""
    from edgefleet.core.answers import parse_options, task_answer
    from edgefleet.core.schema import sample_count
    from edgefleet.edge_runtime.predictor import Predictor
    from edgefleet.edge_runtime.request_files import read_request, write_result

    opened = Bundle.open(bundle)
    interface = opened.manifest["interface"]
    given = [("top_k", str(top_k))] if top_k is not None else []
    given += [("normalize", "true")] if normalize else []
    given += [("score_threshold", score_threshold)] if score_threshold is not None else []
    options = parse_options(given, interface)
    if labels is not None and interface.get("task") != "classification":
        raise EdgefleetError(f"--labels needs a classifier; this bundle's task is {interface.get('task')}")
    with Predictor(opened, backends=_backends(opened, backend), trusted_keys=trust_store(trust)) as predictor:
        feed = read_request(input_file, predictor.bundle.inputs)
        outputs = predictor.predict(feed)
    if output:
        write_result(output, outputs)
    answer = task_answer(interface, predictor.bundle.outputs, outputs, options)
    samples = sample_count(predictor.bundle.outputs, outputs)  # on the batch axis, wherever it is
    title = f"{samples} predictions ({predictor.backend_name})"
    shapes = ", ".join(f"{k} {v.shape}" for k, v in outputs.items())
    out.print(f"{title}; outputs {shapes}" if not answer else title)  # a line of its own: a title would wrap
    if answer:
        out.print(answer_table(answer, show))
    if labels is not None:
        index = {name: i for i, name in enumerate(interface.get("class_names") or [])}
        predicted = np.asarray([index.get(row[0]["class"], row[0]["class"]) for row in answer["top_k"]])
        truth = np.load(labels, allow_pickle=False).reshape(-1)
        if len(truth) != len(predicted):
            raise EdgefleetError(f"--labels has {len(truth)} rows, the input has {len(predicted)}")
        out.print(f"accuracy: [bold]{float((predicted == truth).mean()):.4f}[/] on {len(truth)} samples")


def answer_table(answer: dict, show: int) -> Table:
    """The task's answer (core/answers.py) as a table, one row per sample, the first `show` of them."""
    table = Table("row")
    if "top_k" in answer:
        table.add_column("class")
        table.add_column("score")
        rows = [(" ".join(str(c["class"]) for c in r), " ".join(f"{c['score']:.3f}" for c in r))
                for r in answer["top_k"]]
    elif "values" in answer:
        names = list(answer["values"][0]) if answer["values"] else []
        for name in names:
            table.add_column(name)
        rows = [tuple(_short(v[n]) for n in names) for v in answer["values"]]
    elif "embeddings" in answer:
        table.add_column("norm")
        table.add_column("vector" + (" (normalized)" if answer["normalized"] else ""))
        rows = [(f"{e['norm']:.4g}", _short(e["vector"])) for e in answer["embeddings"]]
    else:
        nms = f", NMS IoU {answer['iou_threshold']:g}" if "iou_threshold" in answer else ""
        table.add_column(f"detections (score >= {answer['score_threshold']:g}{nms})")
        table.add_column("best")
        rows = [(str(len(d)), _short(d[0]) if d else "-") for d in answer["detections"]]
    for index, row in enumerate(rows[:show]):
        table.add_row(str(index), *(escape(cell) for cell in row))
    return table


def _short(value: object, items: int = 4) -> str:
    """A number, list or dict in a few characters: 4 significant digits, the first `items` entries."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        shown = ", ".join(_short(v) for v in value[:items])
        return f"[{shown}{', ...' if len(value) > items else ''}]"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_short(v)}" for k, v in value.items())
    return str(value)


@app.command("bench")
def bench(
    bundle: BundleArg,
    trust: TrustOption = None,
    backend: Annotated[str | None, typer.Option(help="Backend or compile target to measure; several, "
                                                     "comma-separated, are measured one after another, each in "
                                                     f"its own process {DEFAULT_BACKEND_HELP}")] = None,
    batch: Annotated[str, typer.Option(help="Batch sizes, comma-separated")] = "1",
    threads: Annotated[int | None, typer.Option(help="Intra-op threads (default: runtime's choice)")] = None,
    runs: Annotated[int | None, typer.Option(help="Measured runs per batch size (default 1024)")] = None,
    duration: Annotated[float | None, typer.Option(help="Seconds per batch size instead of a run count")] = None,
    compare_raw: Annotated[bool, typer.Option("--compare-raw", help="Also time a bare InferenceSession")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the full report as JSON")] = None,
) -> None:
    """Latency percentiles, throughput, memory and FLOP/s on this machine (MLPerf single-stream style).

    With several backends, one that cannot run the bundle is a row with its reason and the others go on;
    the exit status is 1 then."""
    from rich.progress import Progress

    from edgefleet.edge_runtime.bench import BenchOptions, run_bench
    from edgefleet.edge_runtime.bench_tables import comparison_table, render_tables

    try:
        batches = tuple(int(b) for b in batch.split(","))
    except ValueError as err:
        raise EdgefleetError(f"--batch: expected comma-separated integers such as 1,8,32, got {batch!r}") from err
    if any(b < 1 for b in batches) or (runs is not None and runs < 1) or (duration is not None and duration <= 0):
        raise EdgefleetError("--batch, --runs and --duration must be positive")
    if backend and "," in backend:
        from edgefleet.edge_runtime.bench import check_entries

        names = [b.strip() for b in backend.split(",") if b.strip()]
        check_entries(bundle, trust_store(trust), names)  # a bad name or bundle is a usage error, not a row
        reports = _bench_each(bundle, trust, names, batch, threads, runs, duration)
        out.print(comparison_table(reports))
        if json_out:
            json_out.write_text(json.dumps(reports, indent=2))
            out.print(f"reports written to {json_out}")
        if any(r["status"] == "refused" for r in reports):
            raise typer.Exit(1)
        return
    options = BenchOptions(backend=backend, batches=batches, threads=threads, runs=runs, duration=duration,
                           compare_raw=compare_raw)
    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task("benchmark", total=1.0)
        report = run_bench(bundle, trust_store(trust), options,
                           progress=lambda message, fraction: progress.update(task, description=message,
                                                                              completed=fraction))
    for table in render_tables(report):
        out.print(table)
    if json_out:
        json_out.write_text(json.dumps(report, indent=2))
        out.print(f"report written to {json_out}")


def _bench_each(bundle: Path, trust: list[Path] | None, backends: list[str], batch: str, threads: int | None,
                runs: int | None, duration: float | None) -> list[dict]:
    """`edgefleet bench --backend X` for each X in a process of its own, so each has its own memory figures;
    one that fails is a refused entry with its message (edge_runtime/bench.py) and the others go on."""
    import os
    import subprocess
    import sys
    import tempfile

    from edgefleet.edge_runtime.bench import refused_report

    reports = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        for index, name in enumerate(backends):
            out.print(f"benchmarking {name} ({index + 1}/{len(backends)})")
            path = Path(tmp) / f"{index}.json"
            command = [sys.executable, "-m", "edgefleet.cli.main", "bench", str(bundle), "--backend", name,
                       "--batch", batch, "--json", str(path)]
            command += [arg for key in (trust or []) for arg in ("--trust", str(key))]
            command += ["--threads", str(threads)] if threads else []
            command += ["--runs", str(runs)] if runs else []
            command += ["--duration", str(duration)] if duration else []
            env = {**os.environ, "COLUMNS": "100000"}  # its one-line error stays one line
            done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
            if done.returncode != 0:
                message = (done.stderr.strip().splitlines() or ["no message"])[-1].removeprefix("error: ")
                out.print(f"[red]{escape(name)} cannot run[/]: {escape(message)}")
                reports.append(refused_report(name, message))
                continue
            reports.append({"entry": name, "status": "measured", **json.loads(path.read_text())})
    return reports
