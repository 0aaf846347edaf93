"""Float graph rewrites of the native target that turn what exporters write for edge CNNs into the
executor's op set (on native_passes.WorkGraph, before fuse_qdq and fuse_activations):

- fold_static_shapes: Shape of a value whose dims the schema fixes (every dim but a symbolic batch)
  becomes a constant, and so does a Shape slice (start/end) or a Gather of fixed dims from it; the
  constant arithmetic that follows (Concat, Unsqueeze, Cast, ...) is then folded by fold_constants.
- fold_batch_norm: BatchNormalization (inference form) after a Conv, or after a Gemm on a 2-D input,
  whose other reader it is not, is folded into the weights and bias (computed in float64, stored
  float32); any other BatchNormalization becomes Mul and Add by per-channel constants.
- reduce_mean_to_pool: ReduceMean over exactly the spatial axes (2, 3) of a rank-4 value becomes
  GlobalAveragePool, followed by Flatten when keepdims is 0 (so AdaptiveAvgPool2d(1) + flatten and
  x.mean((2, 3)) both become GlobalAveragePool [-> Flatten]).
- fuse_hard_swish: x * HardSigmoid(x) with alpha 1/6, beta 1/2 (how some exporters spell HardSwish)
  becomes HardSwish.
- fuse_residual_add: 2-D Conv (group 1) whose only reader is Add(conv, z), z computed before the Conv and of
  the same shape, becomes Conv(x, W, B, z): the residual add in the conv's epilogue, so the activation
  fuse_activations then folds in (ResNet's Relu) applies after the add, as the graph says.

Each rewrite counts what it did in graph.fused (the artifact's "fused" record).
"""

from __future__ import annotations

import numpy as np

from edgefleet.compilers.targets.native_passes import WorkGraph, WorkNode

Shapes = dict[str, tuple[int | str, ...]]


def fold_static_shapes(graph: WorkGraph, shapes: Shapes) -> bool:
    """Shape nodes (and Gather on them) that only read fixed dims become constants; True if any did.
    Reshapes whose target shape is now constant tell shapes their outputs' fixed dims (for the next call)."""
    _reshape_shapes(graph, shapes)
    changed = False
    for node in list(graph.nodes):
        if node.op != "Shape" or node.inputs[0] in graph.constants:
            continue
        dims = shapes.get(node.inputs[0])
        if dims is None:
            continue
        rank = len(dims)
        start = int(node.attrs.get("start", 0))
        end = int(node.attrs.get("end", rank))
        start, end = (max(0, min(rank, v + rank if v < 0 else v)) for v in (start, end))
        picked = dims[start:end]
        if all(isinstance(d, int) for d in picked):
            graph.constants[node.outputs[0]] = np.asarray(picked, np.int64)
            graph.nodes.remove(node)
            graph.count("Shape folded")
            changed = True
            continue
        for user in graph.consumers(node.outputs[0]):  # Gather of fixed dims from a partly symbolic shape
            if user.op == "Slice" and user.inputs[0] == node.outputs[0]:
                changed |= _fold_shape_slice(graph, user, picked)
                continue
            index = graph.const(user.inputs[1]) if user.op == "Gather" and len(user.inputs) > 1 else None
            if index is None or int(user.attrs.get("axis", 0)) != 0 or user.inputs[0] != node.outputs[0]:
                continue
            values = [picked[int(i)] for i in np.asarray(index).reshape(-1)]
            if all(isinstance(v, int) for v in values):
                graph.constants[user.outputs[0]] = np.asarray(values, np.int64).reshape(np.shape(index))
                graph.nodes.remove(user)
                graph.count("Shape+Gather folded")
                changed = True
    return keep_symbolic_dims(graph, shapes) or changed


def _fold_shape_slice(graph: WorkGraph, user: WorkNode, picked: tuple) -> bool:
    """A Slice of a partly symbolic Shape that picks fixed dims only becomes a constant."""
    bounds = _slice_bounds(graph, user)
    values = list(picked[slice(*bounds)]) if bounds else []
    if not values or not all(isinstance(v, int) for v in values):
        return False
    graph.constants[user.outputs[0]] = np.asarray(values, np.int64)
    graph.nodes.remove(user)
    graph.count("Shape+Slice folded")
    return True


def _slice_bounds(graph: WorkGraph, node: WorkNode) -> tuple[int, int] | None:
    """(begin, end) of a Slice of a 1-D value with constant starts, ends (axes 0, steps 1); else None."""
    bounds = [graph.const(v) for v in (node.inputs + ["", "", ""])[1:5]]
    if bounds[0] is None or bounds[1] is None or any(v and graph.const(v) is None for v in node.inputs[3:5]):
        return None
    pairs = zip(bounds[2:], (0, 1), strict=True)  # axes 0, steps 1 (or absent)
    if any(b is not None and np.asarray(b).reshape(-1).tolist() != [want] for b, want in pairs):
        return None
    begin, end = (int(np.asarray(v).reshape(-1)[0]) for v in bounds[:2])
    return begin, end


def keep_symbolic_dims(graph: WorkGraph, shapes: Shapes) -> bool:
    """A Reshape target built (Concat) from pieces of Shapes (Gather, Slice of them) and constants, whose
    symbolic dims sit where the Reshape's own input has the same symbol (torch's exports of view/flatten:
    (T, batch, D, H) -> (T, batch, D * H)), becomes a constant with 0 there: Reshape copies the dim from
    its input. True if any did."""
    known: dict[str, list[int | str]] = {}
    changed = False
    for node in list(graph.nodes):
        if node.op == "Shape" and node.inputs[0] in shapes and node.inputs[0] not in graph.constants:
            dims = shapes[node.inputs[0]]
            rank = len(dims)
            start, end = (int(node.attrs.get(k, d)) for k, d in (("start", 0), ("end", rank)))
            start, end = (max(0, min(rank, v + rank if v < 0 else v)) for v in (start, end))
            known[node.outputs[0]] = list(dims[start:end])
        elif node.op == "Gather" and node.inputs[0] in known and int(node.attrs.get("axis", 0)) == 0:
            index, dims = graph.const(node.inputs[1]), known[node.inputs[0]]
            if index is not None and np.ndim(index) == 1 and all(-len(dims) <= int(i) < len(dims) for i in index):
                known[node.outputs[0]] = [dims[int(i)] for i in index]
        elif node.op == "Slice" and node.inputs[0] in known and (bounds := _slice_bounds(graph, node)):
            known[node.outputs[0]] = known[node.inputs[0]][slice(*bounds)]
        if node.op in ("Gather", "Slice") and all(isinstance(v, int) for v in known.get(node.outputs[0], ["?"])):
            graph.constants[node.outputs[0]] = np.asarray(known.pop(node.outputs[0]), np.int64)
            graph.nodes.remove(node)
            graph.count(f"Shape+{node.op} folded")
            changed = True
        elif node.op == "Concat" and int(node.attrs.get("axis", 0)) == 0:
            entries: list[int | str] = []
            for value in node.inputs:
                const = graph.const(value)
                entries += [int(v) for v in const.reshape(-1)] if const is not None and const.ndim == 1 else \
                    known.get(value, ["?"])
            readers = graph.consumers(node.outputs[0])
            symbolic = [j for j, e in enumerate(entries) if not isinstance(e, int)]
            if not symbolic or "?" in entries or not readers or node.outputs[0] in graph.outputs:
                continue
            if all(r.op == "Reshape" and r.inputs[1] == node.outputs[0] and not int(r.attrs.get("allowzero", 0))
                   and all(j < len(shapes.get(r.inputs[0], ())) and shapes[r.inputs[0]][j] == entries[j]
                           for j in symbolic) for r in readers):
                graph.constants[node.outputs[0]] = np.asarray([0 if j in symbolic else e
                                                               for j, e in enumerate(entries)], np.int64)
                graph.nodes.remove(node)
                graph.count("Reshape keeps a symbolic dim")
                changed = True
    return changed


def _reshape_shapes(graph: WorkGraph, shapes: Shapes) -> None:
    for node in graph.nodes:
        target = graph.const(node.inputs[1]) if node.op == "Reshape" and len(node.inputs) > 1 else None
        dims = shapes.get(node.inputs[0])
        if target is None or dims is None or int(node.attrs.get("allowzero", 0)):
            continue
        out: list[int | str] = [dims[i] if d == 0 and i < len(dims) else int(d) for i, d in enumerate(target.tolist())]
        if -1 in out:
            fixed = [d for d in dims if isinstance(d, int)]
            rest = [d for d in out if d != -1]
            known = len(fixed) == len(dims) and all(isinstance(d, int) for d in rest)
            out[out.index(-1)] = int(np.prod(fixed)) // max(1, int(np.prod(rest))) if known else "?"
        before = shapes.get(node.outputs[0])
        if before is None or (len(before) == len(out) and sum(isinstance(d, int) for d in before) <
                              sum(isinstance(d, int) for d in out)):
            shapes[node.outputs[0]] = tuple(out)


def _bn_params(graph: WorkGraph, node: WorkNode) -> tuple[np.ndarray, np.ndarray] | None:
    """(multiplier, offset) per channel of an inference BatchNormalization with constant parameters."""
    if int(node.attrs.get("training_mode", 0)) or len(node.inputs) < 5 or len([o for o in node.outputs if o]) != 1:
        return None
    values = [graph.const(v) for v in node.inputs[1:5]]
    if any(v is None for v in values):
        return None
    scale, bias, mean, var = (np.asarray(v, np.float64).reshape(-1) for v in values)
    if not scale.size == bias.size == mean.size == var.size:
        return None
    multiplier = scale / np.sqrt(var + float(node.attrs.get("epsilon", 1e-5)))
    return multiplier, bias - mean * multiplier


def fold_batch_norm(graph: WorkGraph, ranks: dict[str, int]) -> None:
    for node in list(graph.nodes):
        if node.op != "BatchNormalization" or node.inputs[0] in graph.constants:
            continue
        params = _bn_params(graph, node)
        if params is None:
            continue
        producer = graph.producer(node.inputs[0])
        alone = producer is not None and graph.only_consumer(node.inputs[0]) is node
        if alone and _fold_into(graph, producer, *params):
            producer.outputs = [node.outputs[0]]
            graph.nodes.remove(node)
            graph.count(f"{producer.op}+BatchNormalization")
            continue
        rank = ranks.get(node.inputs[0])
        if rank is None or rank < 2:
            continue
        shape = (-1,) + (1,) * (rank - 2)
        mul, add = f"{node.name}::multiplier", f"{node.name}::offset"
        graph.constants[mul] = params[0].astype(np.float32).reshape(shape)
        graph.constants[add] = params[1].astype(np.float32).reshape(shape)
        scaled = f"{node.name}::scaled"
        index = graph.nodes.index(node)
        graph.nodes[index:index + 1] = [WorkNode("Mul", f"{node.name}_mul", [node.inputs[0], mul], [scaled]),
                                        WorkNode("Add", f"{node.name}_add", [scaled, add], [node.outputs[0]])]
        graph.count("BatchNormalization as Mul+Add")


def _fold_into(graph: WorkGraph, node: WorkNode, multiplier: np.ndarray, offset: np.ndarray) -> bool:
    """Scales node's output channels by multiplier and adds offset, in its constants; False if it cannot."""
    if node.op == "Conv" and node.attrs.get("activation", "none") == "none":
        w = graph.const(node.inputs[1])
        if w is None or w.dtype != np.float32 or w.ndim < 3 or w.shape[0] != multiplier.size:
            return False
        bias = graph.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else np.zeros(w.shape[0])
        if bias is None or bias.size != w.shape[0]:
            return False
        new_w = w.astype(np.float64) * multiplier.reshape((-1,) + (1,) * (w.ndim - 1))
        new_b = bias.astype(np.float64).reshape(-1) * multiplier + offset
        _replace(graph, node, 1, new_w.astype(np.float32), "w_bn")
        _set_input(graph, node, 2, new_b.astype(np.float32), "b_bn")
        return True
    if node.op == "Gemm" and node.attrs.get("activation", "none") == "none" and not int(node.attrs.get("transA", 0)):
        w = graph.const(node.inputs[1])
        trans_b = int(node.attrs.get("transB", 0))
        if w is None or w.dtype != np.float32 or w.ndim != 2 or w.shape[0 if trans_b else 1] != multiplier.size:
            return False
        alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
        c = graph.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else np.zeros(multiplier.size)
        if c is None or c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1) or c.size not in (1, multiplier.size):
            return False
        column = multiplier.reshape(-1, 1) if trans_b else multiplier.reshape(1, -1)
        new_w = w.astype(np.float64) * alpha * column
        new_c = beta * np.broadcast_to(c.astype(np.float64).reshape(-1), multiplier.shape) * multiplier + offset
        _replace(graph, node, 1, new_w.astype(np.float32), "w_bn")
        _set_input(graph, node, 2, new_c.astype(np.float32), "c_bn")
        node.attrs.update(alpha=1.0, beta=1.0)
        return True
    return False


def _replace(graph: WorkGraph, node: WorkNode, index: int, value: np.ndarray, key: str) -> None:
    """A new constant for node's input index (the old one may have other readers)."""
    name = f"{node.name}::{key}"
    graph.constants[name] = np.array(value, order="C")
    node.inputs[index] = name


def _set_input(graph: WorkGraph, node: WorkNode, index: int, value: np.ndarray, key: str) -> None:
    while len(node.inputs) <= index:
        node.inputs.append("")
    _replace(graph, node, index, value, key)


def reduce_mean_to_pool(graph: WorkGraph, ranks: dict[str, int]) -> None:
    for node in list(graph.nodes):
        if node.op != "ReduceMean" or ranks.get(node.inputs[0]) != 4:
            continue
        axes = node.attrs.get("axes")
        if len(node.inputs) > 1 and node.inputs[1]:
            constant = graph.const(node.inputs[1])
            axes = None if constant is None else [int(a) for a in constant.reshape(-1)]
        if axes is None or sorted(int(a) % 4 for a in axes) != [2, 3]:
            continue
        index = graph.nodes.index(node)
        if int(node.attrs.get("keepdims", 1)):
            graph.nodes[index] = WorkNode("GlobalAveragePool", node.name, [node.inputs[0]], list(node.outputs))
            graph.count("ReduceMean as GlobalAveragePool")
        else:
            pooled = f"{node.name}::pooled"
            graph.nodes[index:index + 1] = [
                WorkNode("GlobalAveragePool", node.name, [node.inputs[0]], [pooled]),
                WorkNode("Flatten", f"{node.name}_flatten", [pooled], list(node.outputs), {"axis": 1})]
            graph.count("ReduceMean as GlobalAveragePool+Flatten")


def fuse_hard_swish(graph: WorkGraph) -> None:
    for node in list(graph.nodes):
        if node.op != "HardSigmoid" or abs(float(node.attrs.get("alpha", 0.2)) - 1 / 6) > 1e-6 or \
                abs(float(node.attrs.get("beta", 0.5)) - 0.5) > 1e-6:
            continue
        user = graph.only_consumer(node.outputs[0])
        if user is None or user.op != "Mul" or node.inputs[0] not in user.inputs:
            continue
        graph.nodes[graph.nodes.index(user)] = WorkNode("HardSwish", user.name, [node.inputs[0]], list(user.outputs))
        graph.nodes.remove(node)
        graph.count("HardSigmoid+Mul as HardSwish")


def fuse_residual_add(graph: WorkGraph, shapes: Shapes) -> None:
    """Run after _normalise (Conv's optional B is then present or "") and before fuse_activations."""
    for node in list(graph.nodes):
        if node.op != "Conv" or int(node.attrs.get("group", 1)) != 1 or len(node.inputs) > 3:
            continue
        add = graph.only_consumer(node.outputs[0])
        if add is None or add.op != "Add" or len(add.inputs) != 2 or add.inputs[0] == add.inputs[1]:
            continue
        z = add.inputs[1] if add.inputs[0] == node.outputs[0] else add.inputs[0]
        producer = graph.producer(z)
        earlier = producer is None or graph.nodes.index(producer) < graph.nodes.index(node)
        dims = shapes.get(node.outputs[0])
        if z in graph.constants or not earlier or dims is None or len(dims) != 4 or "?" in dims \
                or shapes.get(z) != dims:
            continue
        node.inputs = [*node.inputs, *[""] * (3 - len(node.inputs)), z]
        node.outputs = list(add.outputs)
        graph.nodes.remove(add)
        graph.count("Conv+Add")
