"""A torch model to one ONNX file that onnxruntime loads: the front of export_torch (compilers/export.py).

    examples = example_tensors(example_inputs, input_names)     # a tuple of tensors, in input order
    onnx_model, session = export_onnx(model, examples, path, names, output_names, dynamic_axes)

Example inputs are tensors or numeric numpy arrays: one, a sequence of them, or a mapping name -> one.
Anything else (a str, a list of ints, a dict, a number) is one ExportError naming the input, before
the exporter runs. A 0-dimensional tensor (a sample rate, `torch.tensor(16000.0)`) is an input without a
batch axis: it stays 0-d in the ONNX file and the schema, one value for every sample of a request.

Dynamic axes (`dynamic_axes={"input_ids": {1: "tokens"}}`): every input's axis 0 is the symbolic
"batch" (a 0-d input has none), and an input named in dynamic_axes adds or renames symbolic axes:
{axis: symbol}, where a symbol of None makes that axis static (`{"state": {0: None, 1: "batch"}}` for a state laid out
[layers, batch, hidden]). One symbol on several inputs is one dimension (the tokens of input_ids and
of attention_mask). Symbols become torch.export.Dim objects for torch.onnx.export(dynamo=True), so the
ONNX inputs carry them as dim names, and so does the bundle's schema. A dynamic axis of size 1 in the
example is tiled to 2 for tracing (torch.export would specialise it to a constant). With a tolerance,
the exported model is then run on the example grown by one along every symbolic axis and compared with
torch: an axis the exporter fixed anyway (torch's GRU is unrolled over its time steps) is an ExportError
naming it, not a schema that promises what the model cannot do. That check is structural (it runs, the
shapes match, the values agree within at least atol 1e-3, rtol 1e-2); the golden examples check the numbers.

Failures: whatever the exporter raises, and a file that onnx or onnxruntime cannot load (an output
named like one of the exporter's own values: `Duplicate definition of name (embedding)`), become one
ExportError naming the cause. The caller owns the directory `path` is in and removes it on failure.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from edgefleet.core.errors import ExportError

log = logging.getLogger(__name__)

BATCH = "batch"
DynamicAxes = Mapping[str, Mapping[int, str | None]]


def input_names_for(names: Sequence[str] | None, count: int) -> list[str]:
    """The names given, or "input" for one input and "input_0", "input_1", ... for several."""
    if names:
        if len(names) != count:
            raise ExportError(f"input_names has {len(names)} names for {count} example inputs")
        return list(names)
    return ["input"] if count == 1 else [f"input_{i}" for i in range(count)]


def example_tensors(inputs: object, names: Sequence[str] | None) -> tuple[torch.Tensor, ...]:
    """The example inputs as tensors in input order; ExportError naming an input that is not a tensor."""
    if isinstance(inputs, Mapping):
        order = list(names or inputs.keys())
        missing = [n for n in order if n not in inputs]
        if missing:
            raise ExportError(f"example inputs have no {', '.join(map(repr, missing))} (they have "
                              f"{', '.join(map(repr, inputs))})")
        return tuple(_tensor(inputs[n], repr(n)) for n in order)
    if isinstance(inputs, (torch.Tensor, np.ndarray)):
        return (_tensor(inputs, "the example input"),)
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Sequence) or not inputs:
        raise ExportError(f"example inputs must be a tensor, a sequence of tensors or a mapping name -> tensor; "
                          f"got {_kind(inputs)}")
    labels = list(names) if names and len(names) == len(inputs) else [f"#{i}" for i in range(len(inputs))]
    return tuple(_tensor(value, label if label.startswith("#") else repr(label))
                 for value, label in zip(inputs, labels, strict=True))


def _tensor(value: object, label: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise ExportError(f"example input {label} is a numpy array of dtype {value.dtype}; export takes "
                              "numeric tensors (encode text as token ids first)")
        value = torch.from_numpy(np.asarray(value, order="C"))  # (ascontiguousarray makes a 0-d array 1-D)
    if not isinstance(value, torch.Tensor):
        raise ExportError(f"example input {label} is {_kind(value)}, not a tensor: export takes torch tensors or "
                          "numpy arrays (one per model input, with a batch axis)")
    # contiguous: a view's strides (x[:, :3]) made the exporter trace aten.sym_stride, which it cannot
    # translate, once earlier exports in the process had run
    return value.detach().cpu().contiguous()


def _kind(value: object) -> str:
    """'a str', 'an int', 'a list of int', 'an empty tuple'."""
    kind = type(value).__name__
    if isinstance(value, (list, tuple)):
        inner = sorted({type(v).__name__ for v in value})
        return f"a {kind} of {', '.join(inner)}" if inner else f"an empty {kind}"
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def dynamic_dims(names: Sequence[str], examples: Sequence[torch.Tensor],
                 dynamic_axes: DynamicAxes | None) -> list[dict[int, str]]:
    """Per input, {axis: symbol} of its symbolic axes: "batch" on axis 0 unless dynamic_axes says otherwise."""
    given = dict(dynamic_axes or {})
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ExportError(f"dynamic_axes names {', '.join(map(repr, unknown))}, not an input of the model "
                          f"(inputs: {', '.join(map(repr, names))})")
    dims = []
    for name, example in zip(names, examples, strict=True):
        axes: dict[int, str | None] = {0: BATCH} if example.dim() else {}  # a 0-d input: no batch axis
        for axis, symbol in dict(given.get(name, {})).items():
            if not isinstance(axis, int) or not -example.dim() <= axis < example.dim():
                raise ExportError(f"dynamic_axes[{name!r}]: axis {axis!r} is not an axis of its "
                                  f"{example.dim()}-dimensional example")
            if symbol is not None and not (isinstance(symbol, str) and symbol.isidentifier()):
                raise ExportError(f"dynamic_axes[{name!r}][{axis}]: a dimension name is an identifier such as "
                                  f"'tokens' (or None for a static axis), got {symbol!r}")
            axes[axis % example.dim()] = symbol
        dims.append({axis: symbol for axis, symbol in sorted(axes.items()) if symbol is not None})
    return dims


def export_onnx(model: torch.nn.Module, examples: tuple[torch.Tensor, ...], path: Path, names: list[str],
                output_names: Sequence[str] | None, dynamic_axes: DynamicAxes | None = None,
                tolerance: tuple[float, float] | None = None) -> tuple[onnx.ModelProto, ort.InferenceSession]:
    """Exports to `path` with the dynamic axes asked for; the loaded model and an onnxruntime session on it.
    tolerance=(atol, rtol): also check that every symbolic axis really varies (see above)."""
    dims = dynamic_dims(names, examples, dynamic_axes)
    symbols = {symbol: torch.export.Dim(symbol, min=1) for axes in dims for symbol in axes.values()}
    shapes = tuple({axis: symbols[symbol] for axis, symbol in axes.items()} for axes in dims)
    traced = tuple(_tiled(example, axes) for example, axes in zip(examples, dims, strict=True))
    chatter = io.StringIO()
    # The exporter warns about every torchvision op it cannot register when torchvision is absent.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(chatter), torch.no_grad():
            program = torch.onnx.export(
                model, traced, dynamo=True, external_data=False, input_names=names,
                output_names=list(output_names) if output_names else None, dynamic_shapes=shapes,
            )
        program.save(str(path))
    except Exception as err:  # noqa: BLE001 - the exporter raises many types; report them as one
        raise ExportError(f"torch.onnx.export failed: {type(err).__name__}: {_first_lines(err)}") from err
    log.debug("torch.onnx.export said: %s", chatter.getvalue().strip())
    onnx_model, session = _load(path)
    if tolerance is not None:
        _check_symbolic_axes(model, examples, names, dims, session, tolerance)
    return onnx_model, session


def _check_symbolic_axes(model: torch.nn.Module, examples: tuple[torch.Tensor, ...], names: list[str],
                         dims: list[dict[int, str]], session: ort.InferenceSession,
                         tolerance: tuple[float, float]) -> None:
    """Per symbol, runs torch and onnxruntime on the examples grown by one along the axes it names (values
    repeated cyclically, so token ids stay valid); ExportError naming the symbol if onnxruntime fails or
    disagrees."""
    for symbol in dict.fromkeys(s for axes in dims for s in axes.values()):
        picked = [{a: s for a, s in axes.items() if s == symbol} for axes in dims]
        where = ", ".join(f"{name}[{axis}]" for name, axes in zip(names, picked, strict=True) for axis in axes)
        grown = tuple(_grown(example, axes) for example, axes in zip(examples, picked, strict=True))
        with torch.no_grad():
            result = model(*grown)
        want = [r.detach().numpy() for r in (result if isinstance(result, (tuple, list)) else (result,))]
        fixed = f"the exported model does not take another size on the dynamic axis {symbol!r} ({where}): " \
                "the exporter fixed it to the example's size"
        try:
            got = session.run(None, {name: g.numpy() for name, g in zip(names, grown, strict=True)})
        except Exception as err:  # noqa: BLE001 - onnxruntime's own types
            raise ExportError(f"{fixed} ({type(err).__name__}: {_first_lines(err, 300)})") from err
        atol, rtol = max(tolerance[0], 1e-3), max(tolerance[1], 1e-2)
        for index, (g, w) in enumerate(zip(got, want, strict=False)):
            if g.shape != w.shape or not np.allclose(g, w, atol=atol, rtol=rtol):
                raise ExportError(f"{fixed} (one larger, output {index} has shape {g.shape} where torch gives "
                                  f"{w.shape}, or other values)")


def _grown(example: torch.Tensor, axes: dict[int, str]) -> torch.Tensor:
    for axis in axes:
        size = example.shape[axis]
        example = torch.index_select(example, axis, torch.arange(size + 1) % size)
    return example


def _tiled(example: torch.Tensor, axes: dict[int, str]) -> torch.Tensor:
    for axis in axes:
        if example.shape[axis] == 1:
            example = torch.cat([example, example], dim=axis)
    return example


def _load(path: Path) -> tuple[onnx.ModelProto, ort.InferenceSession]:
    try:
        model = onnx.load(str(path))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnx and onnxruntime raise their own types
        clashes = _clashing_outputs(path)
        hint = (f"; output name(s) {', '.join(map(repr, clashes))} are also names the exporter gave its own "
                "values: pass other output_names" if clashes else "")
        raise ExportError(f"the exported ONNX model does not load: {type(err).__name__}: "
                          f"{_first_lines(err)}{hint}") from err
    return model, session


def _clashing_outputs(path: Path) -> list[str]:
    """Graph outputs whose name more than one node writes, or that is also an input or initializer."""
    try:
        graph = onnx.load(str(path)).graph
    except Exception:  # noqa: BLE001 - the file is unreadable: no names to offer
        return []
    defined = Counter([o for node in graph.node for o in node.output]
                      + [v.name for v in graph.input] + [t.name for t in graph.initializer])
    return [o.name for o in graph.output if defined[o.name] > 1]


def _first_lines(err: Exception, limit: int = 600) -> str:
    """The exception's message on one line, cut to `limit` characters (torch's run to pages)."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + " ..."
