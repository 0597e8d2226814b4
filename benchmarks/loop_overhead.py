"""What comptlib's training loop costs per student step, against a hand-written PyTorch loop.

Run from the repository root::

    .venv/bin/python -m benchmarks.loop_overhead            # about 2 minutes on 2 CPU cores
    .venv/bin/python -m benchmarks.loop_overhead --repeats 3 --steps 20   # a quick look

It prints a table and writes ``benchmarks/results/loop_overhead.json``
(atomically). Target: comptlib's loop costs at most 5% more per step.

Both loops train the same student from the same init on the same batches
with the same AdamW (decay on matrices only), gradient clipping and warm-up +
cosine schedule: comptlib as a one-model ``Chain`` (stage 0, so no teacher
forward), the baseline as the plain loop a user would write, with its own
schedule code, so nothing it measures is shared with what it checks. The
batches come from a list that stamps the time each one is taken: the gap
between two takes is one whole step of whichever loop takes them (forward,
backward, clipping, optimiser, schedule and the loop's own bookkeeping). The
first steps are skipped, since comptlib's step 0 also counts FLOPs. Runs
alternate (chain first, then plain first) and each model reports the median,
over repeats, of the ratio of the two runs' median step times, so a
neighbour's load hits both sides alike. ``max_loss_diff`` shows the two loops
really train the same way (not bitwise: comptlib's FLOP-counted step 0 runs
attention on the math backend).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads on shared cores swamp what we measure

import argparse
import copy
import datetime
import math
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from comptlib import Chain
from comptlib.io import write_json
from comptlib.recipes import RECIPES

RESULTS = Path(__file__).parent / "results" / "loop_overhead.json"
TARGET = 0.05
"""The most extra time per student step that comptlib's loop may cost."""
SKIP = 3
"""Steps left out of each run's timing: comptlib's step 0 runs under the FLOP counter, and caches warm up."""
SETTINGS = {"lr": 1e-3, "weight_decay": 0.05, "betas": (0.9, 0.999), "warmup": 0.05, "grad_clip": 1.0}
"""Optimiser and schedule of both loops (comptlib's defaults, passed explicitly to both)."""


class StampedBatches:
    """A fixed list of batches that records when each is taken, so the gaps are step times."""

    def __init__(self, batches: Sequence[Any]) -> None:
        self.batches = batches
        self.stamps: list[float] = []

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.batches:
            self.stamps.append(time.perf_counter())
            yield batch

    def step_times(self) -> list[float]:
        """Seconds of each whole step after the first :data:`SKIP`."""
        return [b - a for a, b in zip(self.stamps[SKIP:], self.stamps[SKIP + 1 :])]


def chain_loop(model: nn.Module, loader: StampedBatches, steps: int) -> torch.Tensor:
    """comptlib's stage 0: a one-model Chain, without validation; returns its per-step losses."""
    chain = Chain([model], budgets=[steps], unit="steps", progress=False, **SETTINGS).fit(loader)
    return torch.tensor(chain.history_[0]["loss"])


def plain_loop(model: nn.Module, loader: StampedBatches, steps: int) -> torch.Tensor:
    """The hand-written loop: AdamW, clipping, linear warm-up then cosine decay; returns its per-step losses."""
    model = copy.deepcopy(model).train()
    params = list(model.parameters())
    opt = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": SETTINGS["weight_decay"]},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=SETTINGS["lr"],
        betas=SETTINGS["betas"],
        fused=True,  # as comptlib: the fused CPU kernel
    )
    warmup = round(SETTINGS["warmup"] * steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min((step - warmup) / max(steps - warmup, 1), 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    losses = []
    for _, (images, labels) in zip(range(steps), loader):
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, SETTINGS["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        losses.append(loss.detach())
    return torch.stack(losses)


LOOPS = {"comptlib": chain_loop, "plain": plain_loop}


def measure(family: str, size: str, steps: int, repeats: int, seed: int) -> dict[str, Any]:
    """Interleaved runs of both loops on one recipe student; the median ratio and what it rests on."""
    recipe = RECIPES[family]
    torch.manual_seed(seed)
    model = recipe.models((size,))[0]
    train, _ = recipe.loaders(recipe.batch_size, seed)
    batches = []
    while len(batches) < steps:
        batches += list(train)
    batches = batches[:steps]
    step_s: dict[str, list[float]] = {name: [] for name in LOOPS}
    ratios, loss_diff = [], 0.0
    for r in range(repeats):
        order = list(LOOPS) if r % 2 == 0 else list(reversed(LOOPS))
        medians, losses = {}, {}
        for name in order:
            loader = StampedBatches(batches)
            losses[name] = LOOPS[name](model, loader, steps)
            medians[name] = statistics.median(loader.step_times())
            step_s[name].append(medians[name])
        ratios.append(medians["comptlib"] / medians["plain"])
        loss_diff = max(loss_diff, (losses["comptlib"] - losses["plain"]).abs().max().item())
    ratio = statistics.median(ratios)
    return {
        "student": f"{family}-{size}",
        "params": sum(p.numel() for p in model.parameters()),
        "batch_size": recipe.batch_size,
        "comptlib_step_ms": 1e3 * statistics.median(step_s["comptlib"]),
        "plain_step_ms": 1e3 * statistics.median(step_s["plain"]),
        "ratio_median": ratio,
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "overhead_pct": 100 * (ratio - 1),
        "within_target": ratio <= 1 + TARGET,
        "max_loss_diff": loss_diff,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resnet", default="16x1", help="ResNet student, a RECIPES['resnet'] size")
    parser.add_argument("--vit", default="64x4", help="ViT student, a RECIPES['vit'] size")
    parser.add_argument("--steps", type=int, default=60, help="steps per run (the first few are not timed)")
    parser.add_argument("--repeats", type=int, default=9, help="runs of each loop per student, interleaved")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.steps < SKIP + 2:
        parser.error(f"--steps must be at least {SKIP + 2}: the first {SKIP} steps are not timed")
    torch.set_flush_denormal(True)
    rows = [measure(f, s, args.steps, args.repeats, args.seed) for f, s in (("resnet", args.resnet), ("vit", args.vit))]
    result = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],
        "steps": args.steps,
        "repeats": args.repeats,
        "target_overhead_pct": 100 * TARGET,
        "rows": rows,
    }
    print(
        f"{'student':<14}{'params':>9}{'comptlib ms':>13}{'plain ms':>10}{'ratio':>8}{'(min-max)':>14}{'overhead':>10}"
    )
    for row in rows:
        span = f"({row['ratio_min']:.2f}-{row['ratio_max']:.2f})"
        print(
            f"{row['student']:<14}{row['params']:>9,}{row['comptlib_step_ms']:>13.2f}{row['plain_step_ms']:>10.2f}"
            f"{row['ratio_median']:>8.3f}{span:>14}{row['overhead_pct']:>+9.1f}%"
            f"{'' if row['within_target'] else '  over target'}"
        )
    write_json(args.out, result)
    print(f"{result['threads']} threads, 1-min load average {result['load_average_1min']:.1f}; wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
