"""Pruning: zero the smallest weights (unstructured), or remove whole channels (structured).

    result = prune_channels(model, 0.5, x_train[:8], fine_tune=FineTune(x_train, y_train, FitOptions(epochs=5)))
    result.model                      # a smaller copy: Conv2d/Linear layers really have fewer channels
    result.params_before, result.params_after, result.flops_before, result.flops_after
    result.lineage_step()             # what the bundle's lineage records

    result = prune_unstructured(model, 0.8)    # 80% of the Conv/Linear weights are exactly zero

Both work on a deep copy; the model passed in is never modified. `schedule_steps` prunes gradually:
step i of n reaches i/n of the requested amount, and `fine_tune(model)` runs after every step (a
`FineTune` runs the project's training loop; any callable taking the model works).

Structured pruning (`prune_channels`) traces the model with torch.fx and follows each Conv/Linear
layer's output to the one layer that consumes it, through channel-wise ops only (activations, dropout,
pooling, BatchNorm, which loses the same channels) and, from a Conv to a Linear, one flatten(start_dim=1)
whose input columns are removed channel by channel. A layer whose output is the model's output keeps
its channels. Anything else (a residual add, a concatenation, a tensor used twice, a reshape, a grouped
conv, an op this module does not know) is refused with a PruneError naming the layer and the node,
instead of producing a wrong model; `exclude=[...]` leaves such layers whole. Channels are ranked by
the L1 norm of their filter. `amount` is the fraction of parameters to remove (target="params", the
default: one channel ratio for all prunable layers, chosen to hit it) or of each layer's output
channels (target="channels"; parameters then fall faster, about 1-(1-amount)² between two pruned layers).

FLOPs are those of the exported ONNX graph (`compilers.flops.count_flops` at batch 1), the numbers a
bundle's manifest shows.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.fx
from torch import nn
from torch.nn.utils import prune as torch_prune

from edgefleet.cloud.compress.prune_graph import (  # noqa: E402 - re-exported: PruneError
    CONV,
    LAYERS,
    NORMS,
    Link,
    PruneError,
    find_links,
    out_channels,
    trace,
)
from edgefleet.cloud.training import FitOptions, fit_classifier
from edgefleet.compilers.flops import count_flops

log = logging.getLogger(__name__)

FineTuneFn = Callable[[nn.Module], object]


@dataclass(frozen=True, eq=False)
class FineTune:
    """Fine-tuning with the project's training loop (cloud.training.fit_classifier) on (x, y)."""

    x: np.ndarray
    y: np.ndarray
    options: FitOptions = FitOptions(epochs=5)

    def __call__(self, model: nn.Module) -> None:
        fit_classifier(model, self.x, self.y, self.options)

    def describe(self) -> dict:
        return {"epochs": self.options.epochs, "lr": self.options.lr, "batch_size": self.options.batch_size,
                "weight_decay": self.options.weight_decay, "seed": self.options.seed, "samples": int(len(self.x))}


def describe_fine_tune(fine_tune: FineTuneFn | None) -> dict | None:
    """What the lineage records about a fine-tuning callback."""
    if fine_tune is None:
        return None
    if isinstance(fine_tune, FineTune):
        return fine_tune.describe()
    return {"callback": getattr(fine_tune, "__qualname__", type(fine_tune).__name__)}


@dataclass(frozen=True)
class LayerChange:
    name: str
    kind: str  # the module class, e.g. "Conv2d"
    before: int  # output channels (Conv) or features (Linear)
    after: int


@dataclass(frozen=True)
class PruneResult:
    method: str  # "prune_channels" or "prune_unstructured"
    model: nn.Module  # the pruned copy, in eval mode
    params_before: int
    params_after: int
    nonzero_before: int  # parameters that are not exactly zero
    nonzero_after: int
    flops_before: int | None  # ONNX FLOPs per sample; None when no example input was given
    flops_after: int | None
    sparsity: float  # fraction of exact zeros among the Conv/Linear weights of the result
    layers: tuple[LayerChange, ...] = ()
    options: dict = field(default_factory=dict)

    @property
    def param_reduction(self) -> float:
        return 1.0 - self.params_after / self.params_before if self.params_before else 0.0

    @property
    def flops_reduction(self) -> float | None:
        if not self.flops_before or self.flops_after is None:
            return None
        return 1.0 - self.flops_after / self.flops_before

    def lineage_step(self) -> dict:
        return {
            "stage": self.method,
            "options": dict(self.options),
            "params": {"before": self.params_before, "after": self.params_after},
            "nonzero_params": {"before": self.nonzero_before, "after": self.nonzero_after},
            "flops_per_sample": {"before": self.flops_before, "after": self.flops_after},
            "sparsity": self.sparsity,
            "layers": [{"name": c.name, "kind": c.kind, "before": c.before, "after": c.after} for c in self.layers],
        }


# measuring ---------------------------------------------------------------------------------------------
def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_nonzero(model: nn.Module) -> int:
    return sum(int(torch.count_nonzero(p.detach())) for p in model.parameters())


def weight_sparsity(model: nn.Module) -> float:
    weights = [m.weight.detach() for m in model.modules() if isinstance(m, LAYERS)]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total if total else 0.0


def onnx_flops(model: nn.Module, example_input: np.ndarray | torch.Tensor) -> int:
    """FLOPs per sample of the model as export_torch writes it (same exporter, count_flops at batch 1)."""
    from edgefleet.compilers.export import _export_onnx

    frozen = copy.deepcopy(model).eval()
    example = _as_tensor(example_input)
    with tempfile.TemporaryDirectory(prefix="edgefleet-flops-") as tmp:
        path = Path(tmp) / "model.onnx"
        _export_onnx(frozen, (example,), path, ["input"], None)
        return int(count_flops(onnx.load(str(path)), batch=1)["total"])


def _as_tensor(value: np.ndarray | torch.Tensor) -> torch.Tensor:
    return value.detach() if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))


def _check_amount(amount: float, schedule_steps: int) -> None:
    if not 0.0 < float(amount) < 1.0:
        raise PruneError(f"amount must be a fraction in (0, 1), got {amount!r}")
    if int(schedule_steps) < 1:
        raise PruneError(f"schedule_steps must be >= 1, got {schedule_steps!r}")


# unstructured ------------------------------------------------------------------------------------------
def prune_unstructured(
    model: nn.Module,
    amount: float,
    *,
    schedule_steps: int = 1,
    fine_tune: FineTuneFn | None = None,
    example_input: np.ndarray | torch.Tensor | None = None,
) -> PruneResult:
    """Global magnitude pruning of all Conv/Linear weights: the smallest `amount` of them become exact zeros.

    The masks stay in place while `fine_tune` runs between steps (pruned weights stay zero), then are made
    permanent (torch.nn.utils.prune.remove), so the exported ONNX holds real zeros. FLOPs of a dense
    graph do not change; they are measured only when `example_input` is given.
    """
    _check_amount(amount, schedule_steps)
    pruned = copy.deepcopy(model)
    targets = [(m, "weight") for m in pruned.modules() if isinstance(m, LAYERS)]
    if not targets:
        raise PruneError("the model has no Conv or Linear layer to prune")
    total = sum(m.weight.numel() for m, _ in targets)
    for step in range(1, int(schedule_steps) + 1):
        wanted = round(float(amount) * step / schedule_steps * total)
        already = sum(int((m.weight_mask == 0).sum()) for m, _ in targets if hasattr(m, "weight_mask"))
        if wanted > already:
            torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured,
                                            amount=int(wanted - already))
        log.info("prune_unstructured step %d/%d: %d of %d weights masked", step, schedule_steps, wanted, total)
        if fine_tune is not None:
            fine_tune(pruned)
    for module, name in targets:
        if torch_prune.is_pruned(module):
            torch_prune.remove(module, name)
    pruned.eval()
    options = {"amount": float(amount), "schedule_steps": int(schedule_steps), "scope": "global",
               "criterion": "l1", "fine_tune": describe_fine_tune(fine_tune)}
    flops = onnx_flops(model, example_input) if example_input is not None else None
    return PruneResult(
        method="prune_unstructured", model=pruned,
        params_before=count_parameters(model), params_after=count_parameters(pruned),
        nonzero_before=count_nonzero(model), nonzero_after=count_nonzero(pruned),
        flops_before=flops, flops_after=onnx_flops(pruned, example_input) if example_input is not None else None,
        sparsity=weight_sparsity(pruned), options=options,
    )


def _params_after(model: nn.Module, links: list[Link], keep: dict[str, int]) -> int:
    """The parameter count once each link's producer keeps keep[producer] channels (computed, not built)."""
    out_ratio: dict[str, float] = {}
    in_ratio: dict[str, float] = {}
    for link in links:
        ratio = keep[link.producer] / out_channels(model.get_submodule(link.producer))
        out_ratio[link.producer] = ratio
        in_ratio[link.consumer] = ratio
        for norm in link.norms:
            out_ratio[norm] = ratio
    total = count_parameters(model)
    for name in set(out_ratio) | set(in_ratio):
        module = model.get_submodule(name)
        before = sum(p.numel() for p in module.parameters(recurse=False))
        o, i = out_ratio.get(name, 1.0), in_ratio.get(name, 1.0)
        if isinstance(module, NORMS):
            after = before * o
        else:
            bias = module.bias.numel() if module.bias is not None else 0
            after = (before - bias) * o * i + bias * o
        total += round(after) - before
    return int(total)


def _choose_keep(model: nn.Module, links: list[Link], original: dict[str, int], fraction: float,
                 target: str, params_target: float) -> dict[str, int]:
    """Channels each producer keeps: `fraction` of its original count (target="channels"), or the one
    ratio of the original counts whose parameter count comes closest to params_target (target="params")."""
    current = {link.producer: out_channels(model.get_submodule(link.producer)) for link in links}

    def at(ratio: float) -> dict[str, int]:
        return {name: min(current[name], max(1, round(original[name] * ratio))) for name in current}

    if target == "channels":
        return at(fraction)
    low, high = 0.0, 1.0
    for _ in range(40):  # the parameter count grows with the ratio: bisect
        middle = (low + high) / 2
        if _params_after(model, links, at(middle)) > params_target:
            high = middle
        else:
            low = middle
    candidates = [at(low), at(high)]
    return min(candidates, key=lambda keep: abs(_params_after(model, links, keep) - params_target))


def _l1_keep(weight: torch.Tensor, count: int) -> torch.Tensor:
    """Indices (ascending) of the `count` output channels with the largest L1 norm."""
    norms = weight.detach().abs().flatten(1).sum(dim=1)
    return torch.sort(torch.topk(norms, count).indices).values


def _select(module: nn.Module, names: Sequence[str], index: torch.Tensor, dim: int) -> None:
    for name in names:
        value = getattr(module, name, None)
        if value is None:
            continue
        chosen = value.detach().index_select(dim, index).clone()
        if isinstance(value, nn.Parameter):
            setattr(module, name, nn.Parameter(chosen, requires_grad=value.requires_grad))
        else:
            setattr(module, name, chosen)  # a registered buffer stays a buffer


def _remove_channels(model: nn.Module, link: Link, count: int) -> LayerChange:
    producer = model.get_submodule(link.producer)
    before = out_channels(producer)
    keep = _l1_keep(producer.weight, count)
    _select(producer, ("weight", "bias"), keep, 0)
    if isinstance(producer, CONV):
        producer.out_channels = count
    else:
        producer.out_features = count
    for name in link.norms:
        norm = model.get_submodule(name)
        _select(norm, ("weight", "bias", "running_mean", "running_var"), keep, 0)
        norm.num_features = count
    consumer = model.get_submodule(link.consumer)
    columns = (keep[:, None] * link.spatial + torch.arange(link.spatial)[None, :]).reshape(-1)
    _select(consumer, ("weight",), columns, 1)
    if isinstance(consumer, CONV):
        consumer.in_channels = count
    else:
        consumer.in_features = count * link.spatial
    return LayerChange(link.producer, type(producer).__name__, before, count)


def prune_channels(
    model: nn.Module,
    amount: float,
    example_input: np.ndarray | torch.Tensor,
    *,
    fine_tune: FineTuneFn | None = None,
    schedule_steps: int = 1,
    target: str = "params",
    exclude: Sequence[str] = (),
    measure_flops: bool = True,
) -> PruneResult:
    """Removes the lowest-L1 output channels of every prunable Conv/Linear layer (see the module docstring).

    example_input: a batch of real inputs (traced for shapes, exported for FLOPs). target="params":
    `amount` of the model's parameters go; target="channels": `amount` of each layer's output channels.
    Raises PruneError on a graph it cannot prune safely (residual adds, concatenations, reshapes, ...).
    """
    _check_amount(amount, schedule_steps)
    if target not in ("params", "channels"):
        raise PruneError(f"target must be 'params' or 'channels', got {target!r}")
    example = _as_tensor(example_input)
    pruned = copy.deepcopy(model).eval()
    with torch.no_grad():
        expected = pruned(example)
    links, whole = find_links(trace(pruned, example), exclude)
    if not links:
        raise PruneError("prune_channels found no Conv/Linear layer whose output channels it can remove "
                         f"(left whole: {', '.join(whole) or 'none'})")
    log.info("prune_channels: pruning %s; left whole: %s", ", ".join(k.producer for k in links),
             ", ".join([*whole, *exclude]) or "none")
    original = {k.producer: out_channels(pruned.get_submodule(k.producer)) for k in links}
    params_before = count_parameters(model)
    for step in range(1, int(schedule_steps) + 1):
        fraction = float(amount) * step / schedule_steps
        keep = _choose_keep(pruned, links, original, 1.0 - fraction, target, (1.0 - fraction) * params_before)
        for link in links:
            _remove_channels(pruned, link, keep[link.producer])
        log.info("prune_channels step %d/%d: %d parameters (from %d)", step, schedule_steps,
                 count_parameters(pruned), params_before)
        if fine_tune is not None:
            fine_tune(pruned)
        pruned.eval()
    with torch.no_grad():
        got = pruned(example)
    if got.shape != expected.shape:  # a safety net: the link rules should make this impossible
        raise PruneError(f"pruning changed the output shape from {tuple(expected.shape)} to {tuple(got.shape)}")
    changes = tuple(LayerChange(k.producer, type(pruned.get_submodule(k.producer)).__name__, original[k.producer],
                                out_channels(pruned.get_submodule(k.producer))) for k in links)
    options = {"amount": float(amount), "target": target, "schedule_steps": int(schedule_steps),
               "criterion": "l1", "exclude": list(exclude), "fine_tune": describe_fine_tune(fine_tune)}
    return PruneResult(
        method="prune_channels", model=pruned,
        params_before=params_before, params_after=count_parameters(pruned),
        nonzero_before=count_nonzero(model), nonzero_after=count_nonzero(pruned),
        flops_before=onnx_flops(model, example) if measure_flops else None,
        flops_after=onnx_flops(pruned, example) if measure_flops else None,
        sparsity=weight_sparsity(pruned), layers=changes, options=options,
    )
