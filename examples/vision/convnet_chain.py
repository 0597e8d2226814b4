"""A ResNet or ConvNeXt chain on scikit-learn's digits, against training each model alone.

``RECIPES["resnet"]`` / ``RECIPES["convnext"]`` give a three-model ladder
(``WIDTHxDEPTH``: base channels and blocks per stage), 32x32 digits and the
paper's budgets (128:24:16 epochs, divided by 8). The chain trains the
smallest model for the baseline budget, grows each larger one from its
trained predecessor (ResNet exactly; ConvNeXt exactly in depth and by mean-fill
in width, see ``comptlib/families/convnet.py``) and trains it with feature
distillation for its shorter budget. Each model is also trained alone from
the same init, on the same batches, for the baseline budget. The table gives
held-out accuracy (just after growth, after the chain stage, alone), measured
training FLOPs, wall time and the chain's acceleration ratio.

Run ``python examples/vision/convnet_chain.py --family resnet`` (or
``--family convnext``); ``--smoke`` checks the script end to end in seconds.

Measured on 2 CPU cores with the default Chain settings (cores shared with
other jobs, so wall times are approximate: the first model does the same work
in both columns; accuracies and FLOPs repeat exactly from run to run). ResNet,
2026-12-02 (growth with no transfer, its default since then):

``python examples/vision/convnet_chain.py --family resnet``::

    resnet chain 8x1 -> 16x1 -> 32x2 on digits 32x32, exact growth, baseline 352 steps of 64, seed 0, 2 threads
    model               params |   held-out accuracy    |    steps    |   train FLOPs   |    wall s
                               |  grown   chain   alone | chain alone |   chain   alone |  chain  alone
    resnet-8x1          20,914 |      -   0.986   0.986 |   352   352 |   52.6G   52.6G |   12.9   10.9
    resnet-16x1         79,962 |  0.986   0.986   0.994 |    66   352 |   29.3G  156.2G |    2.2    9.6
    resnet-32x2        700,458 |  0.986   0.994   0.994 |    44   352 |  124.3G  994.5G |    3.4   20.0
    family                     |                        |             |  206.2G    1.2T |   18.4   40.5
    acceleration ratio (FLOPs): 5.83x; wall-time ratio: 2.20x

ConvNeXt, 2026-11-27 (the paper's feature MSE, still its default: without it
the grown 64x2 ends at 0.967: ``comptlib bench --family convnext --no-transfer``,
2026-12-02):

``python examples/vision/convnet_chain.py --family convnext``::

    convnext chain 16x1 -> 32x1 -> 64x2 on digits 32x32, exact growth, baseline 352 steps of 64, seed 0, 2 threads
    model               params |   held-out accuracy    |    steps    |   train FLOPs   |    wall s
                               |  grown   chain   alone | chain alone |   chain   alone |  chain  alone
    convnext-16x1      134,490 |      -   0.983   0.983 |   352   352 |  293.0G  293.0G |   21.1   23.8
    convnext-32x1      506,538 |  0.986   0.983   0.986 |    66   352 |  221.8G    1.1T |    8.3   42.2
    convnext-64x2    3,755,722 |  0.983   0.986   0.986 |    44   352 |    1.1T    8.9T |   23.0  170.7
    family                     |                        |             |    1.6T   10.3T |   52.4  236.8
    acceleration ratio (FLOPs): 6.28x; wall-time ratio: 4.52x

The chains cost 5.8x (ResNet) and 6.3x (ConvNeXt) fewer training FLOPs than
training each model alone, and their grown models end within 0.8 points of
their 352-step baselines (the largest of each equal to its own). ResNet's ``grown``
column equals its predecessor's accuracy (exact growth); ConvNeXt's does not,
as its width growth is approximate.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/, for the shared _compare
from _compare import recipe_main


def main(argv: Sequence[str] | None = None) -> None:
    recipe_main(__doc__.splitlines()[0], ("resnet", "convnext"), argv)


if __name__ == "__main__":
    main()
