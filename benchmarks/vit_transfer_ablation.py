"""One-seed look at the transfer loss and the grown models' learning rate on the default ViT recipe.

Run from the repository root (about 4 minutes on 2 CPU cores)::

    .venv/bin/python -m benchmarks.vit_transfer_ablation

It prints, per setting, the final held-out accuracy of each model of
``RECIPES["vit"]`` trained as a chain; ``docs/chain.md`` quotes the output.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import time

import torch

from comptlib import Chain, FeatureMSE
from comptlib.recipes import RECIPES

SETTINGS = {
    "default (FeatureMSE 500, grown LR x0.5)": {},
    "FeatureMSE with linearly decaying weight": {"transferer": FeatureMSE(schedule="linear")},
    "no transfer": {"transferer": None},
    "grown LR x1": {"grown_lr_scale": 1.0},
    "grown LR x1, decaying FeatureMSE": {"grown_lr_scale": 1.0, "transferer": FeatureMSE(schedule="linear")},
}


def main() -> None:
    torch.set_flush_denormal(True)
    recipe = RECIPES["vit"]
    train, val = recipe.loaders(recipe.batch_size, 0)
    for label, settings in SETTINGS.items():
        torch.manual_seed(0)
        start = time.perf_counter()
        chain = Chain(
            recipe.models(), budgets=list(recipe.budgets), unit=recipe.unit, lr=recipe.lr, progress=False, **settings
        ).fit(train, val)
        accuracy = [round(h["val"][-1]["accuracy"], 3) for h in chain.history_]
        print(f"{label:<45} {accuracy}  ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
