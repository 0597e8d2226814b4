"""A CLIP chain on emoji image-caption pairs, against training each model alone.

Three Hugging Face ``CLIPModel``s (``WIDTHxDEPTH`` for both towers, head_dim
16, 32x32 images in 8x8 patches) learn to match ~1,300 Noto Color Emoji
images with their Unicode names ("closed umbrella"). The chain trains the
smallest for the baseline budget, grows each larger one exactly from its
trained predecessor (text tower mean-filled, vision tower tiled: see
``comptlib/families/clip.py``) and trains it with the contrastive loss plus
the paper's feature distillation (``500 * [MSE(img) + MSE(txt)]``) for the
paper's shorter budgets (128:24:16 epochs, as steps in proportion), with the
paper's AdamW (weight decay 0.1, betas 0.9/0.98). Each model is also trained
alone from the same init, on the same batches, for the baseline budget.

The table gives held-out recall@5 (mean of image-to-text and text-to-image
among the held-out pairs, whose captions were never trained on), measured
training FLOPs and wall time; then zero-shot accuracy, with the held-out
captions as classes in three prompt templates.

Needs the emoji font (no root): ``cd /tmp && apt-get download fonts-noto-color-emoji &&
dpkg-deb -x fonts-noto-color-emoji_*.deb ~/.cache/comptlib/emoji``. Run
``python examples/vision/clip_chain.py``; ``--smoke`` checks the script end to
end in seconds.

Measured on 2 CPU cores on 2026-11-27 with the default Chain settings (shared with other jobs,
load average about 4: wall times are noisy;
``python examples/vision/clip_chain.py``, about 5 minutes)::

    3 CLIPs on Noto emoji (32px, patch 8), 269 pairs held out (chance: recall@5 0.019, zero-shot 0.004), baseline 300 steps of 64 pairs, lr 0.002, seed 0, 2 threads
    model               params |   held-out recall@5    |    steps    |   train FLOPs   |    wall s
                               |  grown   chain   alone | chain alone |   chain   alone |  chain  alone
    clip-32x2          107,905 |      -   0.164   0.164 |   300   300 |   97.0G   97.0G |   14.2   12.2
    clip-64x3          414,081 |  0.164   0.164   0.169 |    56   300 |  105.0G  528.3G |    6.5   28.7
    clip-128x4       1,814,529 |  0.164   0.156   0.158 |    38   300 |  366.1G    2.7T |   13.6   91.8
    family                     |                        |             |  568.1G    3.3T |   34.3  132.8
    acceleration ratio (FLOPs): 5.88x; wall-time ratio: 3.87x
    zero-shot accuracy (held-out captions as classes):
    clip-32x2        grown     -  chain 0.030  alone 0.030
    clip-64x3        grown 0.030  chain 0.045  alone 0.033
    clip-128x4       grown 0.045  chain 0.033  alone 0.026

All three models reach about the same recall@5 alone (0.16-0.17; one standard error is about 0.02 on
269 pairs): at ~1,100 training pairs this task saturates, so it shows that the chain matches
training alone for 5.9x fewer FLOPs, not that larger models are better.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/, for the shared _compare
from _compare import SMOKE_BATCH, SMOKE_BUDGETS  # noqa: E402, I001  (before torch: see _compare)

import torch

from comptlib import Chain
from comptlib.bench import compare, fit_alone, format_table
from comptlib.chain import PAPER_BUDGETS
from comptlib.families.clip import build_clip
from comptlib.image_text import emoji_loaders, emoji_tokenizer

SIZES = ((32, 2), (64, 3), (128, 4))
"""(width, depth) of both towers: each vision width is an integer multiple of the last, so growth is exact."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="baseline budget: steps of each model trained alone")
    parser.add_argument("--batch-size", type=int, default=64, help="pairs per step: the contrastive negatives")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (grown models get half)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--val-fraction", type=float, default=0.2, help="held-out pairs, never trained on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny budgets: checks the script in seconds")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> tuple[Chain, list[Chain], int]:
    """Train the chain and every model alone; returns the fitted chain, the lone runs and the held-out size."""
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    batch_size = SMOKE_BATCH if args.smoke else args.batch_size
    budgets = SMOKE_BUDGETS if args.smoke else tuple(args.steps * b / PAPER_BUDGETS[0] for b in PAPER_BUDGETS)
    train, val = emoji_loaders(batch_size, args.image_size, args.seed, args.val_fraction)
    vocab = emoji_tokenizer().vocab_size
    models = [
        build_clip(w, d, vocab_size=vocab, image_size=args.image_size, patch_size=args.patch_size) for w, d in SIZES
    ]
    names = [f"clip-{w}x{d}" for w, d in SIZES]
    common = {
        "unit": "steps",
        "lr": args.lr,
        "weight_decay": 0.1,
        "betas": (0.9, 0.98),
        "seed": args.seed,
        "progress": sys.stdout.isatty(),
    }
    chain = Chain(models, budgets=budgets, baseline_budget=budgets[0], names=names, **common).fit(train, val)
    alone = fit_alone(models, train, val, budget=budgets[0], names=names, **common)
    return chain, alone, len(val.dataset)


def zero_shot(chain: Chain, alone: Sequence[Chain]) -> str:
    """Held-out zero-shot accuracy per model: just after growth, after the chain stage, alone."""
    lines = []
    for record, lone in zip(chain.history_, alone):
        grown = f"{record['val'][0]['zero_shot_accuracy']:.3f}" if len(record["val"]) > 1 else "-"
        final, solo = record["val"][-1]["zero_shot_accuracy"], lone.history_[0]["val"][-1]["zero_shot_accuracy"]
        lines.append(f"{record['name']:<16} grown {grown:>5}  chain {final:.3f}  alone {solo:.3f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    chain, alone, held_out = run(args)
    print(
        f"{len(SIZES)} CLIPs on Noto emoji ({args.image_size}px, patch {args.patch_size}), "
        f"{held_out} pairs held out (chance: recall@5 {5 / held_out:.3f}, zero-shot {1 / held_out:.3f}), baseline {alone[0].history_[0]['steps']} steps of "
        f"{chain.history_[0]['batch_size']} pairs, lr {args.lr:g}, seed {args.seed}, {torch.get_num_threads()} threads"
    )
    print(format_table(compare(chain, alone)))
    print("zero-shot accuracy (held-out captions as classes):")
    print(zero_shot(chain, alone))


if __name__ == "__main__":
    main()
