"""Tensor schemas: what a model takes and gives, and the check every request goes through.

A dimension is an int (fixed) or a string (symbolic, such as "batch"). The same symbol must have the
same size in every input of one request. Validation is on the hot path of every prediction, so the
specs are compiled once into plain tuples and the per-request check does only cheap comparisons.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from edgefleet.core.errors import EdgefleetError, SchemaError

Dim = int | str
BATCH = "batch"
Inputs = Mapping[str, np.ndarray] | np.ndarray  # a request: a dict of arrays, or one array for a one-input model
T = TypeVar("T")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "int64", "uint8", ...
    shape: tuple[Dim, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping) -> TensorSpec:
        shape = tuple(d if isinstance(d, str) else int(d) for d in data["shape"])
        np.dtype(data["dtype"])  # raises TypeError on an unknown dtype name
        return cls(name=str(data["name"]), dtype=str(data["dtype"]), shape=shape)

    def describe(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        return f"{self.dtype}[{dims}]"


def batch_axis(spec: TensorSpec) -> int | None:
    """The axis that holds the samples: the one whose dim is the symbol "batch" (a recurrent state
    [layers, batch, hidden] has it on axis 1); without one, axis 0 when it is symbolic (an imported file
    names its batch as it likes: "N", "batch_size"); None for a tensor with no batch axis (a scalar such
    as a sample rate, a fixed table): it holds the one value used for every sample."""
    if BATCH in spec.shape:
        return spec.shape.index(BATCH)
    return 0 if spec.shape and isinstance(spec.shape[0], str) else None


def take_samples(specs: Sequence[TensorSpec], data: Mapping[str, np.ndarray], start: int,
                 stop: int) -> dict[str, np.ndarray]:
    """Samples start..stop of every tensor on its batch axis; a tensor without one as it is."""
    taken = {}
    for spec in specs:
        value, axis = data[spec.name], batch_axis(spec)
        if axis is not None:
            value = value[(slice(None),) * axis + (slice(start, stop),)]
        taken[spec.name] = np.ascontiguousarray(value) if value.ndim else value  # it would make a scalar 1-D
    return taken


def join_samples(specs: Sequence[TensorSpec], parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Results for consecutive runs of samples as one, joined on each tensor's batch axis (a tensor
    without one is the same in every part: the first is kept)."""
    joined = {}
    for spec in specs:
        axis = batch_axis(spec)
        values = [p[spec.name] for p in parts]
        joined[spec.name] = values[0] if axis is None else np.concatenate(values, axis=axis)
    return joined


def sample_count(specs: Sequence[TensorSpec], data: Mapping[str, np.ndarray]) -> int:
    """N: the size of the batch axis of the first tensor that has one, 1 when none has."""
    for spec in specs:
        axis = batch_axis(spec)
        if axis is not None:
            return int(np.shape(data[spec.name])[axis])
    return 1


def samples_first(spec: TensorSpec, value: np.ndarray) -> np.ndarray:
    """The value with its batch axis moved to axis 0 (for per-sample decisions); as it is without one."""
    axis = batch_axis(spec)
    return np.moveaxis(value, axis, 0) if axis else value


def describe_array(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype}[{', '.join(str(d) for d in value.shape)}]"
    return type(value).__name__


class InputValidator:
    """Checks a request against the input specs; compiled once per model.

    The hot path only decides pass or fail with a few comparisons (dtype, rank, the non-batch dims as
    one tuple). On failure the precise checker runs and raises the message; it is also the path for
    specs whose symbolic dims are not just a leading batch axis.

    `check` is the function requests go through (calling the validator calls it); `guard(run)` is
    `run(check(inputs))` as one function, a call less per request (~40 ns: 2% of a small .tflite's
    invoke). For a model with one input both remember the dtype and shape last accepted: a request whose
    array has that same dtype object and shape passes with two comparisons, since the verdict depends on
    nothing else; any other request takes the checks above and, when it passes, becomes the one remembered.
    """

    def __init__(self, specs: list[TensorSpec]) -> None:
        if not specs:
            raise ValueError("a model needs at least one input")
        self.specs = specs
        self.names = tuple(s.name for s in specs)
        self._single = specs[0].name if len(specs) == 1 else None
        batch_first = all(
            s.shape and isinstance(s.shape[0], str) and all(isinstance(d, int) for d in s.shape[1:]) for s in specs
        )
        same_batch = len({s.shape[0] for s in specs}) == 1 if batch_first else False
        # (name, dtype, rank, shape without the batch axis); None when the fast path does not apply.
        self._fast = (
            [(s.name, np.dtype(s.dtype), len(s.shape), tuple(s.shape[1:])) for s in specs]
            if batch_first and same_batch
            else None
        )
        self._accepted: list[tuple[int, ...] | None] = [None]  # the one input's shape last accepted
        self.check = self._remembering(None) if self._single is not None else self._compared

    def __call__(self, inputs: Inputs) -> dict[str, np.ndarray]:
        """Returns the feed dict, or raises SchemaError naming the input, what was expected and what came."""
        return self.check(inputs)

    def guard(self, run: Callable[[dict[str, np.ndarray]], T]) -> Callable[[Inputs], T]:
        """`run(check(inputs))` as one function (class docstring)."""
        if self._single is not None:
            return self._remembering(run)
        compared = self._compared

        def guarded(inputs: Inputs) -> T:
            return run(compared(inputs))

        return guarded

    def _remembering(self, then: Callable[[dict[str, np.ndarray]], T] | None) -> Callable[[Inputs], T]:
        """For one input: the signature last accepted first (class docstring), else `_compared`; the feed
        goes to `then`, or is returned when it is None."""
        name, dtype, compared, ndarray = self._single, np.dtype(self.specs[0].dtype), self._compared, np.ndarray
        accepted = self._accepted  # shared by `check` and every guard; replacing its item is atomic

        def check(inputs: Inputs) -> T:
            if inputs.__class__ is dict:
                if len(inputs) == 1:
                    value = inputs.get(name)
                    if value.__class__ is ndarray and value.dtype is dtype and value.shape == accepted[0]:
                        return inputs if then is None else then(inputs)
            elif inputs.__class__ is ndarray and inputs.dtype is dtype and inputs.shape == accepted[0]:
                feed = {name: inputs}
                return feed if then is None else then(feed)
            feed = compared(inputs)
            accepted[0] = feed[name].shape
            return feed if then is None else then(feed)

        return check

    def _compared(self, inputs: Inputs) -> dict[str, np.ndarray]:
        """The comparisons of the class docstring; `_check` when they do not apply or fail."""
        fast = self._fast
        if fast is not None:
            if inputs.__class__ is np.ndarray and self._single is not None:
                feed = {self._single: inputs}
            elif inputs.__class__ is dict and len(inputs) == len(fast):
                feed = inputs
            else:
                return self._check(inputs)
            batch = -1
            try:
                for name, dtype, ndim, tail in fast:
                    value = feed[name]
                    shape = value.shape
                    if (value.__class__ is not np.ndarray or value.dtype != dtype or len(shape) != ndim
                            or shape[1:] != tail or shape[0] == 0 or (batch != -1 and shape[0] != batch)):
                        return self._check(feed)
                    batch = shape[0]
            except (KeyError, AttributeError):
                return self._check(feed)
            return feed
        return self._check(inputs)

    def _check(self, inputs: object) -> dict[str, np.ndarray]:
        """The precise checker: raises SchemaError with what was expected and what came."""
        if isinstance(inputs, np.ndarray):
            if self._single is None:
                raise SchemaError("(all)", f"a dict with inputs {list(self.names)}", "a single array")
            feed = {self._single: inputs}
        elif isinstance(inputs, Mapping):
            feed = dict(inputs)
            if len(feed) != len(self.names) or any(n not in feed for n in self.names):
                self._raise_names(feed)
        else:
            raise SchemaError("(all)", f"numpy arrays for {list(self.names)}", type(inputs).__name__)

        symbols: dict[str, int] = {}
        for spec in self.specs:
            value = feed[spec.name]
            if not isinstance(value, np.ndarray):
                raise SchemaError(spec.name, f"numpy.ndarray {spec.describe()}", describe_array(value))
            if value.dtype != np.dtype(spec.dtype) or value.ndim != len(spec.shape):
                raise SchemaError(spec.name, spec.describe(), describe_array(value))
            for axis, dim in enumerate(spec.shape):
                size = value.shape[axis]
                if isinstance(dim, int):
                    if size != dim:
                        raise SchemaError(
                            spec.name, f"{spec.describe()} (axis {axis} must be {dim})", describe_array(value)
                        )
                    continue
                if size == 0:
                    raise SchemaError(spec.name, f"{spec.describe()} with {dim} >= 1", describe_array(value))
                seen = symbols.setdefault(dim, size)
                if seen != size:
                    raise SchemaError(
                        spec.name, f"{spec.describe()} with {dim}={seen} as in the other inputs", describe_array(value)
                    )
        return feed

    def _raise_names(self, feed: Mapping) -> None:
        missing = [n for n in self.names if n not in feed]
        extra = [n for n in feed if n not in self.names]
        if missing:
            spec = next(s for s in self.specs if s.name == missing[0])
            got = f"nothing (the request has unknown inputs {extra})" if extra else "nothing"
            raise SchemaError(missing[0], f"{spec.describe()} (missing)", got)
        raise SchemaError(str(extra[0]), f"only inputs {list(self.names)}", "an unknown input")


def array_from_json(value: object, spec: TensorSpec) -> np.ndarray:
    """A JSON value (nested lists of numbers) as an array of `spec.dtype`; every refusal names the input.

    Refused with EdgefleetError: anything but a regular array of numbers (strings, null, all-boolean
    values for a numeric input, rows of different lengths). Refused with SchemaError: values the dtype
    cannot hold (1e39 for float32, 300 for uint8, 1.5 or 2**63 for int64) and non-finite values. A
    number is never rounded, wrapped or turned into inf on the way in. Shapes are not checked here:
    InputValidator does that.
    """
    dtype = np.dtype(spec.dtype)
    try:
        raw = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as err:  # numpy >= 1.24 refuses ragged nesting
        raise EdgefleetError(f"input '{spec.name}': not a regular array of numbers (nested lists of different "
                             f"lengths)") from err
    if raw.dtype.kind not in "iuf" and not (raw.dtype.kind == "b" and dtype.kind == "b"):
        got = {"b": "booleans", "U": "strings", "S": "strings"}.get(raw.dtype.kind, "values that are not all numbers")
        raise EdgefleetError(f"input '{spec.name}': not a regular array of numbers (got {got})")
    if dtype.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            array = raw.astype(dtype)
        bad = ~np.isfinite(array)
        if bad.any():
            raise SchemaError(spec.name, f"finite {dtype} values", _first(raw, bad, f"beyond the {dtype} range"))
        return array
    if dtype.kind in "iub":
        low, high = (0, 1) if dtype.kind == "b" else (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
        if raw.dtype.kind == "f":
            fraction = raw != np.floor(raw)
            if fraction.any():
                raise SchemaError(spec.name, f"whole numbers for {dtype}", _first(raw, fraction, "not a whole number"))
            outside = (raw < low) | (raw >= float(high + 1))  # high + 1 is exact as a float; high may not be
        else:
            outside = (raw < low) | (raw > high)
        if outside.any():
            raise SchemaError(spec.name, f"values within [{low}, {high}] for {dtype}",
                              _first(raw, outside, "outside that range"))
        return raw.astype(dtype)
    raise SchemaError(spec.name, f"a {dtype} input (JSON carries only numbers)", "a JSON array")


def _first(raw: np.ndarray, mask: np.ndarray, why: str) -> str:
    index = tuple(int(i) for i in np.argwhere(mask)[0])
    count = int(np.count_nonzero(mask))
    more = f" (and {count - 1} more)" if count > 1 else ""
    return f"{raw[index].item()!r} at index {list(index)}, {why}{more}"
