"""What a YOLO detector's answer and telemetry cost per request, beside each other (core/detection.py).

    python benchmarks/bench_detection_answer.py [--runs 200] [--out runs/detection_answer.json]

One request of a YOLOv5 640x640 export's size ([1, 25200, 85]: 80 classes) and of a YOLOv8 one ([1, 84,
8400]), drawn as a trained head's outputs look (most objectness near 0, a few hundred boxes above 0.25):
- telemetry: the output summary's rows (candidate count and scores at the threshold), per request;
- answer: the HTTP answer, candidates + per-class NMS + max_detections, at the threshold 0.25;
- answer_all: the same at ?score_threshold=0, the worst case (NMS bounded to MAX_CANDIDATES).
Times are interleaved call by call (report.interleaved); the ratios are against telemetry's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from report import emit, interleaved  # noqa: E402 - benchmarks/report.py, beside this script

from edgefleet.core.answers import AnswerOptions, task_answer
from edgefleet.core.output_summary import plan_summaries, summary_columns
from edgefleet.core.schema import TensorSpec


def yolo_output(layout: str, rng: np.random.Generator) -> np.ndarray:
    """[1, D, 85] (yolov5) or [1, 84, D] (yolov8) with a trained head's spread of scores."""
    count = 25200 if layout == "yolov5" else 8400
    centre = rng.uniform(0, 640, (count, 2))
    size = np.exp(rng.normal(3.5, 0.8, (count, 2)))
    logits = rng.normal(-5.0, 1.5, (count, 80))
    hot = rng.choice(count, 300, replace=False)  # a few objects, each seen by neighbouring cells
    logits[hot, rng.integers(0, 80, 300)] = rng.normal(2.0, 1.0, 300)
    classes = 1 / (1 + np.exp(-logits))
    if layout == "yolov5":
        objectness = 1 / (1 + np.exp(-np.where(np.isin(np.arange(count), hot), 3.0, -5.0)))
        return np.concatenate([centre, size, objectness[:, None], classes], 1)[None].astype(np.float32)
    return np.concatenate([centre, size, classes], 1).T[None].astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = {}
    for layout, shape in (("yolov5", ("batch", "D", 85)), ("yolov8", ("batch", 84, "D"))):
        spec = TensorSpec("output0", "float32", shape)
        interface = {"task": "detection", "detection": {"layout": layout, "output": "output0",
                                                        "score_threshold": 0.25}}
        outputs = {"output0": yolo_output(layout, rng)}
        (summary,) = plan_summaries("detection", [spec], interface["detection"])
        kept = len(task_answer(interface, [spec], outputs)["detections"][0])
        calls = {
            "telemetry": lambda s=summary, o=outputs: summary_columns(s, o["output0"]),
            "answer": lambda i=interface, s=spec, o=outputs: task_answer(i, [s], o),
            "answer_all": lambda i=interface, s=spec, o=outputs: task_answer(i, [s], o,
                                                                             AnswerOptions(score_threshold=0.0)),
        }
        times = interleaved(calls, args.runs, warmup=10)
        p50 = {name: float(np.percentile(t, 50)) for name, t in times.items()}
        candidates = int((summary_columns(summary, outputs["output0"])[0]).sum())
        rows[layout] = {"shape": list(outputs["output0"].shape), "candidates_at_0.25": candidates,
                        "detections_after_nms": kept, "p50_us": p50,
                        "answer_over_telemetry": p50["answer"] / p50["telemetry"],
                        "answer_all_over_telemetry": p50["answer_all"] / p50["telemetry"]}
    emit({"benchmark": "detection_answer", "runs": args.runs, "layouts": rows}, args.out)


if __name__ == "__main__":
    main()
