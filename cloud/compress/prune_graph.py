"""Structured pruning's graph analysis: trace a model with torch.fx and find, for each Conv/Linear, the
one layer that consumes its output channels (through activations, pooling, BatchNorm and a flatten), or
refuse with the layer and node that make it unsafe (residual adds, concatenations, reshapes, grouped
convs, shared modules)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from edgefleet.core.errors import EdgefleetError

log = logging.getLogger("edgefleet.cloud.compress.prune")

CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
LAYERS = (*CONV, nn.Linear)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardtanh, nn.Sigmoid, nn.Tanh,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity,
)  # fmt: skip
POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)  # fmt: skip
ELEMENTWISE_FUNCTIONS = {
    torch.relu, F.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, F.hardswish, F.hardtanh, torch.sigmoid,
    F.sigmoid, torch.tanh, F.tanh, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
}  # fmt: skip
POOL_FUNCTIONS = {
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
}  # fmt: skip
ELEMENTWISE_METHODS = {"relu", "sigmoid", "tanh", "contiguous"}


class PruneError(EdgefleetError):
    """The model cannot be pruned as asked; `layer` and `node` name where (when known)."""

    def __init__(self, message: str, layer: str | None = None, node: str | None = None) -> None:
        super().__init__(message)
        self.layer = layer
        self.node = node


# structured: finding producer -> consumer pairs --------------------------------------------------------
@dataclass(frozen=True)
class Link:
    producer: str  # module path of the Conv/Linear whose output channels go
    norms: tuple[str, ...]  # BatchNorms between them, which lose the same channels
    consumer: str  # module path of the Conv/Linear whose input channels go
    spatial: int  # input columns of the consumer per channel (>1 after a flatten)


def trace(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    try:
        traced = torch.fx.symbolic_trace(model)
    except Exception as err:  # noqa: BLE001 - fx raises many types on untraceable code
        raise PruneError(f"prune_channels cannot trace the model with torch.fx ({type(err).__name__}: {err}); "
                         f"it prunes models whose forward() is a plain data flow") from err
    ShapeProp(traced).propagate(example)
    return traced


def _describe(node: torch.fx.Node) -> str:
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"{node.op} {target!s} (node '{node.name}')"


def _only_tensor_arg(node: torch.fx.Node, source: torch.fx.Node) -> bool:
    """True when `source` is node's first argument and no other argument or keyword is a graph value."""
    values = [*node.args[1:], *node.kwargs.values()]
    return bool(node.args) and node.args[0] is source and not any(isinstance(v, torch.fx.Node) for v in values)


def _rank(node: torch.fx.Node) -> int | None:
    meta = node.meta.get("tensor_meta")
    return len(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _shape(node: torch.fx.Node) -> tuple[int, ...]:
    return tuple(node.meta["tensor_meta"].shape)


def find_links(traced: torch.fx.GraphModule, exclude: Sequence[str]) -> tuple[list[Link], list[str]]:
    """Producer -> consumer links for every prunable layer, and the layers left whole (model outputs)."""
    modules = dict(traced.named_modules())
    calls: dict[str, int] = {}
    for node in traced.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    links, whole = [], []
    for node in traced.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], LAYERS) or node.target in exclude:
            continue
        link = _follow(node, modules, calls)
        if link is None:
            whole.append(node.target)
        else:
            links.append(link)
    return links, whole


def _follow(start: torch.fx.Node, modules: dict[str, nn.Module], calls: dict[str, int]) -> Link | None:
    name = start.target
    producer = modules[name]
    is_conv = isinstance(producer, CONV)

    def refuse(reason: str, node: torch.fx.Node | None = None) -> PruneError:
        return PruneError(f"prune_channels cannot remove output channels of layer '{name}': {reason}; leave it whole "
                          f"with exclude=['{name}'] or prune a plain sequential model", layer=name,
                          node=node.name if node is not None else None)

    if calls[name] > 1:
        raise refuse(f"the module is called {calls[name]} times (shared weights)")
    if is_conv and producer.groups != 1:
        raise refuse(f"it is a grouped convolution (groups={producer.groups})")
    if not is_conv and _rank(start) != 2:
        raise refuse(f"its output is {_rank(start)}-D; only Linear layers on (batch, features) are followed", start)
    norms: list[str] = []
    flattened = False
    spatial = 1
    current = start
    while True:
        users = list(current.users)
        if not any(_feeds_weights(u, modules) for u in users):
            log.debug("prune_channels: layer %s feeds the model output only; kept whole", name)
            return None  # an output layer: its size is the model's interface, never pruned
        if len(users) != 1:
            used_by = ", ".join(_describe(u) for u in users)
            raise refuse(f"its output ({current.name}) is used by {len(users)} nodes ({used_by}): a branch, "
                         f"residual add or concatenation needs matching channels elsewhere", current)
        user = users[0]
        if not _only_tensor_arg(user, current):
            raise refuse(f"it reaches {_describe(user)}, which combines it with other graph values", user)
        module = modules.get(user.target) if user.op == "call_module" else None
        if isinstance(module, LAYERS):
            return _consumer(start, user, module, norms, flattened, spatial, calls, refuse)
        if isinstance(module, ELEMENTWISE_MODULES) or user.target in ELEMENTWISE_FUNCTIONS or (
                user.op == "call_method" and user.target in ELEMENTWISE_METHODS):
            current = user
            continue
        if not flattened and is_conv and (isinstance(module, POOL_MODULES) or (
                user.op == "call_function" and user.target in POOL_FUNCTIONS)):
            current = user
            continue
        if not flattened and isinstance(module, NORMS) and (is_conv or _rank(current) == 2):
            if calls[user.target] > 1 or module.num_features != _shape(current)[1]:
                raise refuse(f"BatchNorm {user.target} is shared or does not match the channels", user)
            norms.append(user.target)
            current = user
            continue
        if not flattened and is_conv and _is_flatten(user, module):
            input_shape = _shape(current)
            spatial = math.prod(input_shape[2:])
            flattened = True
            current = user
            continue
        raise refuse(f"it reaches {_describe(user)}, which prune_channels does not follow (it follows activations, "
                     f"dropout, pooling, BatchNorm and flatten(x, 1) into the next Conv or Linear)", user)


def _feeds_weights(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    """True when a module with parameters (or a graph attribute) lies downstream of node."""
    seen, stack = set(), [node]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        if any(n.op == "get_attr" for n in current.all_input_nodes) or (current.op == "call_module" and any(
                True for _ in modules[current.target].parameters())):
            return True
        stack.extend(current.users)
    return False


def _is_flatten(node: torch.fx.Node, module: nn.Module | None) -> bool:
    if isinstance(module, nn.Flatten):
        return module.start_dim == 1 and module.end_dim == -1
    if (node.op == "call_function" and node.target is torch.flatten) or (
            node.op == "call_method" and node.target == "flatten"):
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return start == 1 and end == -1
    return False


def _consumer(start: torch.fx.Node, user: torch.fx.Node, module: nn.Module, norms: list[str], flattened: bool,
              spatial: int, calls: dict[str, int], refuse: Callable[..., PruneError]) -> Link:
    channels = _shape(start)[1]  # (batch, channels, ...) from a Conv, (batch, features) from a Linear
    if calls[user.target] > 1:
        raise refuse(f"its consumer {user.target} is called more than once (shared weights)", user)
    if isinstance(module, CONV):
        if flattened or module.groups != 1 or module.in_channels != channels:
            raise refuse(f"its consumer {user.target} is a grouped convolution or does not take its "
                         f"{channels} channels", user)
        return Link(start.target, tuple(norms), user.target, 1)
    if not flattened and _rank(start) != 2:
        raise refuse(f"its {_rank(start)}-D output reaches Linear {user.target} without flatten(x, 1)", user)
    if module.in_features != channels * spatial:
        raise refuse(f"Linear {user.target} takes {module.in_features} inputs, not {channels} x {spatial}", user)
    return Link(start.target, tuple(norms), user.target, spatial)


# structured: choosing and removing channels ------------------------------------------------------------
def out_channels(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, CONV) else module.out_features
