"""Artifacts with a static batch: any number of samples run in chunks of the file's fixed batch, each
tensor sliced, padded and joined on its own batch axis.

Where the batch axis is. The bundle's schema says it (core/schema.py `batch_axis`: the axis named
"batch", else a symbolic axis 0, else none). A backend sees only the artifact, so the schema's axes
travel in the artifact's load options as `batch_axes: {tensor name: axis or null}`, inputs and outputs
(compilers/compile.py writes them into a static-batch artifact when any axis is not 0).

What counts as static (`static_batch`). With batch_axes: every input that has a batch axis has it
fixed, all to the same size b; an input without one (a 0-d sample rate) is passed whole to every chunk.
Without: the rule an imported file's static batch is found by (compilers/formats, LiteRT's too): every
input of rank >= 2 starts with the same fixed b and every output starts with b. A request of exactly b
samples is one call; otherwise chunks of b, the last padded by repeating its last sample (a real
sample, not zeros, so a model with a log or a division sees valid data) and the padding dropped from
every output. The schema has already checked the request, so the chunker trusts its shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

Axes = dict[str, int | None]
Run = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def static_batch(inputs: Mapping[str, Sequence[int | None]], outputs: Mapping[str, Sequence[int | None]],
                 options: Mapping) -> tuple[int | None, Axes, Axes]:
    """(b, input axes, output axes) for a model whose tensors have these shapes (None: a dynamic dim);
    b is None when the batch is not static (module docstring)."""
    given = options.get("batch_axes")
    if given:
        in_axes = {name: given.get(name, 0) for name in inputs}
        out_axes = {name: given.get(name, 0) for name in outputs}
        sizes = set()
        for name, shape in inputs.items():
            axis = in_axes[name]
            if axis is None:
                continue
            if axis >= len(shape) or shape[axis] is None:
                return None, in_axes, out_axes
            sizes.add(int(shape[axis]))
        return (sizes.pop() if len(sizes) == 1 else None), in_axes, out_axes
    in_axes, out_axes = dict.fromkeys(inputs, 0), dict.fromkeys(outputs, 0)
    firsts = {shape[0] if len(shape) >= 2 else None for shape in inputs.values()}
    if len(firsts) != 1 or None in firsts:
        return None, in_axes, out_axes
    batch = firsts.pop()
    if any(not len(shape) or shape[0] != batch for shape in outputs.values()):
        return None, in_axes, out_axes
    return batch, in_axes, out_axes


def in_chunks(call: Run, batch: int, inputs: Axes, outputs: Axes) -> Run:
    """`call` (which takes exactly `batch` samples) as a function of any number of samples."""
    sliced = [(name, axis) for name, axis in inputs.items() if axis is not None]
    if not sliced:
        return call
    first, first_axis = sliced[0]

    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = feed[first].shape[first_axis]
        if rows == batch:
            return call(feed)
        parts = [call(_chunk(feed, inputs, start, batch)) for start in range(0, rows, batch) or [0]]
        return {name: _join([p[name] for p in parts], axis, rows) for name, axis in outputs.items()}

    return run


def _chunk(feed: dict[str, np.ndarray], axes: Axes, start: int, batch: int) -> dict[str, np.ndarray]:
    chunk = {}
    for name, value in feed.items():
        axis = axes.get(name)
        if axis is None:
            chunk[name] = value
            continue
        part = value[(slice(None),) * axis + (slice(start, start + batch),)]
        short = batch - part.shape[axis]
        if short == batch:  # no sample at all (an empty request): one chunk of zeros, all of it dropped
            part = np.zeros(part.shape[:axis] + (batch,) + part.shape[axis + 1:], part.dtype)
        elif short:
            last = part[(slice(None),) * axis + (slice(-1, None),)]
            part = np.concatenate([part, np.repeat(last, short, axis=axis)], axis=axis)
        chunk[name] = np.ascontiguousarray(part)
    return chunk


def _join(values: list[np.ndarray], axis: int | None, rows: int) -> np.ndarray:
    if axis is None:  # the same for every sample: the first chunk's
        return values[0]
    joined = np.concatenate(values, axis=axis)
    return joined[(slice(None),) * axis + (slice(0, rows),)]
