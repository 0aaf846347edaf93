"""What serving an imported `.onnx` costs over a bare onnxruntime session: batch 1, one process.

    python benchmarks/bench_onnx_import.py --runs 20000 --out runs/onnx-import.json

Builds three ONNX files from public architectures (tests/compilers/import_kit.py: a MobileNetV2-style CNN
on 32x32 images, a BERT-style encoder at 16 tokens, a regression MLP), imports each with `import_model`,
then times, call by call interleaved, Predictor.predict (backends=["onnxruntime"], one thread, no
telemetry) and a bare InferenceSession.run on the source file with the same session options, as an
application would call it. Prints JSON per model: both latency distributions (p50, mean, in µs), the
p50 ratio against the goal (<= 1.05x), and the machine. Absolute times are never a gate.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
from report import emit, interleaved, ratio_row  # noqa: E402 - benchmarks/report.py, beside this script

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.compilers.import_kit builds the models
GOAL = 1.05


def models(workdir: Path) -> dict[str, tuple[Path, dict[str, np.ndarray]]]:
    """name -> (ONNX file, one batch-1 request)."""
    from tests.compilers import import_kit as kit

    rng = np.random.default_rng(0)
    return {
        "mobilenet_cnn": (kit.mobilenet_onnx(workdir / "mobilenet.onnx"),
                          {"image": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)}),
        "encoder_16_tokens": (kit.encoder_onnx(workdir / "encoder.onnx"),
                              {"input_ids": rng.integers(0, 64, (1, 16)).astype(np.int64),
                               "attention_mask": np.ones((1, 16), np.int64)}),
        "regression_mlp": (kit.mlp_onnx(workdir / "mlp.onnx"),
                           {"features": rng.standard_normal((1, 8)).astype(np.float32)}),
    }



def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20000, help="interleaved pairs of calls per model")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    import onnxruntime as ort

    from edgefleet.compilers.import_model import import_model
    from edgefleet.core.signing import SigningKey
    from edgefleet.edge_runtime.backends.onnxruntime import session_options
    from edgefleet.edge_runtime.predictor import Predictor

    results = {}
    with tempfile.TemporaryDirectory(prefix="edgefleet-onnx-import-") as workdir:
        work = Path(workdir)
        key = SigningKey.generate()
        _, public = key.save(work / "keys", "bench")
        for name, (source, feed) in models(work).items():
            bundle = import_model(source, work / name, name=name.replace("_", "-"), version=1, signing_key=key)
            session = ort.InferenceSession(str(source), session_options(1), providers=["CPUExecutionProvider"])
            with Predictor(bundle.root, backends=["onnxruntime"], trusted_keys=[public], threads=1) as predictor:
                times = interleaved({"predictor": lambda p=predictor, f=feed: p.predict(f),
                                 "bare": lambda s=session, f=feed: s.run(None, f)}, args.runs, warmup=1000)
            results[name] = ratio_row(times)
    summary = {"benchmark": "onnx_import", "batch": 1, "threads": 1, "runs": args.runs, "goal_ratio": GOAL,
               "results": results, "meets_goal": all(r["ratio_p50"] <= GOAL for r in results.values())}
    emit(summary, args.out)
    return summary


if __name__ == "__main__":
    main()
