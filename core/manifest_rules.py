"""manifest.json and signature.json as the device and the cloud read them: limits before parsing, and the
structure every reader relies on.

Reading (`read_document`). Both files come from outside, in an uploaded or downloaded archive. Each must
be a regular file no larger than its limit (checked on the file system before a byte is read; the
archive refuses an oversized member at its header) and is parsed by core/bounded_json within a depth
limit. Refusals are VerificationErrors: `too_large`, `too_deep`, `number_out_of_range` (an integer
outside int64, such as version 2**63), `not_finite`, or `bad_manifest` / `bad_signature` for a document
that is not a JSON object.

Structure (`check_structure`), run after the signature check and before anything uses a field
(Bundle.verify; `edgefleet inspect`, which does not verify, calls it itself). Every wrong field is a
`bad_manifest` whose one message names the field, what it must be and what came. Then `check_paths`
refuses every path field that could leave the bundle (the `files` table, `artifacts[].path`,
`golden.path`, `reference_profile.path`, path-like artifact options such as `cache_dir`) as
`unsafe_path`, and a path field naming no listed file as `bad_manifest`.
"""

from __future__ import annotations

import json
import math
import re
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from edgefleet.core import bounded_json
from edgefleet.core.archive import unsafe_path_reason
from edgefleet.core.bounded_json import INT64_MAX, JsonLimitError
from edgefleet.core.detection import LAYOUTS
from edgefleet.core.errors import VerificationError

MAX_MANIFEST_BYTES = 8 << 20  # a real manifest is a few KB; class names and slice metrics may add some MB
MAX_MANIFEST_DEPTH = 64
MAX_SIGNATURE_BYTES = 64 << 10  # a real signature.json is ~400 bytes
MAX_SIGNATURE_DEPTH = 4
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DTYPE_KINDS = "biuf"  # bool, signed and unsigned integers, floats: what a model's tensors hold
# artifact option names whose values are paths: cache_dir (OpenVINO), trt_engine_cache_path (onnxruntime's
# TensorRT provider), build and engine (the TensorRT target's build plan and the engine built on the device)
_PATH_OPTION = re.compile(r"(_path|_dir)$|^(path|dir|build|engine)$")


def read_document(path: Path, *, max_bytes: int, max_depth: int, malformed: str) -> dict:
    """The JSON object in `path`, read within the limits; `malformed` is the reason code for a document
    that is not a JSON object. FileNotFoundError passes through (the caller names what is missing)."""
    info = path.lstat()
    if not stat.S_ISREG(info.st_mode):
        raise VerificationError("unsafe_path", f"{path.name} is not a regular file (a link, directory or device)")
    if info.st_size > max_bytes:
        raise VerificationError("too_large", f"{path.name} is {info.st_size} bytes; the limit is {max_bytes} bytes")
    with path.open("rb") as handle:
        data = handle.read(max_bytes + 1)  # it may have grown since the lstat
    try:
        document = bounded_json.loads(data, max_bytes=max_bytes, max_depth=max_depth, what=path.name)
    except JsonLimitError as err:
        if err.reason in ("not_json", "not_utf8"):
            raise VerificationError(malformed, f"{path.name} is not valid JSON: {err}") from err
        raise VerificationError(err.reason, str(err)) from err
    if not isinstance(document, dict):
        raise VerificationError(malformed, f"{path.name} must hold a JSON object, got {shown(document)}")
    return document


# --- structure -------------------------------------------------------------------------------------
def check_identity(manifest: Mapping) -> tuple[str, int]:
    """name (a non-empty string) and version (an integer from 1 to 2**63-1), or bad_manifest."""
    name, version = manifest.get("name"), manifest.get("version")
    if not isinstance(name, str) or not name or len(name) > 256 or any(ord(c) < 32 for c in name):
        _wrong("name", "a non-empty string of at most 256 printable characters", name)
    if not _is_int(version) or not 1 <= version <= INT64_MAX:
        _wrong("version", "an integer from 1 to 2**63-1", version)
    return name, version


def check_structure(manifest: Mapping) -> None:
    """Raises VerificationError("bad_manifest") naming the first field of the wrong type or range."""
    check_identity(manifest)
    for key in ("label", "created_at"):
        _optional(manifest, key, lambda v: isinstance(v, str), "a string")
    _check_interface(manifest.get("interface"))
    _check_files(manifest.get("files"))
    artifacts = manifest.get("artifacts", [])
    if not isinstance(artifacts, list):
        _wrong("artifacts", "a list of artifact objects", artifacts)
    for index, artifact in enumerate(artifacts):
        _check_artifact(f"artifacts[{index}]", artifact)
    golden = manifest.get("golden")
    if golden is not None:
        _object_with_path("golden", golden)
        for key in ("atol", "rtol"):
            if not _is_number(golden.get(key)) or golden[key] < 0:
                _wrong(f"golden.{key}", "a number >= 0", golden.get(key))
        _optional(golden, "count", _is_count, "an integer >= 0", "golden.")
        # true when the golden inputs were made up from the schema (an import without reference data)
        _optional(golden, "generated", lambda v: isinstance(v, bool), "true or false", "golden.")
    if manifest.get("reference_profile") is not None:
        _object_with_path("reference_profile", manifest["reference_profile"])
    if manifest.get("metrics") is not None:
        _check_metrics(manifest["metrics"])
    for key in ("lineage", "model_card"):
        _optional(manifest, key, lambda v: isinstance(v, dict), "an object")
    _optional(manifest, "rollback_build", lambda v: isinstance(v, bool), "true or false")


def check_paths(manifest: Mapping) -> None:
    """Every path field names a safe relative path (else unsafe_path); those outside `files` name a
    listed file (else bad_manifest). Run after check_structure."""
    files = manifest["files"]
    for rel in files:
        check_relpath(rel, "files")
    named = [(f"artifacts[{i}].path", a["path"]) for i, a in enumerate(manifest.get("artifacts", []))]
    named += [(f"{key}.path", manifest[key]["path"]) for key in ("golden", "reference_profile") if manifest.get(key)]
    for field, rel in named:
        check_relpath(rel, field)
        if rel not in files:
            raise VerificationError("bad_manifest", f"manifest field {field} names {rel!r}, which is not a file "
                                                    "listed in the manifest")
    for index, artifact in enumerate(manifest.get("artifacts", [])):
        _check_option_paths(f"artifacts[{index}].options", artifact.get("options", {}))


def shown(value: object) -> str:
    """What came, for a message: the value when it is a short scalar, else its JSON type."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- helpers ---------------------------------------------------------------------------------------
def _wrong(field: str, expected: str, value: object) -> None:
    raise VerificationError("bad_manifest", f"manifest field {field} must be {expected}, got {shown(value)}")


def _optional(parent: Mapping, key: str, valid: Callable[[object], bool], expected: str, prefix: str = "") -> None:
    if key in parent and parent[key] is not None and not valid(parent[key]):
        _wrong(prefix + key, expected, parent[key])


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_count(value: object) -> bool:
    return _is_int(value) and 0 <= value <= INT64_MAX


def _is_number(value: object) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _check_interface(interface: object) -> None:
    if not isinstance(interface, dict):
        _wrong("interface", "an object with inputs and outputs", interface)
    for side in ("inputs", "outputs"):
        specs = interface.get(side)
        if not isinstance(specs, list) or not specs:
            _wrong(f"interface.{side}", "a non-empty list of tensor specs", specs)
        for index, spec in enumerate(specs):
            _check_spec(f"interface.{side}[{index}]", spec)
    for key in ("task", "postprocess"):
        _optional(interface, key, lambda v: isinstance(v, str), "a string", "interface.")
    _optional(interface, "class_names", lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v),
              "a list of strings", "interface.")
    inputs, outputs = ({spec["name"] for spec in interface[side]} for side in ("inputs", "outputs"))
    _optional(interface, "profiled_inputs", lambda v: isinstance(v, list) and all(
        isinstance(n, str) and n in inputs for n in v), "a list of input names", "interface.")
    _optional(interface, "detection", lambda v: _detection_entry(v, outputs),
              f"an object with a layout ({', '.join(LAYOUTS)}; default boxes+scores), its output's name (scores "
              f"for boxes+scores, output otherwise) and a number score_threshold", "interface.")


def _detection_entry(value: object, outputs: set[str]) -> bool:
    """The structure of interface.detection (core/detection.py checks the rest against the outputs' shapes)."""
    if not isinstance(value, dict):
        return False
    layout = value.get("layout", "boxes+scores")
    key = "scores" if layout == "boxes+scores" else "output"
    return (layout in LAYOUTS and isinstance(value.get(key), str) and value[key] in outputs
            and _is_number(value.get("score_threshold", 0.5)))


def _check_spec(field: str, spec: object) -> None:
    if not isinstance(spec, dict):
        _wrong(field, "an object with name, dtype and shape", spec)
    if not isinstance(spec.get("name"), str) or not spec["name"]:
        _wrong(f"{field}.name", "a non-empty string", spec.get("name"))
    if not _is_dtype(spec.get("dtype")):
        _wrong(f"{field}.dtype", "a numpy dtype name such as float32, int64 or uint8", spec.get("dtype"))
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(_is_count(d) or (isinstance(d, str) and d) for d in shape):
        _wrong(f"{field}.shape", "a list of sizes (integers >= 0) and axis names (strings)", shape)


def _is_dtype(name: object) -> bool:
    if not isinstance(name, str):
        return False
    try:
        return np.dtype(name).kind in _DTYPE_KINDS
    except (TypeError, ValueError):
        return False


def _check_files(files: object) -> None:
    if not isinstance(files, dict):
        _wrong("files", "an object mapping each path to its sha256 and size", files)
    for rel, entry in files.items():
        if not isinstance(entry, dict):
            _wrong(f"files[{rel!r}]", "an object with sha256 and size", entry)
        if not isinstance(entry.get("sha256"), str) or not _SHA256.fullmatch(entry["sha256"]):
            _wrong(f"files[{rel!r}].sha256", "64 lower-case hex digits", entry.get("sha256"))
        if not _is_count(entry.get("size")):
            _wrong(f"files[{rel!r}].size", "an integer >= 0", entry.get("size"))


def _check_artifact(field: str, artifact: object) -> None:
    _object_with_path(field, artifact)
    for key in ("target", "backend", "format", "precision", "device", "sha256"):
        _optional(artifact, key, lambda v: isinstance(v, str), "a string", f"{field}.")
    for key in ("size", "batch"):
        _optional(artifact, key, _is_count, "an integer >= 0", f"{field}.")
    _optional(artifact, "flops_per_sample", _is_number, "a number", f"{field}.")
    for key in ("options", "numeric_error", "compile"):
        _optional(artifact, key, lambda v: isinstance(v, dict), "an object", f"{field}.")
    numeric = artifact.get("numeric_error") or {}
    for key in ("max_abs", "max_rel", "atol", "rtol"):  # the self-test widens its tolerance with atol/rtol
        _optional(numeric, key, _is_number, "a number", f"{field}.numeric_error.")
    _optional(numeric, "checked", lambda v: isinstance(v, bool), "true or false", f"{field}.numeric_error.")


def _object_with_path(field: str, value: object) -> None:
    if not isinstance(value, dict):
        _wrong(field, "an object with a path", value)
    if not isinstance(value.get("path"), str):
        _wrong(f"{field}.path", "a relative path (a string)", value.get("path"))


def _check_metrics(metrics: object) -> None:
    if not isinstance(metrics, dict):
        _wrong("metrics", "an object of metrics per split", metrics)
    for split, values in metrics.items():
        if not isinstance(values, dict):
            _wrong(f"metrics.{split}", "an object", values)
        _optional(values, "accuracy", _is_number, "a number", f"metrics.{split}.")
        _optional(values, "count", _is_count, "an integer >= 0", f"metrics.{split}.")


def check_relpath(rel: object, field: str | None = None) -> None:
    """Raises VerificationError("unsafe_path") unless rel is a non-empty relative path inside the bundle."""
    why = unsafe_path_reason(rel) if isinstance(rel, str) and rel not in ("", ".") else "is empty"
    if why is not None:
        where = f" ({field})" if field else ""
        raise VerificationError("unsafe_path", f"manifest path {rel!r}{where} {why}: it would leave the bundle")


def _check_option_paths(field: str, options: object) -> None:
    """Path-like values anywhere in an artifact's options (cache_dir, trt_engine_cache_path, ...)."""
    if isinstance(options, dict):
        for key, value in options.items():
            if isinstance(value, str) and _PATH_OPTION.search(str(key)):
                check_relpath(value, f"{field}.{key}")
            else:
                _check_option_paths(f"{field}.{key}", value)
    elif isinstance(options, list):
        for index, value in enumerate(options):
            _check_option_paths(f"{field}[{index}]", value)
