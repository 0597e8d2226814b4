"""Train one built-in recipe as a chain under several Chain settings and print each model's final metric.

The one-seed ablations in ``benchmarks/`` share this loop; each only names its settings.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle threads sleep on shared cores

import time
from typing import Any

import torch

from comptlib import Chain
from comptlib.recipes import RECIPES


def compare_settings(family: str, settings: dict[str, dict[str, Any]], seed: int = 0) -> None:
    """For each labelled set of Chain settings, the recipe's chain from the same seed and batches."""
    torch.set_flush_denormal(True)
    recipe = RECIPES[family]
    train, val = recipe.loaders(recipe.batch_size, seed)
    for label, extra in settings.items():
        torch.manual_seed(seed)
        start = time.perf_counter()
        chain = Chain(
            recipe.models(),
            budgets=list(recipe.budgets),
            unit=recipe.unit,
            lr=recipe.lr,
            seed=seed,
            progress=False,
            **extra,
        ).fit(train, val)
        metric = chain.report_["metric"]
        final = [round(h["val"][-1][metric], 3) for h in chain.history_]
        print(f"{label:<45} {metric} {final}  ({time.perf_counter() - start:.0f} s)", flush=True)
