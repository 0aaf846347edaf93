"""Reading prediction requests from files (.npy, .npz, .json) and writing results (.npy, .npz, .json).

.npy is taken as it is (its dtype must match the schema, as in the Python API); JSON has no dtypes, so
its numbers are cast to the declared dtype, and a single sample without the batch axis gets one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgefleet.core.errors import EdgefleetError
from edgefleet.core.schema import TensorSpec


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
            return arrays_from_json(json.loads(path.read_text()), specs)
    except (ValueError, OSError) as err:
        raise EdgefleetError(f"cannot read {path}: {err}") from err
    raise EdgefleetError(f"input file {path}: expected .npy, .npz or .json, got '{suffix or 'no suffix'}'")


def _need_many(specs: list[TensorSpec]) -> dict:
    raise EdgefleetError(f"the model takes {len(specs)} inputs; pass an .npz or .json with {[s.name for s in specs]}")


def arrays_from_json(data: object, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """JSON values (a list for a single-input model, or {name: list}) as arrays of the declared dtypes."""
    if not isinstance(data, dict):
        data = {specs[0].name: data} if len(specs) == 1 else _need_many(specs)
    feed = {}
    for name, value in data.items():
        spec = next((s for s in specs if s.name == name), None)
        if spec is None:
            feed[name] = np.asarray(value)  # the validator names the unknown input
            continue
        try:
            array = np.asarray(value, dtype=np.dtype(spec.dtype))
        except (ValueError, TypeError) as err:
            raise EdgefleetError(f"input '{name}': not a regular array of numbers ({err})") from err
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
