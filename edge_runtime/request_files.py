"""Reading prediction requests (HTTP bodies and .npy, .npz, .json files) and writing results.

.npy is taken as it is (its dtype must match the schema, as in the Python API); JSON has no dtypes, so
its numbers are converted to the declared dtype by `core.schema.array_from_json`, which refuses what the
dtype cannot hold (1e39 for float32, 1.5 for an integer input) instead of rounding it or making it inf.
A single sample without the batch axis gets one.

JSON from outside is parsed with `core.bounded_json` (size, nesting depth, int64 and finite-number
limits) before anything is built. An HTTP body must be exactly {"inputs": [...]} or
{"inputs": {"name": [...], ...}}; an unknown field or input name is refused, never ignored.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgefleet.core import bounded_json
from edgefleet.core.errors import EdgefleetError, SchemaError
from edgefleet.core.schema import TensorSpec, array_from_json

MAX_DEPTH = 16  # {"inputs": {"name": ...}} around a tensor of rank 14 at most
MAX_JSON_FILE_BYTES = 256 * 2**20
BODY_SHAPE = '{"inputs": [...]} or {"inputs": {"name": [...]}}'


def read_body(body: bytes, specs: list[TensorSpec], *, max_bytes: int) -> dict[str, np.ndarray]:
    """An HTTP request body as the feed of a model with inputs `specs`.

    Raises JsonLimitError (size, encoding, depth, numbers), EdgefleetError (not the documented shape) or
    SchemaError (an unknown input, or values its dtype cannot hold)."""
    data = bounded_json.loads(body, max_bytes=max_bytes, max_depth=MAX_DEPTH, what="request body")
    if not isinstance(data, dict) or "inputs" not in data:
        raise EdgefleetError(f"request body must be {BODY_SHAPE}")
    unknown = sorted(set(data) - {"inputs"})
    if unknown:
        raise EdgefleetError(f"request body has unknown fields {unknown}: it must be {BODY_SHAPE}")
    return arrays_from_json(data["inputs"], specs)


def read_request(path: Path, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise EdgefleetError(f"input file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return {specs[0].name: np.load(path, allow_pickle=False)} if len(specs) == 1 else _need_many(specs)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        if suffix == ".json":
            if path.stat().st_size > MAX_JSON_FILE_BYTES:
                raise EdgefleetError(f"input file {path} is larger than {MAX_JSON_FILE_BYTES} bytes")
            data = bounded_json.loads(path.read_bytes(), max_bytes=MAX_JSON_FILE_BYTES, max_depth=MAX_DEPTH,
                                      what=f"input file {path}")
            return arrays_from_json(data, specs)
    except (ValueError, OSError) as err:
        raise EdgefleetError(f"cannot read {path}: {err}") from err
    raise EdgefleetError(f"input file {path}: expected .npy, .npz or .json, got '{suffix or 'no suffix'}'")


def _need_many(specs: list[TensorSpec]) -> dict:
    raise EdgefleetError(f"the model takes {len(specs)} inputs; pass an .npz or .json with {[s.name for s in specs]}")


def arrays_from_json(data: object, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """JSON values (a list for a single-input model, or {name: list}) as arrays of the declared dtypes.

    An input name the model does not have is refused (SchemaError) before any value is converted; a
    missing one is left to the InputValidator, which names it."""
    if not isinstance(data, dict):
        data = {specs[0].name: data} if len(specs) == 1 else _need_many(specs)
    by_name = {spec.name: spec for spec in specs}
    unknown = [name for name in data if name not in by_name]
    if unknown:
        raise SchemaError(unknown[0], f"only inputs {list(by_name)}", "an unknown input")
    feed = {}
    for name, value in data.items():
        spec = by_name[name]
        array = array_from_json(value, spec)
        feed[name] = array[None, ...] if array.ndim == len(spec.shape) - 1 else array
    return feed


def write_result(path: Path, outputs: dict[str, np.ndarray]) -> None:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy" and len(outputs) == 1:
        np.save(path, next(iter(outputs.values())))
    elif suffix == ".npz":
        np.savez(path, **outputs)
    elif suffix == ".json":
        path.write_text(json.dumps({k: v.tolist() for k, v in outputs.items()}))
    else:
        raise EdgefleetError(f"output file {path}: expected .json, .npz (or .npy for one output)")
