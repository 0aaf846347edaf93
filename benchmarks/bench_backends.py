"""Every edge backend on the same models, on this machine, in one run: latency, throughput, error, footprint.

    python benchmarks/bench_backends.py [--epochs 4] [--runs 400] [--out runs/backends.json]
                                        [--plot runs/backends.png] [--models digits-cnn,mlp,wide-cnn]

Models, trained for real: the digits CNN (8x8), the breast-cancer MLP (30 features), and a wider CNN on
the digits upsampled to 32x32 (64-128 channels, ~0.2 GFLOP per image; benchmarks/bench_quantize.py).
Each is exported (fp32) and quantized (static int8, QDQ, calibrated on training rows), then compiled for
every target installed here (onnxruntime-cpu, openvino-cpu fp32/fp16/int8, native fp32/int8, litert when
its converter is installed). Each artifact runs through a Predictor (input validation included, one
intra-op thread each, so backends compare on equal terms) at batch 1 and 32; the artifacts of one model
and batch are timed round-robin, call by call, so machine noise hits them alike. Error: max abs
difference from the torch model's outputs over the held-out split; accuracy on it too.
Footprint: the installed size of each runtime (its wheel's files and the wheels it needs that others
do not), next to the native backend's extension module.
Prints JSON with the machine; writes a PNG with p50 at batch 1 and throughput at batch 32.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import importlib.util
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from report import emit  # noqa: E402 - benchmarks/report.py, beside this script

from edgefleet.cloud.compress.quantize import quantize_static_int8
from edgefleet.cloud.digits import load_splits, train_digits_cnn
from edgefleet.cloud.training import FitOptions, fit_classifier
from edgefleet.compilers import export_torch
from edgefleet.compilers.compile import compile_bundle
from edgefleet.core.signing import SigningKey
from edgefleet.edge_runtime.predictor import Predictor

BATCHES = (1, 32)
# runtime -> the wheels its backend needs beyond numpy (measured from the installed files)
RUNTIME_WHEELS = {"onnxruntime": ["onnxruntime"], "openvino": ["openvino", "openvino-telemetry"],
                  "litert": ["ai-edge-litert"]}


@dataclass
class Model:
    name: str
    torch_model: torch.nn.Module
    x_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass
class Variant:
    model: str
    target: str
    precision: str
    predictor: Predictor
    static_batch: int | None


def log(message: str) -> None:
    print(f"[bench_backends] {message}", file=sys.stderr, flush=True)


# models ---------------------------------------------------------------------------------------------------
def digits_cnn(epochs: int) -> Model:
    splits = load_splits()
    model = train_digits_cnn(splits, epochs=epochs, seed=0)
    return Model("digits-cnn", model.eval(), splits.x_train, splits.x_test, splits.y_test)


def wide_cnn(epochs: int) -> Model:
    from bench_quantize import WideCNN, upsample

    splits = load_splits()
    x_train, x_test = upsample(splits.x_train), upsample(splits.x_test)
    torch.manual_seed(0)
    model = WideCNN()
    fit_classifier(model, x_train, splits.y_train, FitOptions(epochs=max(1, epochs // 2)))
    return Model("wide-cnn", model.eval(), x_train, x_test, splits.y_test)


def mlp(epochs: int) -> Model:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project root, for examples/
    from examples.train_tabular import make_model

    data = load_breast_cancer()
    x = data.data.astype(np.float32)
    x = (x - x.mean(0)) / x.std(0)
    x_train, x_test, y_train, y_test = train_test_split(x, data.target, test_size=0.25, random_state=0,
                                                        stratify=data.target)
    torch.manual_seed(0)
    model = make_model()
    fit_classifier(model, x_train, y_train, FitOptions(epochs=epochs * 5))
    return Model("mlp", model.eval(), x_train, x_test, y_test)


MODELS: dict[str, Callable[[int], Model]] = {"digits-cnn": digits_cnn, "mlp": mlp, "wide-cnn": wide_cnn}


# bundles and artifacts ------------------------------------------------------------------------------------
def targets_here() -> list[tuple[str, dict, str]]:
    """(target, options, label) for every target whose runtime is installed here, fp32 bundles."""
    chosen = [("onnxruntime-cpu", {}, "onnxruntime")]
    if importlib.util.find_spec("openvino"):
        chosen += [("openvino-cpu", {}, "openvino")]
    if _native_ready():
        chosen += [("native", {}, "native")]
    if importlib.util.find_spec("litert_torch") and importlib.util.find_spec("ai_edge_litert"):
        chosen += [("litert", {}, "litert")]
    return chosen


def _native_ready() -> bool:
    try:
        from edgefleet.compilers.targets import target_function

        target_function("native")
        return True
    except Exception:  # noqa: BLE001 - not built here: the benchmark says so and goes on
        return False


def build_variants(model: Model, workdir: Path, key: SigningKey, public: Path) -> tuple[list[Variant], list[dict]]:
    skipped: list[dict] = []
    fp32 = export_torch(model.torch_model, model.x_train[:4], workdir / f"{model.name}-fp32", name=model.name,
                        version=1, reference_data=model.x_train, task="classification", signing_key=key)
    int8 = quantize_static_int8(fp32, workdir / f"{model.name}-int8", model.x_train[:256], signing_key=key).bundle
    variants: list[Variant] = []
    calibration = workdir / f"{model.name}-calibration.npy"
    np.save(calibration, model.x_train[:256])
    for precision, bundle in (("fp32", fp32), ("int8", int8)):
        for target, options, _label in targets_here():
            if target == "litert" and precision == "int8":  # litert quantizes from torch, calibrated like ORT
                options = {"precision": "int8", "calibration": str(calibration)}
            out = workdir / f"{model.name}-{precision}-{target}"
            started = time.perf_counter()
            try:
                compiled = compile_bundle(bundle, [target], out, options={target: options} if options else None,
                                          torch_model=model.torch_model, signing_key=key)
            except Exception as err:  # noqa: BLE001 - a target that cannot take this model is reported, not fatal
                skipped.append({"model": model.name, "target": target, "precision": precision, "reason": str(err)})
                log(f"{model.name} {precision} {target}: skipped ({err})")
                continue
            artifact = next(a for a in compiled.bundle.artifacts if a["target"] == target)
            predictor = Predictor(compiled.bundle, backends=[target], threads=1, trusted_keys=[public])
            variants.append(Variant(model.name, target, artifact["precision"], predictor, artifact.get("batch")))
            log(f"{model.name} {precision} {target}: compiled in {time.perf_counter() - started:.1f} s")
        if importlib.util.find_spec("openvino") and precision == "fp32":
            out = workdir / f"{model.name}-fp16-openvino"
            compiled = compile_bundle(bundle, ["openvino-cpu"], out, options={"openvino-cpu": {"precision": "fp16"}},
                                      signing_key=key)
            predictor = Predictor(compiled.bundle, backends=["openvino-cpu"], threads=1, trusted_keys=[public])
            variants.append(Variant(model.name, "openvino-cpu", "fp16", predictor, None))
    return variants, skipped


# measuring ------------------------------------------------------------------------------------------------
def run_all(predictor: Predictor, x: np.ndarray, static_batch: int | None) -> np.ndarray:
    step = static_batch or 64
    name = predictor.bundle.inputs[0].name
    out_name = predictor.bundle.outputs[0].name
    return np.concatenate([predictor.predict({name: x[i:i + step]})[out_name] for i in range(0, len(x), step)])


def quality(model: Model, variants: list[Variant]) -> dict[str, dict]:
    with torch.no_grad():
        want = model.torch_model(torch.from_numpy(model.x_test)).numpy()
    found = {}
    for v in variants:
        got = run_all(v.predictor, model.x_test, v.static_batch)
        found[key_of(v)] = {"max_abs_error_vs_torch": float(np.abs(got - want).max()),
                            "accuracy": float((got.argmax(1) == model.y_test).mean()),
                            "torch_accuracy": float((want.argmax(1) == model.y_test).mean())}
    return found


def time_round_robin(calls: dict[str, Callable[[], object]], runs: int) -> dict[str, dict]:
    """Each callable `runs` times, one call of each in turn (order rotated every round), after a warm-up."""
    names = list(calls)
    for name in names:
        for _ in range(10):
            calls[name]()
    times: dict[str, list[int]] = {n: [] for n in names}
    clock = time.perf_counter_ns
    for index in range(runs):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            start = clock()
            calls[name]()
            times[name].append(clock() - start)
    return {name: distribution(values) for name, values in times.items()}


def distribution(times_ns: list[int]) -> dict:
    ms = np.asarray(times_ns, dtype=np.float64) / 1e6
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "runs": len(times_ns)}


def latency(model: Model, variants: list[Variant], runs: int) -> dict[str, dict]:
    results: dict[str, dict] = {key_of(v): {} for v in variants}
    name = variants[0].predictor.bundle.inputs[0].name
    for batch in BATCHES:
        feed = {name: np.ascontiguousarray(model.x_test[:batch])}
        # a static-batch artifact (litert, an NPU IR) takes larger requests in chunks: timed as a user gets it
        calls = {key_of(v): (lambda p=v.predictor, f=feed: p.predict(f)) for v in variants}
        log(f"{model.name}: timing {len(calls)} artifacts at batch {batch}, {runs} calls each")
        for key, measured in time_round_robin(calls, runs).items():
            measured["samples_per_s"] = batch * 1e3 / measured["mean_ms"]
            results[key][f"batch_{batch}"] = measured
    for v in variants:
        results[key_of(v)]["static_batch"] = v.static_batch
    return results


def key_of(v: Variant) -> str:
    return f"{v.target}/{v.precision}"


# footprint ------------------------------------------------------------------------------------------------
def installed_bytes(dist: str) -> int | None:
    try:
        files = metadata.distribution(dist).files or []
    except metadata.PackageNotFoundError:
        return None
    return sum(f.locate().stat().st_size for f in files if f.locate().is_file())


def footprint() -> dict[str, dict]:
    sizes: dict[str, dict] = {}
    for runtime, wheels in RUNTIME_WHEELS.items():
        per_wheel = {w: installed_bytes(w) for w in wheels}
        if per_wheel[wheels[0]] is not None:
            sizes[runtime] = {"bytes": sum(v for v in per_wheel.values() if v), "wheels": per_wheel}
    try:
        import edgefleet.cpp_ext._native as native

        so = Path(native.__file__).stat().st_size
        py = sum(p.stat().st_size for p in Path(native.__file__).parent.glob("graph*.py"))
        backend = Path(importlib.util.find_spec("edgefleet.edge_runtime.backends.native").origin).stat().st_size \
            if importlib.util.find_spec("edgefleet.edge_runtime.backends.native") else 0
        sizes["native"] = {"bytes": so + py + backend, "extension_module": so, "python": py + backend}
    except ImportError:
        pass
    return sizes


# the report -----------------------------------------------------------------------------------------------
def ratios(results: dict) -> dict:
    """Each artifact's p50 over onnxruntime's at the same precision and batch (below 1: faster)."""
    found = {}
    for model, rows in results.items():
        for key, row in rows.items():
            target, precision = key.split("/")
            base = rows.get(f"onnxruntime-cpu/{precision}")
            if base is None or target == "onnxruntime-cpu":
                continue
            for batch in BATCHES:
                b = f"batch_{batch}"
                if b in row and b in base:
                    found[f"{model} {key} {b}"] = row[b]["p50_ms"] / base[b]["p50_ms"]
    return found


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    models = list(results)
    fig, axes = plt.subplots(2, len(models), figsize=(5 * len(models), 8), squeeze=False)
    for column, model in enumerate(models):
        rows = results[model]
        keys = list(rows)
        panels = ((1, "p50_ms", 1e-3, "p50 latency, batch 1 (s)"),
                  (32, "samples_per_s", 1, "throughput, batch 32 (samples/s)"))
        for row_index, (batch, metric, scale, label) in enumerate(panels):
            ax = axes[row_index][column]
            values = [rows[k].get(f"batch_{batch}", {}).get(metric, 0.0) * scale for k in keys]
            ax.xaxis.set_major_formatter(EngFormatter())
            ax.barh(keys, values, color=["#4c72b0" if "fp32" in k else "#dd8452" if "int8" in k else "#55a868"
                                         for k in keys])
            ax.set_title(f"{model}: {label}", fontsize=10)
            ax.invert_yaxis()
            ax.tick_params(labelsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(report: dict) -> str:
    """The results as a Markdown table (the README's), one row per model, artifact and precision."""
    lines = ["| model | artifact | p50 batch 1 | p99 batch 1 | samples/s batch 32 | p50 vs onnxruntime (b1, b32) "
             "| max abs error vs torch | accuracy (torch) |", "|---|---|---|---|---|---|---|---|"]
    for model, rows in report["results"].items():
        for key, row in rows.items():
            quality = report["quality"][model][key]
            ratio = [report["p50_vs_onnxruntime"].get(f"{model} {key} batch_{b}") for b in BATCHES]
            shown = "—" if ratio[0] is None else f"{ratio[0]:.2f}×, {ratio[1]:.2f}×"
            b1, b32 = row["batch_1"], row["batch_32"]
            static = " (static batch 1)" if row.get("static_batch") == 1 else ""
            lines.append(f"| {model} | {key}{static} | {_time(b1['p50_ms'])} | {_time(b1['p99_ms'])} | "
                         f"{b32['samples_per_s']:,.0f} | {shown} | {quality['max_abs_error_vs_torch']:.2g} | "
                         f"{quality['accuracy']:.4f} ({quality['torch_accuracy']:.4f}) |")
    return "\n".join(lines)


def _time(ms: float) -> str:
    return f"{ms * 1e3:.1f} µs" if ms < 1 else f"{ms:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--runs", type=int, default=400, help="timed calls per artifact and batch")
    parser.add_argument("--models", default="digits-cnn,mlp,wide-cnn")
    parser.add_argument("--out", type=Path, default=Path("runs/backends.json"))
    parser.add_argument("--plot", type=Path, default=Path("runs/backends.png"))
    parser.add_argument("--markdown", type=Path, help="re-render a saved JSON report as a Markdown table and exit")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    key = SigningKey.generate()
    report: dict = {"benchmark": "backends", "threads": 1, "batches": list(BATCHES), "results": {}, "quality": {},
                    "skipped": [], "targets": [t for t, _, _ in targets_here()]}
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-backends-") as tmp:
        work = Path(tmp)
        _, public = key.save(work / "keys", "bench")
        for name in args.models.split(","):
            log(f"{name}: training and exporting")
            model = MODELS[name](args.epochs)
            variants, skipped = build_variants(model, work / name, key, public)
            report["skipped"] += skipped
            report["quality"][name] = quality(model, variants)
            report["results"][name] = latency(model, variants, args.runs)
            for v in variants:
                v.predictor.close()
    report["p50_vs_onnxruntime"] = ratios(report["results"])
    report["footprint"] = footprint()
    if args.plot:
        plot(report["results"], args.plot)
        report["plot"] = str(args.plot)
    emit(report, args.out)
    print(markdown(report), file=sys.stderr)


if __name__ == "__main__":
    main()
