"""`edgefleet import`: a model file someone else made (.onnx, .tflite) into a signed bundle.

Cloud-side: compilers.import_model (onnx, onnxruntime; torch through the compilers package) is imported
inside the command. Every refusal is an EdgefleetError: one line and exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edgefleet.cli.app import app, out
from edgefleet.core import bounded_json
from edgefleet.core.errors import EdgefleetError

MAX_CLASS_NAMES_BYTES = 4 << 20  # 100,000 names of 40 characters


@app.command("import")
def import_command(
    model: Annotated[Path, typer.Argument(help="Model file: .onnx (external data beside it) or .tflite")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the new bundle (absent or empty)")],
    name: Annotated[str, typer.Option("--name", help="Bundle name")],
    version: Annotated[int, typer.Option("--version", help="Bundle version (an integer >= 1)")],
    key: Annotated[Path | None, typer.Option("--key", "-k", help="Private key to sign the bundle")] = None,
    reference_data: Annotated[Path | None, typer.Option(
        "--reference-data", help="DATA.npz: one array per model input, keyed by input name, a batch of N "
                                 "samples; gives the golden examples and the drift profile")] = None,
    task: Annotated[str | None, typer.Option(
        help="classification, regression, embedding, detection or other (default: detection with "
             "--detection-layout, classification with --class-names, detection for one *box* and one *score* "
             "output, else other)")] = None,
    class_names: Annotated[Path | None, typer.Option(
        "--class-names", help="FILE: one class name per line, or a JSON list of strings (.json)")] = None,
    dim: Annotated[list[str], typer.Option(
        "--dim", help="NAME=SIZE: fix a symbolic dimension (as `import` prints it); repeatable")] = [],  # noqa: B006
    feature_names: Annotated[Path | None, typer.Option(
        "--feature-names", help="FILE: names of the tabular input's columns for the drift profile, one per line "
                                "or a JSON list (.json)")] = None,
    profiled_input: Annotated[list[str], typer.Option(
        "--profiled-input", help="NAME: an input the drift profile and telemetry cover (repeatable; default: "
                                 "every batched input that is not a recurrent state)")] = [],  # noqa: B006
    detection_layout: Annotated[str | None, typer.Option(
        "--detection-layout", help="A detector's outputs: boxes+scores, yolov5 ([batch, D, 5 + classes]), "
                                   "yolov8 ([batch, 4 + classes, D]) or yolov8-transposed ([batch, D, 4 + "
                                   "classes]); implies --task detection (default: inferred when unambiguous)")] = None,
    detection_scores: Annotated[str | None, typer.Option(
        "--detection-scores", help="NAME: a boxes+scores detector's scores output (default: the one output named "
                                   "*score*)")] = None,
    detection_output: Annotated[str | None, typer.Option(
        "--detection-output", help="NAME: a yolo layout's output (default: its one rank-3 output)")] = None,
    score_threshold: Annotated[float | None, typer.Option(
        "--score-threshold", help="A detector's score threshold: answers, telemetry's detection count (default "
                                  "0.5)")] = None,
    iou_threshold: Annotated[float | None, typer.Option(
        "--iou-threshold", help="A detector's NMS IoU threshold in answers (default 0.45 for yolo layouts, no NMS "
                                "for boxes+scores)")] = None,
    max_detections: Annotated[int | None, typer.Option(
        "--max-detections", help="A detector's most detections per sample in answers (default 100)")] = None,
    golden_count: Annotated[int, typer.Option("--golden-count", help="Golden examples to record")] = 8,
    atol: Annotated[float, typer.Option(help="Absolute tolerance of the golden check")] = 1e-4,
    rtol: Annotated[float, typer.Option(help="Relative tolerance of the golden check")] = 1e-3,
) -> None:
    """Import an ONNX or TFLite model file into a bundle: schema from the file, golden outputs from its runtime."""
    from edgefleet.core.signing import SigningKey

    dims, names = parse_dims(dim), read_names(class_names, "--class-names") if class_names else None
    columns = read_names(feature_names, "--feature-names") if feature_names else None
    given = {"layout": detection_layout, "scores": detection_scores, "output": detection_output,
             "score_threshold": score_threshold, "iou_threshold": iou_threshold, "max_detections": max_detections}
    detection = {k: v for k, v in given.items() if v is not None} or None
    signing_key = SigningKey.load(key) if key else None
    from edgefleet.compilers.import_model import import_model  # after the cheap checks: this loads torch

    bundle = import_model(model, out_dir, name=name, version=version, reference_data=reference_data, task=task,
                          class_names=names, signing_key=signing_key, dims=dims, golden_count=golden_count,
                          atol=atol, rtol=rtol, feature_names=columns, profiled_inputs=profiled_input or None,
                          detection=detection)
    table = Table("", "name", "dtype", "shape", title=escape(f"{bundle.name} v{bundle.version} in {bundle.root}"))
    for side, specs in (("input", bundle.inputs), ("output", bundle.outputs)):
        for spec in specs:
            table.add_row(side, escape(spec.name), spec.dtype, escape(f"[{', '.join(map(str, spec.shape))}]"))
    out.print(table)
    manifest = bundle.manifest
    golden = manifest["golden"]
    origin = "generated from the schema (no drift profile)" if golden.get("generated") else f"from {reference_data}"
    out.print(escape(f"task {manifest['interface']['task']}; {golden['count']} golden examples {origin}; "
                     f"artifact {manifest['artifacts'][0]['path']}"))
    found = manifest["interface"].get("detection")
    if found:
        nms = f"NMS at IoU {found['iou_threshold']:g}" if found.get("iou_threshold") is not None else "no NMS"
        out.print(escape(f"detection layout {found['layout']} on output {found.get('output', found.get('scores'))}: "
                         f"score threshold {found['score_threshold']:g}, {nms} in answers"))
    profile = bundle.reference_profile() or {}
    for skipped in profile.get("unprofiled", []):
        out.print(escape(f"input {skipped['input']} is not in the drift profile: {skipped['reason']}"))
    for summary in profile.get("outputs", []):
        rows = summary["names"]
        shown = ", ".join(rows[:4]) + (f", ... ({len(rows)} rows)" if len(rows) > 4 else "")
        out.print(escape(f"output {summary['output']} is in the drift profile as {summary['summary']}: {shown}"))
    out.print(escape(f"signed with key {signing_key.key_id}") if signing_key
              else escape(f"not signed: edgefleet sign {bundle.root} --key KEY.key"))


def parse_dims(values: list[str]) -> dict[str, int]:
    """NAME=SIZE strings as {NAME: SIZE}; EdgefleetError for any other form, a size below 1, or a name twice."""
    dims: dict[str, int] = {}
    for value in values:
        name, sep, size = value.partition("=")
        name, size = name.strip(), size.strip()
        if not sep or not name or not size.isdigit() or int(size) < 1:
            raise EdgefleetError(f"--dim {value!r}: expected NAME=SIZE with SIZE an integer >= 1 (--dim tokens=128)")
        if name in dims:
            raise EdgefleetError(f"--dim {name} is given twice")
        dims[name] = int(size)
    return dims


def read_names(path: Path, option: str = "--class-names") -> list[str]:
    """Names (classes, columns) from a text file (one per line, blank lines skipped) or a JSON list of
    strings; `option` is the flag named in every refusal."""
    try:
        size = path.stat().st_size
        if size > MAX_CLASS_NAMES_BYTES:
            raise EdgefleetError(f"{option} {path}: {size} bytes; the limit is {MAX_CLASS_NAMES_BYTES}")
        data = path.read_bytes()
    except OSError as err:
        raise EdgefleetError(f"{option} {path} cannot be read: {err.strerror or err}") from err
    if path.suffix.lower() == ".json":
        names = bounded_json.loads(data, max_bytes=MAX_CLASS_NAMES_BYTES, max_depth=2, what=f"{option} {path}")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise EdgefleetError(f"{option} {path}: expected a JSON list of strings")
    else:
        try:
            names = [line.strip() for line in data.decode("utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as err:
            raise EdgefleetError(f"{option} {path} is not UTF-8 text") from err
    if not names:
        raise EdgefleetError(f"{option} {path} holds no names")
    return names

