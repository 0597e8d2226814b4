"""Train what a grown model inherited through low-rank adapters, and its new weights fully.

After growth, some entries of each weight come from the trained predecessor
(copied, rescaled or averaged) and the rest are new. With
``Chain(inherited="lora")`` a grown stage keeps the inherited entries at their
values plus a trainable low-rank update ``B @ A`` restricted to them, while
new entries train freely; the adapters are merged back at the end of the
stage, so the model stays a plain torchvision or transformers model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize

from comptlib.grower import Grower


@torch.no_grad()
def inherited_masks(grower: Grower, source: nn.Module, target: nn.Module) -> dict[str, torch.Tensor]:
    """For each target parameter, the entries whose grown value depends on the source.

    Found by growing a copy of the source whose parameters are all NaN into a
    copy of the target: NaN spreads to exactly the entries computed from the
    source, whatever the family's operator.
    """
    poisoned = copy.deepcopy(source)
    for param in poisoned.parameters():
        param.fill_(float("nan"))
    quiet = copy.copy(grower)
    quiet.noise = 0.0  # noise scaled by a NaN std would poison free entries too
    probe = quiet.grow(poisoned, copy.deepcopy(target))
    return {name: param.isnan() for name, param in probe.named_parameters()}


class _MaskedLoRA(nn.Module):
    """``W = M * (W0 + B @ A * scale) + (1 - M) * V``: inherited entries move only through ``B @ A``."""

    def __init__(self, weight: torch.Tensor, mask: torch.Tensor, rank: int, alpha: float) -> None:
        super().__init__()
        out_features, in_features = weight.shape
        self.register_buffer("mask", mask.to(weight.dtype))
        self.register_buffer("frozen", weight.detach().clone())
        self.A = nn.Parameter(
            torch.randn(rank, in_features, dtype=weight.dtype, device=weight.device) / in_features**0.5
        )
        self.B = nn.Parameter(torch.zeros(out_features, rank, dtype=weight.dtype, device=weight.device))
        self.scale = alpha / rank

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        inherited = self.frozen + (self.B @ self.A) * self.scale
        return self.mask * inherited + (1 - self.mask) * weight


def attach_lora(model: nn.Module, masks: dict[str, torch.Tensor], rank: int = 8, alpha: float = 16.0) -> int:
    """Put :class:`_MaskedLoRA` on every ``nn.Linear`` weight with inherited entries; returns how many.

    Weights shared with another module (a tied ``lm_head``) are left to train
    fully: one parametrization cannot serve two owners.
    """
    counts: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        counts[id(param)] = counts.get(id(param), 0) + 1
    attached = 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or counts[id(module.weight)] > 1:
            continue
        mask = masks.get(f"{name}.weight")
        if mask is None or not mask.any():
            continue
        parametrize.register_parametrization(module, "weight", _MaskedLoRA(module.weight, mask, rank, alpha))
        attached += 1
    return attached


def merge_lora(model: nn.Module) -> None:
    """Fold the adapters into plain weights and remove them."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
