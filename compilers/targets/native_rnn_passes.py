"""ONNX LSTM and GRU -> the native format's recurrent ops (graph_ops.py), which have one output.

`lower_recurrent` rewrites each LSTM / GRU node:
- its outputs Y, Y_h, Y_c (those that are read) become Slices of the op's one stacked output
  ((T + 1 or 2, D, B, H): Y, then Y_h, then LSTM's Y_c along axis 0), with a Squeeze for Y_h and Y_c;
- layout 1 (batch major) becomes Transposes of X, initial_h and initial_c before, and of Y and Y_h after;
- attributes at their defaults are dropped (activations Sigmoid / Tanh [/ Tanh] per direction,
  input_forget 0, linear_before_reset 0); a constant sequence_lens equal to T for every row is dropped,
  and so are initial states that are zeros by construction (torch exports Expand of a zero to the batch).

What the executor does not run stays on the node and `recurrent_problem` names it, so the compile
refuses it in one line: peepholes (LSTM's input P), clip, other activations (with their alpha / beta),
input_forget 1, and a constant ragged sequence_lens. A sequence_lens known only at run time is checked
by the executor on every run (ragged batches are refused there).
"""

from __future__ import annotations

import numpy as np

from edgefleet.compilers.targets.native_passes import WorkGraph, WorkNode

Shapes = dict[str, tuple[int | str, ...]]
RECURRENT = ("LSTM", "GRU")
DEFAULT_ACTIVATIONS = {"LSTM": ["sigmoid", "tanh", "tanh"], "GRU": ["sigmoid", "tanh"]}
UNCLAIMED = {"clip": "clip", "activations": "activations other than the defaults",
             "activation_alpha": "activation_alpha", "activation_beta": "activation_beta",
             "input_forget": "input_forget=1", "_ragged": "a ragged sequence_lens (every row must be T)"}
_END = np.iinfo(np.int64).max


def recurrent_problem(node: WorkNode) -> str:
    """Why the executor cannot run this LSTM / GRU node ("" when it can)."""
    if node.op == "LSTM" and len(node.inputs) > 7 and node.inputs[7]:
        return "peepholes (input P) not supported"
    unclaimed = [UNCLAIMED[k] for k in node.attrs if k in UNCLAIMED]
    return f"{', '.join(unclaimed)} not supported (default activations only)" if unclaimed else ""


def lower_recurrent(graph: WorkGraph, shapes: Shapes) -> None:
    for node in [n for n in graph.nodes if n.op in RECURRENT]:
        _drop_defaults(node)
        _drop_full_lengths(node, graph, shapes)
        for k in (5, 6):
            if k < len(node.inputs) and node.inputs[k] and _all_zeros(graph, node.inputs[k]):
                node.inputs[k] = ""  # absent initial states are zeros (torch exports zeros of the batch size)
        at = graph.nodes.index(node)
        before: list[WorkNode] = []
        if int(node.attrs.pop("layout", 0)) == 1:
            for k in (0, 5, 6):
                if k < len(node.inputs) and node.inputs[k]:
                    swapped = f"{node.name}::time_major{k}"
                    before.append(WorkNode("Transpose", swapped, [node.inputs[k]], [swapped], {"perm": [1, 0, 2]}))
                    node.inputs[k] = swapped
            batch_major = True
        else:
            batch_major = False
        after = _slice_outputs(node, graph, batch_major)
        graph.nodes[at:at + 1] = [*before, node, *after]
        graph.count(f"{node.op} outputs as Slices")


def _drop_defaults(node: WorkNode) -> None:
    attrs = node.attrs
    if "activations" in attrs:
        given = [str(a).lower() for a in attrs["activations"]]
        default = DEFAULT_ACTIVATIONS[node.op]
        if given in (default, default * 2) and "activation_alpha" not in attrs and "activation_beta" not in attrs:
            attrs.pop("activations")
    if node.op == "LSTM" and int(attrs.get("input_forget", 0)) == 0:
        attrs.pop("input_forget", None)
    if node.op == "GRU" and int(attrs.get("linear_before_reset", 0)) == 0:
        attrs.pop("linear_before_reset", None)
    node.inputs = node.inputs[:8]


def _all_zeros(graph: WorkGraph, value: str) -> bool:
    """value is zeros by construction: a constant of zeros, or Expand / Slice / Reshape / ... of one."""
    for _ in range(16):
        known = graph.const(value)
        if known is not None:
            return bool(np.all(known == 0))
        producer = graph.producer(value)
        if producer is None or producer.op not in ("Expand", "Slice", "Reshape", "Unsqueeze", "Squeeze",
                                                   "Transpose", "Identity", "Cast", "Tile", "Flatten"):
            return False
        value = producer.inputs[0]
    return False


def _drop_full_lengths(node: WorkNode, graph: WorkGraph, shapes: Shapes) -> None:
    lengths = graph.const(node.inputs[4]) if len(node.inputs) > 4 else None
    if lengths is None:
        return
    dims = shapes.get(node.inputs[0])
    steps = dims[1 if int(node.attrs.get("layout", 0)) else 0] if dims else None
    if isinstance(steps, int) and np.all(lengths == steps):
        node.inputs[4] = ""
    elif isinstance(steps, int):
        node.attrs["_ragged"] = 1


def _slice_outputs(node: WorkNode, graph: WorkGraph, batch_major: bool) -> list[WorkNode]:
    """Y, Y_h, Y_c out of the node's stacked output; node.outputs becomes that one value."""
    extra = 2 if node.op == "LSTM" else 1
    stacked = f"{node.name}::stacked"
    wanted = [(k, v) for k, v in enumerate(node.outputs[:1 + extra])
              if v and (graph.consumers(v) or v in graph.outputs)]
    node.outputs = [stacked]
    axes = _const(graph, node, "axis0", np.asarray([0], np.int64))
    nodes: list[WorkNode] = []
    for k, value in wanted:
        start, end = (0, -extra) if k == 0 else (k - 1 - extra, k - extra if k < extra else _END)
        starts = _const(graph, node, f"start{k}", np.asarray([start], np.int64))
        ends = _const(graph, node, f"end{k}", np.asarray([end], np.int64))
        sliced = f"{node.name}::out{k}" if k or batch_major else value
        nodes.append(WorkNode("Slice", sliced, [stacked, starts, ends, axes], [sliced]))
        if k:
            squeezed = f"{node.name}::state{k}" if batch_major else value
            nodes.append(WorkNode("Squeeze", squeezed, [sliced, axes], [squeezed]))
            sliced = squeezed
        if batch_major:  # Y (T, D, B, H) -> (B, T, D, H); Y_h, Y_c (D, B, H) -> (B, D, H)
            perm = [2, 0, 1, 3] if k == 0 else [1, 0, 2]
            nodes.append(WorkNode("Transpose", value, [sliced], [value], {"perm": perm}))
    return nodes


def _const(graph: WorkGraph, node: WorkNode, key: str, value: np.ndarray) -> str:
    name = f"{node.name}::{key}"
    graph.constants[name] = value
    return name
