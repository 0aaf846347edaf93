"""Detection layouts (core/detection.py) on hand-made outputs whose answers are worked out here: YOLOv5's
[batch, D, 5 + C], YOLOv8's [batch, 4 + C, D] and its transpose [batch, D, 4 + C] read as the same
detections, per-class NMS, the bound on detections, what is inferred and what must be declared, and the
?score_threshold option."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.core import detection as det
from edgefleet.core.answers import AnswerOptionError, AnswerOptions, parse_options, task_answer
from edgefleet.core.output_summary import OutputSummary, plan_summaries, summary_columns
from edgefleet.core.schema import TensorSpec
from edgefleet.core.task_quality import golden_quality

V5 = TensorSpec("output0", "float32", ("batch", "D", 7))  # 2 classes
V8 = TensorSpec("output0", "float32", ("batch", 6, "D"))
V8T = TensorSpec("output0", "float32", ("batch", "D", 6))
NAMES = ["cat", "dog"]
# four candidates of one image: (cx, cy, w, h), objectness, class scores
ROWS = [((10, 10, 10, 10), 0.9, (0.9, 0.1)),   # cat 0.81
        ((11, 10, 10, 10), 0.9, (0.8, 0.1)),   # cat 0.72, IoU 0.82 with the first: suppressed
        ((11, 10, 10, 10), 0.9, (0.1, 0.7)),   # dog 0.63: same place, other class, kept
        ((40, 40, 4, 8), 0.5, (0.2, 0.5))]     # dog 0.25, below 0.3


def v5_output() -> np.ndarray:
    return np.array([[[*box, obj, *cls] for box, obj, cls in ROWS]], dtype=np.float32)


def v8_output() -> np.ndarray:
    """The same detections as YOLOv8 gives them: no objectness, so class scores are objectness x class."""
    rows = [[*box, *(obj * c for c in cls)] for box, obj, cls in ROWS]
    return np.array([rows], dtype=np.float32).transpose(0, 2, 1)


def v8_transposed_output() -> np.ndarray:
    return np.ascontiguousarray(v8_output().transpose(0, 2, 1))


def interface(layout: str, **detection) -> dict:
    return {"task": "detection", "class_names": NAMES,
            "detection": {"layout": layout, "output": "output0", "score_threshold": 0.3, **detection}}


WANT = [{"score": pytest.approx(0.81), "box": [5.0, 5.0, 15.0, 15.0], "class": "cat", "class_id": 0},
        {"score": pytest.approx(0.63), "box": [6.0, 5.0, 16.0, 15.0], "class": "dog", "class_id": 1}]


@pytest.mark.parametrize(("layout", "spec", "output"), [("yolov5", V5, v5_output), ("yolov8", V8, v8_output),
                                                       ("yolov8-transposed", V8T, v8_transposed_output)])
def test_every_yolo_layout_answer_nms_boxes_as_corners_with_classes(layout, spec, output):
    answer = task_answer(interface(layout), [spec], {"output0": output()})
    assert answer == {"detections": [WANT], "score_threshold": 0.3, "iou_threshold": 0.45}
    loose = task_answer(interface(layout, iou_threshold=0.9), [spec], {"output0": output()})
    assert [d["score"] for d in loose["detections"][0]] == pytest.approx([0.81, 0.72, 0.63])
    lower = task_answer(interface(layout), [spec], {"output0": output()}, AnswerOptions(score_threshold=0.2))
    assert [d["class"] for d in lower["detections"][0]] == ["cat", "dog", "dog"] and lower["score_threshold"] == 0.2


def test_telemetry_counts_candidates_before_nms_and_quality_compares_them():
    (summary,) = plan_summaries("detection", [V5], interface("yolov5")["detection"])
    count, score = summary_columns(summary, v5_output())
    assert count.tolist() == [[3.0]] and score[:, 0] == pytest.approx([0.81, 0.72, 0.63])
    moved = v5_output()
    moved[0, 2, 4] = 0.3  # the dog at 0.63 drops to 0.21
    quality = golden_quality(interface("yolov5"), [V5], {"output0": v5_output()}, {"output0": moved})
    assert quality == {"task": "detection", "examples": 1, "count_agreement": 0.0,
                       "max_score_error": pytest.approx(0.42), "score_threshold": 0.3}


def test_nms_keeps_at_most_max_detections_best_first():
    rng = np.random.default_rng(0)
    many = np.zeros((1, 500, 7), np.float32)
    many[0, :, 0] = np.arange(500) * 20.0  # 500 boxes side by side, none overlapping
    many[0, :, 2:4] = 10.0
    many[0, :, 4] = rng.uniform(0.5, 1.0, 500)
    many[0, :, 5] = 1.0
    found = task_answer(interface("yolov5"), [V5], {"output0": many})["detections"][0]
    assert len(found) == det.MAX_DETECTIONS
    assert [d["score"] for d in found] == pytest.approx(np.sort(many[0, :, 4])[::-1][:det.MAX_DETECTIONS])
    few = task_answer(interface("yolov5", max_detections=3), [V5], {"output0": many})["detections"][0]
    assert len(few) == 3


def test_boxes_and_scores_get_nms_only_when_the_manifest_sets_it():
    boxes = TensorSpec("boxes", "float32", ("batch", 2, 4))
    scores = TensorSpec("scores", "float32", ("batch", 2))
    outputs = {"boxes": np.array([[[0, 0, 10, 10], [1, 0, 11, 10]]], np.float32),
               "scores": np.array([[0.9, 0.8]], np.float32)}
    plain = {"task": "detection", "detection": {"scores": "scores", "score_threshold": 0.5}}
    assert len(task_answer(plain, [boxes, scores], outputs)["detections"][0]) == 2
    suppressed = {"task": "detection", "detection": {**plain["detection"], "iou_threshold": 0.5}}
    answer = task_answer(suppressed, [boxes, scores], outputs)
    assert answer["iou_threshold"] == 0.5 and len(answer["detections"][0]) == 1


def test_the_layout_is_inferred_only_when_unambiguous():
    assert det.resolve([V8], None).layout == "yolov8"  # D is the last axis, 4 + C the fixed one
    assert det.resolve([V5], None) is None  # [D, 7]: YOLOv5, or a transposed YOLOv8?
    assert det.resolve([V5], None, ["a", "b"]).layout == "yolov5"  # 7 = 5 + 2 classes
    assert det.resolve([V5], None, ["a", "b", "c"]).layout == "yolov8-transposed"  # 7 = 4 + 3
    assert det.resolve([V5], None, ["a"]) is None  # 7 is neither 5 + 1 nor 4 + 1
    assert det.resolve([V8T], None) is None  # [D, 6]: YOLOv5 with 1 class or a transposed YOLOv8 with 2
    assert det.resolve([V8T], {"layout": "yolov8-transposed"}).layout == "yolov8-transposed"  # named: read
    assert det.resolve([V8T], {"layout": "yolov5"}).layout == "yolov5"  # the user's word is taken
    transposed = TensorSpec("output0", "float32", ("batch", 8400, 84))  # a 640x640 export, transposed
    assert det.resolve([transposed], None) is None
    assert det.resolve([transposed], None, [f"c{i}" for i in range(80)]).to_manifest() == {
        "layout": "yolov8-transposed", "output": "output0", "score_threshold": 0.5, "iou_threshold": 0.45}
    with pytest.raises(ValueError, match=r"layout yolov8-transposed needs an output \[batch, D, 4 \+ classes\]"):
        det.resolve([TensorSpec("output0", "float32", ("batch", "D", 4))], {"layout": "yolov8-transposed"})
    with pytest.raises(ValueError, match="holds 2 class scores, not one per class name"):
        det.resolve([V8T], {"layout": "yolov8-transposed"}, ["a", "b", "c"])
    static = TensorSpec("output0", "float32", ("batch", 84, 8400))  # a 640x640 YOLOv8 export
    assert det.resolve([static], None).to_manifest() == {"layout": "yolov8", "output": "output0",
                                                          "score_threshold": 0.5, "iou_threshold": 0.45}
    with pytest.raises(ValueError, match="holds 80 class scores, not one per class name"):
        det.resolve([static], None, ["person"])
    with pytest.raises(ValueError, match=r"layout yolov5 needs an output \[batch, D, 5 \+ classes\]"):
        det.resolve([TensorSpec("output0", "float32", ("batch", "D", 5))], {"layout": "yolov5"})


@pytest.mark.parametrize(("entry", "message"), [
    ({"layout": "ssd"}, "detection layout must be one of boxes+scores, yolov5, yolov8, yolov8-transposed, got 'ssd'"),
    ({"layout": "yolov5", "iou_threshold": 0}, "iou_threshold must be a number in (0, 1], got 0"),
    ({"layout": "yolov5", "max_detections": 0}, "max_detections must be an integer from 1 to 10000, got 0"),
    ({"layout": "yolov5", "score_threshold": float("nan")}, "score_threshold must be a finite number"),
    ({"layout": "yolov5", "output": "boxes"}, "detection output must name an output (output0), got 'boxes'"),
    ({"layout": "yolov5", "nms": True}, "detection: unknown keys ['nms']"),
])
def test_a_bad_declared_layout_names_what_is_wrong(entry, message):
    with pytest.raises(ValueError) as err:
        det.resolve([V5], entry, NAMES)
    assert message in str(err.value)


def test_a_profile_detection_row_needs_the_manifest_layout_naming_its_output():
    entry = {"output": "output0", "summary": "detections", "names": ["count", "score"], "edges": [[1.0], [0.5]]}
    layout = det.resolve([V5], {"layout": "yolov5", "score_threshold": 0.4}, NAMES)
    summary = OutputSummary.from_profile(entry, [V5], layout)
    assert (summary.layout, summary.threshold) == ("yolov5", 0.4)
    with pytest.raises(ValueError, match="does not name it"):
        OutputSummary.from_profile(entry, [V5], None)


@pytest.mark.parametrize(("value", "shown"), [("1.5", "'1.5'"), ("-0.1", "'-0.1'"), ("nan", "'nan'"),
                                               ("inf", "'inf'"), ("", "''"), ("0x1", "'0x1'"),
                                               ("0." + "1" * 40, "'0." + "1" * 30 + "...'")])
def test_score_threshold_option_is_a_number_from_0_to_1(value, shown):
    detector = interface("yolov5")
    assert parse_options([("score_threshold", " 0.25 ")], detector).score_threshold == 0.25
    assert parse_options([("score_threshold", "1")], detector).score_threshold == 1.0
    with pytest.raises(AnswerOptionError) as err:
        parse_options([("score_threshold", value)], detector)
    assert err.value.option == "score_threshold"
    assert str(err.value) == f"score_threshold must be a number from 0 to 1, got {shown}"
    with pytest.raises(AnswerOptionError, match="score_threshold does not apply to this model: its task is "
                                                "classification"):
        parse_options([("score_threshold", "0.5")], {"task": "classification"})
