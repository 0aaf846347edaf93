"""Low-rank factorisation: a Linear (or 1x1 Conv) layer W becomes two thinner ones, W ≈ (U·√S)(√S·Vᵀ).

    result = factorize(model, energy=0.9)                                 # keep 90% of each layer's energy
    result = factorize(model, rank=16)                                    # one rank for every layer
    result = factorize(model, accuracy_budget=(lambda m: accuracy(m, x_val, y_val), 0.01))
    result.model, result.layers     # per layer: rank, full rank, params before/after, retained energy

Works on a deep copy; the model passed in is never modified. A layer of shape (out, in) costs out·in
weights; rank r costs r·(in + out). A layer is factorised only when that saves at least `min_reduction`
of its weights; the others are listed with `factorized=False`. With `accuracy_budget=(eval_fn,
max_drop)` layers are taken largest first and each gets the smallest rank (bisection) for which
eval_fn(model) stays within max_drop of the original model's score, counting the layers already
factorised; a layer that cannot stay within it is left whole. `fine_tune(model)` runs once at the end.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from edgefleet.cloud.compress.prune import FineTuneFn, count_parameters, describe_fine_tune
from edgefleet.core.errors import EdgefleetError

log = logging.getLogger(__name__)

EvalFn = Callable[[nn.Module], float]


class LowRankError(EdgefleetError):
    """Invalid factorisation options, or nothing in the model that can be factorised."""


@dataclass(frozen=True)
class LayerRank:
    name: str
    kind: str  # "Linear" or "Conv2d"
    full_rank: int  # min(out, in)
    rank: int  # the chosen rank (full_rank when left whole)
    energy: float  # fraction of the squared singular values kept at that rank
    params_before: int
    params_after: int
    factorized: bool


@dataclass(frozen=True)
class LowRankResult:
    model: nn.Module  # the factorised copy, in eval mode
    layers: tuple[LayerRank, ...]
    params_before: int
    params_after: int
    options: dict = field(default_factory=dict)

    @property
    def param_reduction(self) -> float:
        return 1.0 - self.params_after / self.params_before if self.params_before else 0.0

    def lineage_step(self) -> dict:
        return {
            "stage": "lowrank",
            "options": dict(self.options),
            "params": {"before": self.params_before, "after": self.params_after},
            "layers": [{"name": r.name, "kind": r.kind, "rank": r.rank, "full_rank": r.full_rank,
                        "energy": r.energy, "params_before": r.params_before, "params_after": r.params_after,
                        "factorized": r.factorized} for r in self.layers],
        }


def _candidate(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.groups == 1 and tuple(module.kernel_size) == (1, 1)


def _matrix(module: nn.Module) -> torch.Tensor:
    return module.weight.detach().reshape(module.weight.shape[0], -1).double()  # (out, in)


def _max_rank(out_features: int, in_features: int, min_reduction: float) -> int:
    """The largest rank whose two factors save at least min_reduction of the weights, and some (0 if none)."""
    full = out_features * in_features
    rank = int(full * (1.0 - min_reduction) // (out_features + in_features))
    if rank * (out_features + in_features) >= full:
        rank -= 1
    return max(0, min(rank, out_features, in_features))


def _factors(module: nn.Module, rank: int, svd: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> nn.Sequential:
    u, s, vh = svd
    root = torch.sqrt(s[:rank])
    first_w = (root[:, None] * vh[:rank]).to(module.weight.dtype)  # (rank, in)
    second_w = (u[:, :rank] * root[None, :]).to(module.weight.dtype)  # (out, rank)
    has_bias = module.bias is not None
    if isinstance(module, nn.Linear):
        first = nn.Linear(module.in_features, rank, bias=False)
        second = nn.Linear(rank, module.out_features, bias=has_bias)
    else:
        first = nn.Conv2d(module.in_channels, rank, 1, stride=module.stride, padding=module.padding,
                          dilation=module.dilation, bias=False, padding_mode=module.padding_mode)
        second = nn.Conv2d(rank, module.out_channels, 1, bias=has_bias)
        first_w, second_w = first_w[:, :, None, None], second_w[:, :, None, None]
    with torch.no_grad():
        first.weight.copy_(first_w)
        second.weight.copy_(second_w)
        if has_bias:
            second.bias.copy_(module.bias.detach())
    return nn.Sequential(first, second).to(module.weight.device)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _energy_rank(s: torch.Tensor, energy: float) -> int:
    cumulative = torch.cumsum(s**2, 0) / torch.sum(s**2)
    return int(torch.searchsorted(cumulative, torch.tensor(energy, dtype=cumulative.dtype)).item()) + 1


def factorize(
    model: nn.Module,
    *,
    energy: float | None = None,
    rank: int | None = None,
    accuracy_budget: tuple[EvalFn, float] | None = None,
    min_reduction: float = 0.1,
    layers: Sequence[str] | None = None,
    fine_tune: FineTuneFn | None = None,
) -> LowRankResult:
    """Truncated-SVD factorisation of the Linear and 1x1 Conv2d layers (all, or those named in `layers`).

    Exactly one rule: energy (default 0.9: the smallest rank keeping that fraction of Σσ²), rank (the
    same rank everywhere, capped per layer), or accuracy_budget=(eval_fn, max_drop).
    """
    chosen = [r for r in (energy, rank, accuracy_budget) if r is not None]
    if len(chosen) > 1:
        raise LowRankError("factorize takes one rule: energy, rank or accuracy_budget")
    if not chosen:
        energy = 0.9
    if energy is not None and not 0.0 < energy <= 1.0:
        raise LowRankError(f"energy must be in (0, 1], got {energy!r}")
    if rank is not None and int(rank) < 1:
        raise LowRankError(f"rank must be >= 1, got {rank!r}")
    if not 0.0 <= min_reduction < 1.0:
        raise LowRankError(f"min_reduction must be in [0, 1), got {min_reduction!r}")
    result = copy.deepcopy(model).eval()
    candidates = [(n, m) for n, m in result.named_modules() if _candidate(m) and (layers is None or n in layers)]
    if layers is not None:
        missing = sorted(set(layers) - {n for n, _ in candidates})
        if missing:
            raise LowRankError(f"not a Linear or 1x1 Conv2d layer of the model: {', '.join(missing)}")
    if not candidates:
        raise LowRankError("the model has no Linear or 1x1 Conv2d layer to factorise")
    baseline = accuracy_budget[0](model) if accuracy_budget is not None else None
    table = []
    # largest first, so an accuracy budget goes where it saves the most
    for name, module in sorted(candidates, key=lambda item: -item[1].weight.numel()):
        matrix = _matrix(module)
        out_f, in_f = matrix.shape
        svd = torch.linalg.svd(matrix, full_matrices=False)
        s = svd[1]
        before = sum(p.numel() for p in module.parameters())
        limit = _max_rank(out_f, in_f, min_reduction)
        if energy is not None:
            wanted = _energy_rank(s, energy)
        elif rank is not None:
            wanted = min(int(rank), len(s))
        else:
            wanted = _budget_rank(result, name, module, svd, limit, baseline, accuracy_budget)
        bias = module.bias.numel() if module.bias is not None else 0
        kept = float((s[:wanted] ** 2).sum() / (s**2).sum()) if wanted else 0.0
        if wanted < 1 or wanted > limit:
            log.info("lowrank: %s left whole (rank %s of %d would not save %.0f%%)", name, wanted, len(s),
                     100 * min_reduction)
            table.append(LayerRank(name, type(module).__name__, len(s), len(s), 1.0, before, before, False))
            continue
        _replace(result, name, _factors(module, wanted, svd))
        after = wanted * (out_f + in_f) + bias
        log.info("lowrank: %s rank %d of %d, %d -> %d parameters", name, wanted, len(s), before, after)
        table.append(LayerRank(name, type(module).__name__, len(s), wanted, kept, before, after, True))
    if fine_tune is not None:
        fine_tune(result)
    result.eval()
    rule = ({"energy": energy} if energy is not None else {"rank": int(rank)} if rank is not None
            else {"max_accuracy_drop": float(accuracy_budget[1]), "baseline": baseline})
    options = {**rule, "min_reduction": min_reduction, "layers": list(layers) if layers is not None else None,
               "fine_tune": describe_fine_tune(fine_tune)}
    return LowRankResult(result, tuple(table), count_parameters(model), count_parameters(result), options)


def _budget_rank(model: nn.Module, name: str, module: nn.Module, svd: tuple, limit: int, baseline: float,
                 budget: tuple[EvalFn, float]) -> int:
    """The smallest rank <= limit keeping eval_fn within max_drop of baseline (0 if even `limit` fails)."""
    evaluate, max_drop = budget
    if limit < 1:
        return 0

    def within(rank: int) -> bool:
        _replace(model, name, _factors(module, rank, svd))
        try:
            return evaluate(model) >= baseline - max_drop
        finally:
            _replace(model, name, module)

    if not within(limit):
        return 0
    low, high = 1, limit  # high always passes
    while low < high:
        middle = (low + high) // 2
        if within(middle):
            high = middle
        else:
            low = middle + 1
    return high
