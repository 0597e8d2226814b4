"""What every example shares: train a family as a chain and each model alone, and compare them.

The examples' claim is CoM-PT's: a chain reaches (about) the accuracy of
training every model independently, for a fraction of the FLOPs. The baselines
and the comparison table come from :mod:`comptlib.bench`; what the recipe
examples share beyond that lives here:

- :func:`recipe_main` (:func:`recipe_parser`, :func:`run_recipe`): the command
  line, run and printout of an example that trains a built-in recipe's ladder
  (:data:`comptlib.recipes.RECIPES`).

Examples put ``examples/`` on ``sys.path`` and ``import _compare`` before
torch: importing it sets ``OMP_WAIT_POLICY=PASSIVE`` (unless set), because
OpenMP threads that spin-wait while other jobs share the cores make CPU steps
2 to 7 times slower. It has no effect once torch is imported.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import sys
from collections.abc import Sequence

import torch

from comptlib import Chain
from comptlib.bench import compare, fit_alone, format_table
from comptlib.recipes import RECIPES, Recipe, with_bpe

SMOKE_BUDGETS, SMOKE_BATCH = (4.0, 1.0, 1.0), 16
"""Steps per model and batch size with ``--smoke``: every code path runs, in seconds."""


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def recipe_parser(description: str, families: Sequence[str]) -> argparse.ArgumentParser:
    """The command line of a recipe example: which recipe, budgets, growth, optimiser, seed, ``--smoke``."""
    parser = argparse.ArgumentParser(description=description)
    parser.set_defaults(family=families[0])
    if len(families) > 1:
        parser.add_argument("--family", choices=families)
    parser.add_argument("--budgets", type=_floats, help="per chain model, in --unit [default: the recipe's]")
    parser.add_argument("--baseline", type=float, help="budget of each model trained alone [default: first budget]")
    parser.add_argument("--unit", choices=("epochs", "steps"), help="budget unit [default: the recipe's]")
    parser.add_argument("--method", choices=("exact", "compt"), default="exact", help="how each model is grown")
    parser.add_argument("--batch-size", type=int, help="[default: the recipe's]")
    parser.add_argument("--lr", type=float, help="peak learning rate of the first model [default: the recipe's]")
    parser.add_argument("--seed", type=int, default=0, help="models, data order and growth")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"budgets of {SMOKE_BUDGETS} steps of {SMOKE_BATCH}, 2 held-out batches: checks in seconds",
    )
    return parser


def run_recipe(args: argparse.Namespace, recipe: Recipe) -> tuple[Chain, list[Chain]]:
    """Train the recipe's ladder as a chain and every model alone, on the recipe's data."""
    budgets = SMOKE_BUDGETS if args.smoke else args.budgets or recipe.budgets
    unit = "steps" if args.smoke else args.unit or recipe.unit
    baseline = budgets[0] if args.smoke or args.baseline is None else args.baseline
    batch_size = SMOKE_BATCH if args.smoke else args.batch_size or recipe.batch_size
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    models = recipe.models()
    names = [f"{args.family}-{size}" for size in recipe.sizes]
    train, val = recipe.loaders(batch_size, args.seed)
    if args.smoke:  # two held-out batches: the smoke run checks the code paths, not the metric
        val = [batch for _, batch in zip(range(2), val)]
    common = {"unit": unit, "lr": args.lr or recipe.lr, "seed": args.seed, "progress": sys.stdout.isatty()}
    chain = Chain(
        models, grower=recipe.grower(args.method), budgets=budgets, baseline_budget=baseline, names=names, **common
    ).fit(train, val)
    return chain, fit_alone(models, train, val, budget=baseline, names=names, **common)


def recipe_main(description: str, families: Sequence[str], argv: Sequence[str] | None, *, text: bool = False) -> None:
    """Parse, run and print the comparison of a recipe example; ``text`` adds the tokenizer options."""
    parser = recipe_parser(description, families)
    if text:
        parser.add_argument(
            "--tokenizer", choices=("byte", "bpe"), default="byte", help="bytes, or a BPE on the corpus"
        )
        parser.add_argument("--vocab-size", type=int, default=4096, help="of the BPE tokenizer")
    args = parser.parse_args(argv)
    recipe = RECIPES[args.family]
    if text and args.tokenizer == "bpe":
        recipe = with_bpe(recipe, args.vocab_size)
    chain, alone = run_recipe(args, recipe)
    print(
        f"{args.family} chain {' -> '.join(recipe.sizes)} on {recipe.data}, {args.method} growth, "
        f"baseline {alone[0].history_[0]['steps']} steps of {chain.history_[0]['batch_size']}, seed {args.seed}, "
        f"{torch.get_num_threads()} threads"
    )
    print(format_table(compare(chain, alone)))
