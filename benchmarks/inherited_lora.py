"""Does training a grown model's inherited weights through LoRA help? The Llama recipe, both ways.

Run from the repository root (about 4 minutes on 2 CPU cores)::

    .venv/bin/python -m benchmarks.inherited_lora

It trains ``RECIPES["llama"]`` as a chain with ``inherited="full"`` and with
``inherited="lora"`` (ranks 8 and 32), same seed and batches, and prints each
model's held-out bits per byte; ``docs/chain.md`` quotes the output.
"""

from __future__ import annotations

from benchmarks._recipe_settings import compare_settings

HALF = {"grown_lr_scale": 0.5}  # the default grown learning rate when docs/chain.md's table was measured
SETTINGS = {
    "full": HALF,
    "lora rank 8": HALF | {"inherited": "lora", "lora_rank": 8},
    "lora rank 32": HALF | {"inherited": "lora", "lora_rank": 32},
}

if __name__ == "__main__":
    compare_settings("llama", SETTINGS)
