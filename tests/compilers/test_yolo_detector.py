"""Single-output YOLO detectors end to end (issue 12): yolo_kit's YOLOv5 head ([batch, D, 5 + C], objectness),
YOLOv8 head ([batch, 4 + C, D], no objectness) and that head transposed ([batch, D, 4 + C]), exported to ONNX
with dynamic height and width and brought in with `edgefleet import` (yolov5 declared with --detection-layout,
yolov8 inferred from its shape with --task detection, the transposed one inferred because the class names
settle 4 + C against 5 + C), on natural photo crops. The manifest declares the layout; the drift profile, a device's
telemetry window, the answer over real HTTP, `edgefleet predict` and compile's quality all read it alike.
Every expectation is computed here from onnxruntime's raw output with plain numpy, not by the code under
test; NMS is checked by the properties that define greedy NMS rather than by a second implementation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from edgefleet.cloud.drift import OK, WindowCounts, evaluate
from edgefleet.compilers.compile import compile_bundle
from edgefleet.core.bundle import Bundle
from edgefleet.core.signing import SigningKey
from edgefleet.core.telemetry import parse_telemetry
from edgefleet.edge_runtime.http_api import create_app
from edgefleet.edge_runtime.model_host import ModelHost
from edgefleet.edge_runtime.predictor import Predictor
from tests.cli.test_bundle_commands import assert_user_error, edgefleet
from tests.compilers.yolo_kit import CLASS_NAMES, photos, yolo_onnx
from tests.edge_runtime.http_kit import serve
from tests.edge_runtime.test_telemetry_tasks import as_lists, served

REFERENCE = 48
IOU = 0.45  # the yolo layouts' default


@dataclass(frozen=True)
class Imported:
    layout: str
    root: Path
    onnx: Path
    public: Path
    key: SigningKey
    threshold: float
    reference: np.ndarray
    stdout: str


def run(path: Path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["output0"], {"images": images})[0]


def candidates(layout: str, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores [N, D], classes [N, D], boxes x1 y1 x2 y2 [N, D, 4]) from a YOLO output, as the exports
    document them (a transposed YOLOv8 output is read as YOLOv8's after transposing it back)."""
    if layout == "yolov8-transposed":
        raw, layout = raw.transpose(0, 2, 1), "yolov8"
    if layout == "yolov5":
        centre, scores, classes = raw[..., :4], raw[..., 4] * raw[..., 5:].max(-1), raw[..., 5:].argmax(-1)
    else:
        centre, scores, classes = raw[:, :4].transpose(0, 2, 1), raw[:, 4:].max(1), raw[:, 4:].argmax(1)
    centre = centre.astype(np.float64)
    boxes = np.concatenate([centre[..., :2] - centre[..., 2:] / 2, centre[..., :2] + centre[..., 2:] / 2], -1)
    return scores.astype(np.float64), classes, boxes


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def check_nms(found: list[dict], scores: np.ndarray, classes: np.ndarray, boxes: np.ndarray, threshold: float,
              limit: int = 100) -> int:
    """One sample's answer against its raw candidates: kept detections are candidates, best first, no two of
    a class overlap beyond IOU, and every candidate left out overlaps a better kept one of its class (or the
    answer is full). Returns how many candidates NMS dropped."""
    index = {tuple(np.round(boxes[d], 4)): d for d in range(len(scores))}
    kept = [index[tuple(np.round(f["box"], 4))] for f in found]
    assert [f["score"] for f in found] == pytest.approx([scores[d] for d in kept], abs=1e-6)
    assert [f["class"] for f in found] == [CLASS_NAMES[classes[d]] for d in kept]
    assert [f["class_id"] for f in found] == [int(classes[d]) for d in kept]
    assert all(scores[d] >= threshold for d in kept) and len(kept) <= limit
    assert all(a["score"] >= b["score"] for a, b in zip(found, found[1:], strict=False))
    for i, a in enumerate(kept):
        for b in kept[i + 1:]:
            assert classes[a] != classes[b] or iou(boxes[a], boxes[b]) <= IOU + 1e-9
    dropped = [d for d in np.flatnonzero(scores >= threshold) if d not in kept]
    if len(kept) < limit:
        for d in dropped:
            assert any(classes[k] == classes[d] and scores[k] >= scores[d] and iou(boxes[k], boxes[d]) > IOU - 1e-9
                       for k in kept), d
    return len(dropped)


def gap_threshold(scores: np.ndarray) -> float:
    """A score threshold near the median (untrained heads score in a narrow band: about half are candidates)
    in the middle of the widest gap between neighbouring scores there, so that a backend whose scores differ
    in the last float32 bits (OpenVINO's kernels vs onnxruntime's) counts the same candidates."""
    ranked = np.unique(scores.astype(np.float32))
    middle = len(ranked) // 2
    window = ranked[middle - len(ranked) // 10:middle + len(ranked) // 10]
    widest = int(np.argmax(np.diff(window)))
    return float((window[widest] + window[widest + 1]) / 2)


@pytest.fixture(scope="module", params=["yolov5", "yolov8", "yolov8-transposed"])
def imported(request, tmp_path_factory) -> Imported:
    layout, work = request.param, tmp_path_factory.mktemp(request.param)
    path = yolo_onnx(layout, work / f"{layout}.onnx")
    reference = photos(REFERENCE, seed=0)
    np.savez(work / "reference.npz", images=reference)
    (work / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    key = SigningKey.generate()
    private, public = key.save(work / "keys", "release")
    scores = candidates(layout, run(path, reference))[0]
    threshold = gap_threshold(scores)
    declared = ["--detection-layout", "yolov5"] if layout == "yolov5" else ["--task", "detection"]  # the
    # transposed YOLOv8 is inferred: 8 = 4 + its 4 class names (5 + 4 would be YOLOv5)
    result = edgefleet("import", str(path), "--out", str(work / "bundle"), "--name", layout, "--version", "1",
                       "--key", str(private), "--reference-data", str(work / "reference.npz"), "--class-names",
                       str(work / "classes.txt"), "--score-threshold", repr(threshold), *declared)
    assert result.returncode == 0, result.stderr
    return Imported(layout, work / "bundle", path, public, key, threshold, reference, result.stdout)


def test_the_manifest_declares_the_layout_and_the_profile_counts_candidates(imported):
    bundle = Bundle.open(imported.root)
    interface = bundle.manifest["interface"]
    assert interface["task"] == "detection" and interface["class_names"] == CLASS_NAMES
    assert interface["detection"] == {"layout": imported.layout, "output": "output0",
                                      "score_threshold": imported.threshold, "iou_threshold": IOU}
    assert f"detection layout {imported.layout} on output output0" in imported.stdout
    assert [s.shape[:1] for s in bundle.inputs] == [("batch",)] and bundle.inputs[0].shape[2] != \
        bundle.inputs[0].shape[3]  # height and width stay two symbols
    (entry,) = bundle.reference_profile()["outputs"]
    scores = candidates(imported.layout, run(imported.onnx, imported.reference))[0]
    counts = np.asarray(entry["counts"])
    assert (entry["output"], entry["summary"], entry["names"]) == ("output0", "detections", ["count", "score"])
    assert counts[0].sum() == REFERENCE  # one count per image
    assert counts[1].sum() == (scores >= imported.threshold).sum() > REFERENCE  # one score per candidate


def test_the_device_window_equals_the_profile_and_drift_judges_the_score_row(imported):
    """The device bins the same candidates as the profile (same runtime, same batch): equal counts. 48
    images are too few for the count row (min_samples 100) while the score row holds thousands of
    candidates: the score row is judged on its own, and darkened photos move it."""
    bundle = Bundle.open(imported.root)
    profile = bundle.reference_profile()
    window, _ = served(bundle, imported.public, [{"images": imported.reference}])
    assert as_lists(window)[1] == [profile["outputs"][0]["counts"]]
    report = evaluate(WindowCounts.from_telemetry(parse_telemetry(window.to_payload())), profile)
    signals = report["prediction_drift"]["signals"]
    assert signals["output0.count"]["verdict"] == "insufficient" and signals["output0.score"]["verdict"] == OK
    assert report["prediction_drift"]["verdict"] == OK
    dark, _ = served(bundle, imported.public, [{"images": photos(REFERENCE, seed=1, test=True) * 0.3}])
    report = evaluate(WindowCounts.from_telemetry(parse_telemetry(dark.to_payload())), profile)
    assert report["prediction_drift"]["drifting"] == ["output0.score"], report["prediction_drift"]


def ask(url: str, images: np.ndarray, params: dict | list | None = None) -> httpx.Response:
    body = json.dumps({"inputs": {"images": images.tolist()}})
    with httpx.Client(timeout=60) as client:
        return client.post(url, content=body, params=params, headers={"Content-Type": "application/json"})


def test_served_answer_is_nms_boxes_with_classes_at_two_image_sizes(imported):
    with Predictor(imported.root, trusted_keys=[imported.public], threads=1) as predictor, \
            serve(create_app(ModelHost(predictor))) as base:
        url = base + "/v1/predict"
        dropped = 0
        for images in (photos(3, seed=2, test=True), photos(2, seed=3, test=True, size=96)[:, :, :80, :]):
            answer = ask(url, images).json()
            raw = np.asarray(answer["outputs"]["output0"], dtype=np.float32)
            np.testing.assert_array_equal(raw, run(imported.onnx, images))  # the same runtime on the same file
            assert answer["task"] == "detection" and answer["score_threshold"] == imported.threshold
            assert answer["iou_threshold"] == IOU and len(answer["detections"]) == len(images)
            scores, classes, boxes = candidates(imported.layout, raw)
            for i, found in enumerate(answer["detections"]):
                assert found, "every photo has candidates at the median threshold"
                dropped += check_nms(found, scores[i], classes[i], boxes[i], imported.threshold)
        assert dropped > 0  # overlapping candidates of an untrained head: NMS had work to do

        everything = ask(url, photos(1, seed=4, test=True, size=96), {"score_threshold": "0"}).json()
        scores, classes, boxes = candidates(imported.layout, np.asarray(everything["outputs"]["output0"]))
        assert everything["score_threshold"] == 0.0
        check_nms(everything["detections"][0], scores[0], classes[0], boxes[0], 0.0)
        stricter = ask(url, photos(3, seed=2, test=True), {"score_threshold": "0.99"}).json()
        assert stricter["score_threshold"] == 0.99 and stricter["detections"] == [[], [], []]


BAD_THRESHOLDS = [({"score_threshold": "1.5"}, "score_threshold must be a number from 0 to 1, got '1.5'"),
                  ({"score_threshold": "-0.1"}, "score_threshold must be a number from 0 to 1, got '-0.1'"),
                  ({"score_threshold": "nan"}, "score_threshold must be a number from 0 to 1, got 'nan'"),
                  ({"score_threshold": "high"}, "score_threshold must be a number from 0 to 1, got 'high'"),
                  ({"score_threshold": "0." + "5" * 40}, "score_threshold must be a number from 0 to 1, got '0.55"),
                  ([("score_threshold", "0.2"), ("score_threshold", "0.3")],
                   "query parameter score_threshold is given more than once"),
                  ({"top_k": "3"}, "top_k does not apply to this model: its task is detection, which takes "
                                   "?score_threshold=")]


def test_bad_score_thresholds_are_one_400_each_and_the_server_keeps_serving(imported):
    images = photos(2, seed=2, test=True)
    body = json.dumps({"inputs": {"images": images.tolist()}})
    with Predictor(imported.root, trusted_keys=[imported.public], threads=1) as predictor, \
            serve(create_app(ModelHost(predictor))) as base, httpx.Client(timeout=60) as client:
        for params, message in BAD_THRESHOLDS:
            answer = client.post(base + "/v1/predict", content=body, params=params,
                                 headers={"Content-Type": "application/json"})
            assert answer.status_code == 400 and message in answer.json()["detail"], (params, answer.text)
        good = client.post(base + "/v1/predict", content=body, headers={"Content-Type": "application/json"})
        assert good.status_code == 200 and len(good.json()["detections"]) == 2


def test_cli_predict_takes_a_score_threshold_and_refuses_a_bad_one(imported, tmp_path):
    np.save(tmp_path / "images.npy", photos(2, seed=2, test=True))
    trust = ["--trust", str(imported.public)]
    shown = edgefleet("predict", str(imported.root), "--input", str(tmp_path / "images.npy"), "--score-threshold",
                      "0.25", *trust)
    assert shown.returncode == 0, shown.stderr
    assert "detections (score >= 0.25, NMS IoU 0.45)" in shown.stdout
    refused = edgefleet("predict", str(imported.root), "--input", str(tmp_path / "images.npy"), "--score-threshold",
                        "2", *trust)
    assert_user_error(refused, "score_threshold must be a number from 0 to 1, got '2'")


def test_compile_measures_candidate_count_agreement_on_onnxruntime_and_openvino(imported, tmp_path):
    """Both CPU targets run the detector and agree with the golden candidates. OpenVINO runs the IR with
    its precision hint pinned to f32 (the target's default; bf16 on an AMX Xeon would move scores by
    ~1e-3): the same candidates at the gap threshold, scores within 1e-4 (float32 kernels differ in the
    last bits; sigmoid scores are below 1)."""
    result = compile_bundle(imported.root, ["onnxruntime-cpu", "openvino-cpu"], tmp_path / "c",
                            signing_key=imported.key)
    assert not result.refused, result.refused
    targets = {c.target: c.artifact for c in result.compiled}
    assert targets["openvino-cpu"]["options"]["precision_hint"] == "f32"
    assert targets["openvino-cpu"]["executed_precision"] == "f32"
    for target, artifact in targets.items():
        quality = artifact["numeric_error"]["quality"]
        assert quality["task"] == "detection" and quality["count_agreement"] == 1.0, (target, quality)
        assert quality["score_threshold"] == imported.threshold and quality["max_score_error"] < 1e-4, target
    assert targets["onnxruntime-cpu"]["numeric_error"]["quality"]["max_score_error"] < 1e-5


def test_an_unclear_or_wrong_layout_is_refused_in_one_line_and_leaves_nothing(imported, tmp_path):
    """Without class names a [batch, D, 9] or [batch, D, 8] output could be YOLOv5 or a transposed YOLOv8
    export: no guess. A declared layout the output's shape cannot hold is refused by name, and class names
    that do not fit the declared layout's channels are refused (a transposed YOLOv8 declared yolov5)."""
    common = ["--out", str(tmp_path / "b"), "--name", "y", "--version", "1"]
    if imported.layout != "yolov8":
        channels = 9 if imported.layout == "yolov5" else 8
        unclear = edgefleet("import", str(imported.onnx), *common, "--task", "detection")
        assert_user_error(unclear, f"a detector's layout is not clear from its outputs (output0 float32[batch, D, "
                                   f"{channels}])")
        assert "--detection-layout L" in unclear.stderr
    other = "yolov5" if imported.layout == "yolov8" else "yolov8"
    wanted = "[batch, 4 + classes, D]" if other == "yolov8" else "[batch, D, 5 + classes]"
    wrong = edgefleet("import", str(imported.onnx), *common, "--detection-layout", other)
    assert_user_error(wrong, f"detection layout {other} needs an output {wanted}")
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    mismatch = edgefleet("import", str(imported.onnx), *common, "--detection-layout", imported.layout,
                         "--class-names", str(tmp_path / "three.txt"))
    assert_user_error(mismatch, "holds 4 class scores, not one per class name (3)")
    if imported.layout == "yolov8-transposed":
        (tmp_path / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
        misread = edgefleet("import", str(imported.onnx), *common, "--detection-layout", "yolov5",
                            "--class-names", str(tmp_path / "classes.txt"))
        assert_user_error(misread, "detection layout yolov5: 'output0' (float32[batch, D, 8]) holds 3 class "
                                   "scores, not one per class name (4)")
    assert not (tmp_path / "b").exists()
