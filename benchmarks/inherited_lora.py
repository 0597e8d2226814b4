"""Does training a grown model's inherited weights through LoRA help? The Llama recipe, both ways.

Run from the repository root (about 4 minutes on 2 CPU cores)::

    .venv/bin/python -m benchmarks.inherited_lora

It trains ``RECIPES["llama"]`` as a chain with ``inherited="full"`` and with
``inherited="lora"`` (ranks 8 and 32), same seed and batches, and prints each
model's held-out bits per byte; ``docs/chain.md`` quotes the output.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import time

import torch

from comptlib import Chain
from comptlib.recipes import RECIPES

SETTINGS = {
    "full": {},
    "lora rank 8": {"inherited": "lora", "lora_rank": 8},
    "lora rank 32": {"inherited": "lora", "lora_rank": 32},
}


def main() -> None:
    torch.set_flush_denormal(True)
    recipe = RECIPES["llama"]
    train, val = recipe.loaders(recipe.batch_size, 0)
    for label, settings in SETTINGS.items():
        torch.manual_seed(0)
        start = time.perf_counter()
        chain = Chain(
            recipe.models(), budgets=list(recipe.budgets), unit=recipe.unit, lr=recipe.lr, progress=False, **settings
        ).fit(train, val)
        bpb = [round(h["val"][-1]["bits_per_byte"], 3) for h in chain.history_]
        print(f"{label:<14} held-out bits/byte {bpb}  ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
