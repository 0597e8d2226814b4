"""The floor of issue 17: at the same steps as a model trained alone, a grown model must not end worse.

Run from the repository root (each run is kept in ``OUT/floor/`` as it finishes, so a piece that
stops resumes where it was; the runs alone are the harness's, shared with its knee search)::

    .venv/bin/python -m benchmarks.floor --ladder fashion-resnet-3 --steps 312 --seeds 0,1,2
    .venv/bin/python -m benchmarks.floor --ladder fashion-vit-3 --steps 156 --seeds 0,1,2 --variants paper,none
    .venv/bin/python -m benchmarks.floor --ladder llama-data-limited --steps 1200 --seeds 0,1,2 --variants default,none

Every model of the ladder trains ``--steps`` steps: alone from its seeded init, and in the chain,
grown from its trained predecessor (the first model is the same run as alone). Each transfer
variant retrains the grown stages from the same trained first model. The table gives, per model,
the held-out metric alone and per variant (mean ± std over seeds) and whether the variant's mean is
at most one seed-std of the baseline's worse than it (the floor), or better.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle threads sleep on shared cores

import argparse
import datetime
import json
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from benchmarks.run import LADDERS, SUITES, _alone, _family, _loaders, _run, _seeded_model, _std, _summary, machine
from comptlib import FeatureMSE
from comptlib.io import write_json
from comptlib.recipes import RECIPES

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("the family's default", {"transferer": "auto"}),
    "paper": ("feature MSE x500, constant (the paper's)", {"transferer": FeatureMSE()}),
    "none": ("no transfer", {"transferer": None}),
    "ki": ("feature MSE to 0 over 40 % (KI)", {"transferer": FeatureMSE(schedule="linear", decay_fraction=0.4)}),
    "width": ("feature MSE x D/512", {"transferer": FeatureMSE(width_reference=512)}),
}
"""The transfer variants by short name: a label and the Chain settings."""


def run(ladder_name: str, steps: int, seeds: Sequence[int], variants: Sequence[str], out: Path, log: Any) -> dict:
    """Every run of the floor: returns ``{"alone": {size: [metric per seed]}, "grown": {variant: {size: [...]}}}``."""
    ladder = LADDERS[ladder_name]
    suite = attrs.evolve(SUITES["full"], seeds=tuple(seeds))
    spec = RECIPES[ladder.recipe]
    data = _loaders(ladder, suite)
    names = [f"{ladder.recipe}-{s}" for s in ladder.sizes]
    every = max(steps // 4, 1)  # as the knee search's runs alone, so they are shared
    alone: dict[str, list[float]] = {s: [] for s in ladder.sizes}
    grown: dict[str, dict[str, list[float]]] = {v: {s: [] for s in ladder.sizes[1:]} for v in variants}
    for seed in seeds:
        for size in ladder.sizes:
            report = _alone(ladder, suite, data, size, seed, steps, out, log).report_
            alone[size].append(report["models"][0][report["metric"]])
        first = None
        for short in variants:
            path = out / "floor" / f"{ladder.name}-{steps}steps-seed{seed}-{short}.json"
            if not path.exists():
                if first is None:  # the chain's first stage: the same run as the first model alone
                    start = time.perf_counter()
                    model = _seeded_model(ladder.recipe, ladder.sizes[0], seed)
                    settings = {"budgets": [steps], "names": names[:1], "eval_every": every, "seed": seed}
                    first = _run([model], *data, unit="steps", lr=spec.lr, **settings).models_[0]
                    log(f"{ladder.name} seed {seed}: first model ({time.perf_counter() - start:.0f} s)")
                start = time.perf_counter()
                models = [first, *(_seeded_model(ladder.recipe, s, seed) for s in ladder.sizes[1:])]
                chain = _run(
                    models,
                    *data,
                    unit="steps",
                    lr=spec.lr,
                    grower=spec.grower("exact"),
                    budgets=[0, *[steps] * (len(models) - 1)],
                    names=names,
                    eval_every=every,
                    seed=seed,
                    first_trained=True,
                    baseline_budget=steps,
                    **VARIANTS[short][1],
                )
                write_json(path, {"models": _summary(chain), "chain_flops": chain.report_["chain_flops"]})
                log(f"{ladder.name} seed {seed}: {short} ({time.perf_counter() - start:.0f} s)")
            rows = json.loads(path.read_text())["models"]
            for size, row in zip(ladder.sizes[1:], rows[1:]):
                grown[short][size].append(row["metric"])
    return {"alone": alone, "grown": grown}


def _pm(values: Sequence[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {_std(values):.3f}"


def table(result: dict[str, Any], higher: bool = True) -> str:
    """Markdown: per grown model, alone and each variant, with the floor verdict."""
    variants = list(result["grown"])
    lines = [
        "| model | alone | " + " | ".join(VARIANTS[v][0] for v in variants) + " |",
        "|---|---:|" + "---:|" * len(variants),
    ]
    for size, base in list(result["alone"].items())[1:]:
        cells = []
        for v in variants:
            values = result["grown"][v][size]
            gap = statistics.mean(values) - statistics.mean(base)
            ok = (gap if higher else -gap) >= -_std(base)
            cells.append(f"{_pm(values)} ({gap:+.3f}, {'floor met' if ok else '**below**'})")
        lines.append(f"| {size} | {_pm(base)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ladder", choices=[k for k, v in LADDERS.items() if v.knee], default="fashion-resnet-3")
    parser.add_argument("--steps", type=int, default=312, help="every model's steps, alone and grown [312: 4 epochs]")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default="paper,none,ki", help=f"comma-separated of {', '.join(VARIANTS)}")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/full"))
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    if set(variants) - set(VARIANTS):
        parser.error(f"unknown variants: {', '.join(sorted(set(variants) - set(VARIANTS)))}")
    torch.set_flush_denormal(True)
    began = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - began:6.0f} s] {message}", flush=True)

    seeds = [int(s) for s in args.seeds.split(",")]
    result = run(args.ladder, args.steps, seeds, variants, args.out, log)
    result |= {
        "ladder": args.ladder,
        "steps": args.steps,
        "seeds": seeds,
        "command": "python -m benchmarks.floor " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
    }
    write_json(args.out / f"floor-{args.ladder}-{args.steps}steps.json", result)
    print(table(result, higher=_family(LADDERS[args.ladder]).higher_is_better))
    return result


if __name__ == "__main__":
    main()
