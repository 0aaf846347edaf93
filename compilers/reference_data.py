"""The inputs an imported model's golden examples and reference profile are made of: reference data
checked against the schema, or, without it, inputs generated from the schema.

Reference data is a mapping (or an `.npz` file) with one array per model input, keyed by the input
names the file uses, holding a batch of N samples on the inputs' batch axis. The batch axis is
core/schema.py `batch_axis`: the axis named "batch" (axis 1 of a state [layers, batch, hidden]), else a
symbolic axis 0; an input without one (a scalar sample rate) is taken as it is, one value for every
example. Every refusal is an ExportError naming the input, what the schema expects and what came: a
missing or unknown name, a dtype of another kind (float64 data for a float32 input is cast, an
integer is cast only when every value fits), a shape the schema refuses, or different N on two inputs.

Generated inputs (no reference data): every symbol on the batch axis of an input is the number of golden
examples, every other symbol 1 (fix it with `dims` at import); floats standard normal, integers 0 or 1
(a valid index, mask value or flag for any model), bools random, all from a seeded generator.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from edgefleet.core.errors import ExportError, SchemaError
from edgefleet.core.schema import InputValidator, TensorSpec, batch_axis, describe_array, take_samples

ReferenceData = Mapping[str, np.ndarray] | np.ndarray | str | Path


def load_reference(data: ReferenceData, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """The reference data as arrays of the schema's dtypes, checked against it (module docstring)."""
    names = [s.name for s in specs]
    arrays = _read_npz(Path(data)) if isinstance(data, (str, Path)) else _as_mapping(data, names)
    missing = [n for n in names if n not in arrays]
    extra = sorted(str(k) for k in arrays if k not in names)
    if missing or extra:
        parts = ([f"no array for input(s) {', '.join(map(repr, missing))}"] if missing else []) + \
                ([f"arrays for unknown input(s) {', '.join(map(repr, extra))}"] if extra else [])
        raise ExportError(f"reference data has {' and '.join(parts)}; the model's inputs are "
                          f"{', '.join(map(repr, names))}")
    feed = {s.name: _as_dtype(s, np.asarray(arrays[s.name])) for s in specs}
    try:
        InputValidator(list(specs))(feed)
    except SchemaError as err:
        raise ExportError(f"reference data does not match the model: {err}") from err
    sizes = {s.name: feed[s.name].shape[batch_axis(s)] for s in specs if batch_axis(s) is not None}
    if len(set(sizes.values())) > 1:
        raise ExportError(f"reference data holds different numbers of samples per input: {sizes}")
    return feed


def _as_mapping(data: object, names: list[str]) -> dict[str, np.ndarray]:
    """A mapping as given; one bare array is the data of a one-input model (anything else is refused)."""
    if isinstance(data, Mapping):
        return dict(data)
    if isinstance(data, np.ndarray) and len(names) == 1:
        return {names[0]: data}
    if isinstance(data, np.ndarray):
        raise ExportError(f"reference data is one array, but the model has {len(names)} inputs "
                          f"({', '.join(map(repr, names))}): give a mapping of input name to array, or an .npz")
    raise ExportError(f"reference data must be a mapping of input name to array, an array (one-input model) or "
                      f"the path of an .npz, got {type(data).__name__}")


def generate_inputs(specs: Sequence[TensorSpec], count: int, seed: int = 0) -> dict[str, np.ndarray]:
    """`count` examples made up from the schema (module docstring)."""
    sizes = {s.shape[batch_axis(s)]: count for s in specs if batch_axis(s) is not None}
    rng = np.random.default_rng(seed)
    inputs = {}
    for spec in specs:
        shape = tuple(d if isinstance(d, int) else sizes.get(d, 1) for d in spec.shape)
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            value = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            value = rng.random(shape) < 0.5
        else:
            value = rng.integers(0, 2, size=shape).astype(dtype)
        inputs[spec.name] = np.ascontiguousarray(value)
    return inputs


def take(specs: Sequence[TensorSpec], data: Mapping[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    """Samples start..stop of every batched input on its batch axis; inputs without a batch axis as they are."""
    return take_samples(specs, data, start, stop)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise ExportError(f"no reference data file at {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ExportError(f"{path} holds one array; reference data is an .npz with one array per input")
        with loaded:
            return {k: loaded[k] for k in loaded.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        raise ExportError(f"reference data {path} cannot be read as .npz: {err}") from err


def _as_dtype(spec: TensorSpec, value: np.ndarray) -> np.ndarray:
    want = np.dtype(spec.dtype)
    if value.dtype == want:
        return value
    same_kind = value.dtype.kind == want.kind or (value.dtype.kind in "iu" and want.kind in "iu")
    if same_kind and want.kind == "f":
        return value.astype(want)
    if same_kind and want.kind in "iu":
        cast = value.astype(want)
        if np.array_equal(cast.astype(value.dtype), value):
            return cast
        raise ExportError(f"reference data for input {spec.name!r}: {describe_array(value)} has values a {want} "
                          f"cannot hold")
    raise ExportError(f"reference data for input {spec.name!r}: expected {spec.describe()}, got "
                      f"{describe_array(value)}")
