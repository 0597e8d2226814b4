"""A Vision Transformer chain on scikit-learn's digits, against training each model alone.

``RECIPES["vit"]`` gives a three-model ladder of torchvision ViTs on the 8x8
digits (``WIDTHxDEPTH``: hidden size and layers; 2x2 patches, head_dim 16)
and the paper's budgets (128:24:16 epochs, divided by 4). The chain trains
the smallest ViT for the baseline budget, grows each larger one exactly from
its trained predecessor (LEMON's mean-fill, see ``comptlib/families/vit.py``)
and trains it with feature distillation for its shorter budget. Each model is
also trained alone from the same init, on the same batches, for the baseline
budget. The table gives held-out accuracy (just after growth, after the chain
stage, alone), measured training FLOPs, wall time and the chain's
acceleration ratio.

Run ``python examples/vision/vit_chain.py``; ``--smoke`` checks the script end
to end in seconds.

Measured on 2 CPU cores on 2026-12-02 with the default Chain settings (growth
with no transfer for the image classifiers; cores shared with other jobs, so
wall times are approximate: the first model does the same work in both columns):

``python examples/vision/vit_chain.py``::

    vit chain 32x2 -> 64x4 -> 128x6 on digits 8x8, exact growth, baseline 704 steps of 64, seed 0, 2 threads
    model               params |   held-out accuracy    |    steps    |   train FLOPs   |    wall s
                               |  grown   chain   alone | chain alone |   chain   alone |  chain  alone
    vit-32x2            18,474 |      -   0.930   0.930 |   704   704 |   86.5G   86.5G |   10.2    9.6
    vit-64x4           136,650 |  0.930   0.936   0.975 |   132   704 |  120.9G  644.8G |    4.8   23.9
    vit-128x6          800,394 |  0.936   0.955   0.958 |    88   704 |  467.4G    3.7T |    9.8   80.0
    family                     |                        |             |  674.8G    4.5T |   24.8  113.6
    acceleration ratio (FLOPs): 6.62x; wall-time ratio: 4.58x

The chain costs 6.6x fewer training FLOPs, and each grown ViT starts exactly
where its predecessor ended (``grown``) and improves on it, but with the
paper's short budgets (132 and 88 steps against 704) the grown ViTs end 0.3-4
points behind their baselines (with the paper's constant feature MSE, measured
2026-11-27: 2-4 points). ``docs/benchmarks.md`` measures this over three
seeds, with the time each grown model needs to reach its baseline.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/, for the shared _compare
from _compare import recipe_main


def main(argv: Sequence[str] | None = None) -> None:
    recipe_main(__doc__.splitlines()[0], ("vit",), argv)


if __name__ == "__main__":
    main()
