"""One-seed look at the transfer loss and the grown models' learning rate on the default ViT recipe.

Run from the repository root (about 4 minutes on 2 CPU cores)::

    .venv/bin/python -m benchmarks.vit_transfer_ablation

It prints, per setting, the final held-out accuracy of each model of
``RECIPES["vit"]`` trained as a chain; ``docs/chain.md`` quotes the output.
"""

from __future__ import annotations

from benchmarks._recipe_settings import compare_settings
from comptlib import FeatureMSE

SETTINGS = {
    "default (FeatureMSE 500, grown LR x0.5)": {},
    "FeatureMSE with linearly decaying weight": {"transferer": FeatureMSE(schedule="linear")},
    "no transfer": {"transferer": None},
    "grown LR x1": {"grown_lr_scale": 1.0},
    "grown LR x1, decaying FeatureMSE": {"grown_lr_scale": 1.0, "transferer": FeatureMSE(schedule="linear")},
}

if __name__ == "__main__":
    compare_settings("vit", SETTINGS)
