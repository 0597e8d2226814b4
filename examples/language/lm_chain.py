"""A decoder-LM chain (Llama, GPT-2 or Qwen2) on the CPython standard library, against training each model alone.

``RECIPES["llama"]`` / ``["gpt2"]`` / ``["qwen2"]`` give a three-model ladder of
byte-level transformers models (``WIDTHxDEPTH``: hidden size and layers,
head_dim 16; a training step of the largest costs ~19x the smallest's) on
2,000,000 bytes of stdlib source, and the paper's budgets (128:24:16 epochs,
as 300:56:38 steps). The chain trains the smallest model for the baseline
budget, grows each larger one exactly from its trained predecessor (Llama and
Qwen2 by zero-fill with RMSNorm rescaling, GPT-2 by mean-fill, see
``comptlib/families/decoder_lm.py``) and trains it with token-level logit
distillation for its shorter budget. Each model is also trained alone from the
same init, on the same batches, for the baseline budget. The table gives
held-out bits per byte (the last 10 % of the byte stream, never trained on):
just after growth, after the chain stage and alone; measured training FLOPs,
wall time and the chain's acceleration ratio.

Run ``python examples/language/lm_chain.py --family llama`` (or ``gpt2``,
``qwen2``; under 10 minutes on 2 cores); ``--smoke`` checks the script end to
end in seconds.

MEASURED
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/, for the shared _compare
from _compare import recipe_main


def main(argv: Sequence[str] | None = None) -> None:
    recipe_main(__doc__.splitlines()[0], ("llama", "gpt2", "qwen2"), argv)


if __name__ == "__main__":
    main()
