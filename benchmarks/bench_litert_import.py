"""What serving an imported `.tflite` costs over a bare LiteRT interpreter: batch 1, one process.

    python benchmarks/bench_litert_import.py --runs 20000 --repeats 5 --out runs/litert-import.json

Imports each committed fixture (tests/fixtures/tflite: a tiny CNN in float, in full int8 with int8
inputs and outputs, and the float one without a SignatureDef) with `import_model`, then times, call by
call interleaved, Predictor.predict (backends=["litert"], no telemetry) and a bare ai-edge-litert
Interpreter on the same file and row (set_tensor / invoke / get_tensor, int8 rows quantized and
dequantized with the file's scale and zero point, as an application would). The interleaved run is
repeated (--repeats, a fresh pair of calls each time). Prints JSON per file: both latency
distributions over all repeats (p50, mean, in µs), the p50 ratio of each repeat, their median (held
against the goal, <= 1.05x) and spread, and the machine. The fixtures run in ~2-8 µs, so the ratio is
the Predictor's fixed cost per call (the remembered input signature, the interpreter's turn, one dict)
against a near-empty model: the worst case; absolute times are never a gate. The bare loop is not
thread-safe; the Predictor is (edge_runtime/backends/litert.py, "Hot path").
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
from report import emit, interleaved, ratio_row  # noqa: E402 - benchmarks/report.py, beside this script

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "tflite"
NAMES = ("cnn_float", "cnn_int8", "cnn_nosig")
GOAL = 1.05


def bare_call(path: Path, row: np.ndarray):  # noqa: ANN201 - a closure
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    (in_scale, in_zero), (out_scale, out_zero) = inp["quantization"], out["quantization"]
    info = np.iinfo(inp["dtype"]) if in_scale else None

    def call() -> np.ndarray:
        value = row
        if in_scale:
            value = np.clip(np.rint(row / np.float32(in_scale)) + in_zero, info.min, info.max).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], value)
        interpreter.invoke()
        result = interpreter.get_tensor(out["index"])
        return (result.astype(np.float32) - np.float32(out_zero)) * np.float32(out_scale) if out_scale else result

    return call



def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20000, help="interleaved pairs of calls per file and repeat")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved runs per file (median and spread)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from edgefleet.compilers.import_model import import_model
    from edgefleet.core.signing import SigningKey
    from edgefleet.edge_runtime.predictor import Predictor

    rows = np.load(FIXTURES / "reference.npz")["pixels"][:1].copy()
    results = {}
    with tempfile.TemporaryDirectory(prefix="edgefleet-litert-import-") as workdir:
        key = SigningKey.generate()
        _, public = key.save(Path(workdir) / "keys", "bench")
        for name in NAMES:
            bundle = import_model(FIXTURES / f"{name}.tflite", Path(workdir) / name, name=name.replace("_", "-"),
                                  version=1, signing_key=key)
            repeats = []
            with Predictor(bundle.root, backends=["litert"], trusted_keys=[public], threads=1) as predictor:
                feed = {bundle.inputs[0].name: rows}
                for _ in range(args.repeats):
                    repeats.append(interleaved({"predictor": lambda p=predictor, f=feed: p.predict(f),
                                                "bare": bare_call(FIXTURES / f"{name}.tflite", rows)},
                                               args.runs, warmup=2000))
            ratios = [ratio_row(times)["ratio_p50"] for times in repeats]
            row = ratio_row({k: np.concatenate([times[k] for times in repeats]) for k in ("predictor", "bare")})
            results[name] = {**row, "ratio_p50": round(float(np.median(ratios)), 3), "ratio_p50_repeats": ratios}
    summary = {"benchmark": "litert_import", "batch": 1, "threads": 1, "runs": args.runs, "repeats": args.repeats,
               "goal_ratio": GOAL, "results": results,
               "meets_goal": all(r["ratio_p50"] <= GOAL for r in results.values())}
    emit(summary, args.out)
    return summary


if __name__ == "__main__":
    main()
