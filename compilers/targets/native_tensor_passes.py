"""Rewrites of the native target for the ops of transformer encoders and audio models (on
native_passes.WorkGraph):

- split_to_slices: Split (one node, several outputs) becomes one Slice per output; the executor's
  nodes have one output each. Needs the split axis's size (the schema fixes it) or the split sizes.
- normalise_tensor_op: older opset forms -> the format's: Reduce* `axes`, Pad `pads`/`value` and Slice
  `starts`/`ends`/`axes` attributes become constant inputs; Cast's `to` becomes a dtype name;
  LayerNormalization's Mean / InvStdDev outputs are dropped when unused, else computed by nodes of their
  own (ReduceMean, Sub, Pow, Add, Sqrt, Reciprocal).
- lift_1d: Conv, QConv, MaxPool, AveragePool on (N, C, W) inputs (Conv1d, MaxPool1d) run as their 2-D
  forms on (N, C, 1, W): Unsqueeze (a view) before, Squeeze (a view) after, kernel (1, k), the weight
  reshaped to (M, C, 1, k). Runs after fuse_qdq and fuse_activations, which see the 1-D nodes as they are.
"""

from __future__ import annotations

import numpy as np

from edgefleet.compilers.targets.native_passes import WorkGraph, WorkNode

Shapes = dict[str, tuple[int | str, ...]]
ELEM_NAMES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool"}
REDUCE = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceL2")
WINDOW_OPS = ("Conv", "QConv", "MaxPool", "AveragePool")


def _const(graph: WorkGraph, node: WorkNode, key: str, value: np.ndarray) -> str:
    name = f"{node.name}::{key}"
    graph.constants[name] = np.asarray(value)
    return name


def split_to_slices(graph: WorkGraph, shapes: Shapes) -> None:
    for node in [n for n in graph.nodes if n.op == "Split"]:
        axis = int(node.attrs.get("axis", 0))
        dims = shapes.get(node.inputs[0])
        given = len(node.inputs) > 1 and node.inputs[1]
        sizes = graph.const(node.inputs[1]) if given else None
        if given and sizes is None:
            continue  # sizes known only at run time: refused (Split is not an executor op)
        sizes = node.attrs.get("split") if sizes is None else [int(s) for s in sizes.reshape(-1)]
        count = len(node.outputs)
        if sizes is None:
            if dims is None or not isinstance(dims[axis], int):
                continue
            total = dims[axis]
            parts = int(node.attrs.get("num_outputs", count))
            chunk = -(-total // parts)
            sizes = [min(chunk, total - i * chunk) for i in range(parts)]
        if len(sizes) != count:
            continue
        ends = np.cumsum(sizes)
        slices = []
        axes = _const(graph, node, "axes", np.asarray([axis], np.int64))
        for i, output in enumerate(node.outputs):
            if not output:
                continue
            starts = _const(graph, node, f"start{i}", np.asarray([ends[i] - sizes[i]], np.int64))
            stops = _const(graph, node, f"end{i}", np.asarray([ends[i]], np.int64))
            slices.append(WorkNode("Slice", f"{node.name}_{i}", [node.inputs[0], starts, stops, axes], [output]))
        index = graph.nodes.index(node)
        graph.nodes[index:index + 1] = slices
        graph.count("Split as Slices")


def normalise_tensor_op(node: WorkNode, graph: WorkGraph, ranks: dict[str, int]) -> None:
    attrs = node.attrs
    if node.op in REDUCE and "axes" in attrs:
        node.inputs = [node.inputs[0], _const(graph, node, "axes", np.asarray(attrs.pop("axes"), np.int64))]
    if node.op == "Pad" and "pads" in attrs:
        value = np.float32(attrs.pop("value", 0.0))
        node.inputs = [node.inputs[0], _const(graph, node, "pads", np.asarray(attrs.pop("pads"), np.int64)),
                       _const(graph, node, "value", value)]
    if node.op == "Slice" and "starts" in attrs:
        node.inputs = [node.inputs[0]] + [_const(graph, node, k, np.asarray(attrs.pop(k), np.int64))
                                          for k in ("starts", "ends", "axes") if k in attrs]
    if node.op == "Cast":
        attrs.pop("saturate", None)
        attrs["to"] = ELEM_NAMES.get(int(attrs.get("to", 0)), str(attrs.get("to")))
    if node.op == "LayerNormalization":
        attrs.pop("stash_type", None)  # statistics are computed in float64, finer than any stash type
        used = [o for o in node.outputs[1:] if o and (graph.consumers(o) or o in graph.outputs)]
        if used and ranks.get(node.inputs[0]) is not None:
            _layer_norm_statistics(graph, node, ranks[node.inputs[0]])
        elif not used:
            node.outputs = node.outputs[:1]


def _layer_norm_statistics(graph: WorkGraph, node: WorkNode, rank: int) -> None:
    """LayerNormalization's Mean and InvStdDev outputs, computed by nodes of their own after it."""
    axis = int(node.attrs.get("axis", -1)) % rank
    axes = _const(graph, node, "stat_axes", np.arange(axis, rank, dtype=np.int64))
    two = _const(graph, node, "two", np.float32(2))
    eps = _const(graph, node, "eps", np.float32(node.attrs.get("epsilon", 1e-5)))
    x, mean, inv = node.inputs[0], *(node.outputs + ["", ""])[1:3]
    mean = mean or f"{node.name}::mean"
    p = f"{node.name}::"
    extra = [WorkNode("ReduceMean", f"{node.name}_mean", [x, axes], [mean])]
    if inv:
        extra += [WorkNode("Sub", f"{node.name}_centre", [x, mean], [p + "centred"]),
                  WorkNode("Pow", f"{node.name}_square", [p + "centred", two], [p + "squared"]),
                  WorkNode("ReduceMean", f"{node.name}_var", [p + "squared", axes], [p + "var"]),
                  WorkNode("Add", f"{node.name}_eps", [p + "var", eps], [p + "var_eps"]),
                  WorkNode("Sqrt", f"{node.name}_std", [p + "var_eps"], [p + "std"]),
                  WorkNode("Reciprocal", f"{node.name}_inv", [p + "std"], [inv])]
    node.outputs = node.outputs[:1]
    index = graph.nodes.index(node)
    graph.nodes[index + 1:index + 1] = extra
    graph.count("LayerNormalization statistics as nodes")


def lift_1d(graph: WorkGraph, ranks: dict[str, int]) -> None:
    for node in list(graph.nodes):
        if node.op not in WINDOW_OPS:
            continue
        kernel = node.attrs.get("kernel_shape")
        weight = graph.const(node.inputs[3 if node.op == "QConv" else 1]) if node.op in ("Conv", "QConv") else None
        one_d = ranks.get(node.inputs[0]) == 3 or (kernel is not None and len(kernel) == 1) or \
            (weight is not None and weight.ndim == 3)
        if not one_d or (node.op in ("Conv", "QConv") and (weight is None or weight.ndim != 3)):
            continue
        attrs = node.attrs
        for key in ("strides", "dilations"):
            if key in attrs:
                attrs[key] = [1, int(attrs[key][0])]
        if "kernel_shape" in attrs:
            attrs["kernel_shape"] = [1, int(attrs["kernel_shape"][0])]
        if "pads" in attrs:
            attrs["pads"] = [0, int(attrs["pads"][0]), 0, int(attrs["pads"][1])]
        if weight is not None:
            index = 3 if node.op == "QConv" else 1
            node.inputs[index] = _const(graph, node, "w_2d", weight.reshape(weight.shape[0], weight.shape[1], 1, -1))
        axis = _const(graph, node, "axis_2", np.asarray([2], np.int64))
        lifted, result = f"{node.name}::2d_in", f"{node.name}::2d_out"
        position = graph.nodes.index(node)
        before = WorkNode("Unsqueeze", f"{node.name}_unsqueeze", [node.inputs[0], axis], [lifted])
        after = WorkNode("Squeeze", f"{node.name}_squeeze", [result, axis], [node.outputs[0]])
        node.inputs[0] = lifted
        node.outputs = [result]
        graph.nodes[position:position + 1] = [before, node, after]
        graph.count(f"{node.op}1d as 2-D")
