"""The benchmark harness: chains against independent training, per family, over seeds.

Run from the repository root::

    .venv/bin/python -m benchmarks.run --suite quick          # one seed, tiny budgets: checks the harness
    .venv/bin/python -m benchmarks.run --suite full --docs    # the published results: about an hour

For each ladder and seed it trains every model alone for the baseline budget
and the ladder as a chain with the paper's short budgets (128:24:16:16 epochs
in proportion); then the **budget search** (each grown model trained until it
reaches the mean final metric of its baseline, capped at the baseline budget:
the time to target) and, on the ablated ladders, the grown stages again under
other settings (initialisation, transfer, learning rate after growth, no
middle model). Ablation runs reuse the chain's trained first model, so they
differ from one another only in what they ablate.

Everything lands in ``--out`` (``results.json``, ``benchmarks.md``, plots);
``--docs`` also writes the generated part of ``docs/benchmarks.md`` and its
plots under ``docs/img/benchmarks/``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle threads sleep on shared cores

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from comptlib import Chain, FeatureMSE, LogitKL
from comptlib.bench import plot
from comptlib.family import family_of
from comptlib.io import write_json
from comptlib.recipes import RECIPES

Loaders = tuple[Any, Any]


@attrs.frozen
class Ladder:
    """One family's benchmark: sizes smallest first, chain budgets in steps (``budgets[0]`` is the baseline)."""

    name: str
    recipe: str
    sizes: tuple[str, ...]
    budgets: tuple[int, ...]
    eval_every: int
    ablate: bool = False
    batch_size: int | None = None  # default: the recipe's
    val_batches: int | None = None  # held-out batches evaluated (default: all)

    def __attrs_post_init__(self) -> None:
        if len(self.budgets) != len(self.sizes):
            raise ValueError(f"ladder {self.name}: {len(self.budgets)} budgets for {len(self.sizes)} sizes")


@attrs.frozen
class Suite:
    """Which ladders, seeds and budget scale; ``val_batches`` trims the held-out sets (smoke runs only)."""

    seeds: tuple[int, ...]
    scale: float
    ladders: tuple[str, ...]
    val_batches: int | None = None


# Widths double at each step, as in the paper (ViT-T/S/B: 192/384/768); the largest model costs
# 10-50x the smallest per sample (ViT-B/ViT-T: 14x, ViT-L/ViT-T: 49x). Budgets: 128:24:16:16 epochs
# over 4 (digits: 22 steps an epoch), the recipes' steps for the ResNet and the LM. The LM trains on
# batches of 16 x 128 bytes and is evaluated on 32 batches spread over its held-out tail (65 KB).
LADDERS: dict[str, Ladder] = {
    "vit-3": Ladder("vit-3", "vit", ("32x2", "64x2", "128x2"), (704, 132, 88), 11, ablate=True),
    "vit-4": Ladder("vit-4", "vit", ("16x2", "32x2", "64x2", "128x2"), (704, 132, 88, 88), 11),
    "resnet-3": Ladder("resnet-3", "resnet", ("8x1", "16x1", "32x1"), (352, 66, 44), 11),
    "llama-3": Ladder(
        "llama-3", "llama", ("16x2", "32x3", "64x4"), (300, 56, 38), 10, ablate=True, batch_size=16, val_batches=32
    ),
}

SUITES: dict[str, Suite] = {
    "quick": Suite((0,), 0.02, tuple(LADDERS), val_batches=2),  # every code path in minutes: CI's smoke test
    "full": Suite((0, 1, 2), 1.0, tuple(LADDERS)),
}


def ablations(family: str) -> dict[str, dict[str, Any]]:
    """The grown-stage settings each ablated ladder is retrained with, by label (``"default"`` first)."""
    out: dict[str, dict[str, Any]] = {"default": {}}
    out |= {"init: compt (paper's warm start)": {"grower": "compt"}, "init: none (distil only)": {"grower": None}}
    out |= {
        "transfer: none": {"transferer": None},
        "transfer: feature MSE, decaying": {"transferer": FeatureMSE(schedule="linear")},
        "transfer: logit KL, decaying": {"transferer": LogitKL(temperature=1.0, schedule="linear")},
    }
    for scale in (1.0, 0.5, 0.25):
        for warmup, how in ((0.05, "re-warm"), (0.0, "no re-warm")):
            out[f"grown LR x{scale:g}, {how}"] = {"grown_lr_scale": scale, "grown_warmup": warmup}
    out["no middle model"] = {"drop_middle": True}
    # A variant that only restates the defaults is the default row, not a run of its own.
    return {k: v for k, v in out.items() if k == "default" or not _is_default(v, family)}


def _default_transferer(family: str) -> Any:
    from comptlib.family import list_families

    return list_families()[family].transferer()


def _is_default(settings: dict[str, Any], family: str) -> bool:
    try:
        variant = Chain([], **settings)
    except ValueError:  # not a Chain setting (e.g. drop_middle)
        return False
    return _comparable(variant, family) == _comparable(Chain([]), family)


def _comparable(chain: Chain, family: str) -> dict[str, Any]:
    """A chain's settings with its transferer by repr ("auto": the family's default), so equal settings compare equal."""
    params = chain.get_params(deep=False)
    transferer = params["transferer"]
    return params | {"transferer": repr(_default_transferer(family) if transferer == "auto" else transferer)}


def _seeded_model(recipe: str, size: str, seed: int) -> nn.Module:
    """The same size and seed always give the same init, whichever ladder builds it."""
    torch.manual_seed(zlib.crc32(f"{recipe}/{size}/{seed}".encode()))
    return RECIPES[recipe].models((size,))[0]


def _loaders(ladder: Ladder, val_batches: int | None) -> Loaders:
    """The recipe's data with a fixed split (seed 0): seeds vary the init and the batch order only."""
    spec = RECIPES[ladder.recipe]
    train, val = spec.loaders(ladder.batch_size or spec.batch_size, 0)
    limits = [n for n in (ladder.val_batches, val_batches) if n is not None]
    if limits:  # evenly spaced over the held-out set, so it still covers all of it
        batches = list(val)
        val = batches[:: max(len(batches) // min(limits), 1)][: min(limits)]
    return train, val


def _run(models: Sequence[nn.Module], train: Any, val: Any, **settings: Any) -> Chain:
    return Chain(list(models), progress=False, **settings).fit(train, val)


def _summary(chain: Chain) -> list[dict[str, Any]]:
    """Per model of a fitted chain: final and grown metric, steps, FLOPs, wall time, validation curve."""
    metric = chain.report_["metric"]
    rows = []
    for record, row in zip(chain.history_, chain.report_["models"]):
        rows.append(
            {
                "name": record["name"],
                "params": record["params"],
                "metric": row[metric],
                "grown": record["val"][0][metric] if record["val"] and record.get("parent") else None,
                "steps": record["steps"],
                "reached": record.get("reached"),
                "flops": row["flops"],
                "wall_time": row["wall_time"],
                "curve": [(v["step"], v[metric]) for v in record["val"]],
            }
        )
    return rows


def run_ladder(ladder: Ladder, suite: Suite, out: Path, alone_cache: dict[tuple, Chain], log: Callable) -> dict:
    """Every run of one ladder, for every seed of the suite; plots of seed ``suite.seeds[0]``."""
    spec = RECIPES[ladder.recipe]
    budgets = [max(int(round(b * suite.scale)), 2) for b in ladder.budgets]
    every = max(int(round(ladder.eval_every * suite.scale)), 1)
    train, val = _loaders(ladder, suite.val_batches)
    names = [f"{ladder.recipe}-{s}" for s in ladder.sizes]
    common = {"unit": "steps", "lr": spec.lr, "grower": spec.grower("exact")}
    result: dict[str, Any] = {"sizes": ladder.sizes, "budgets": budgets, "eval_every": every, "seeds": {}}

    alone: dict[int, list[Chain]] = {}
    for seed in suite.seeds:  # baselines first: the budget search needs their mean final metric
        alone[seed] = []
        for size, name in zip(ladder.sizes, names):
            key = (ladder.recipe, size, seed, budgets[0], ladder.batch_size, ladder.val_batches, suite.val_batches)
            if key not in alone_cache:
                start = time.perf_counter()
                model = _seeded_model(ladder.recipe, size, seed)
                settings = common | {"budgets": [budgets[0]], "names": [name], "eval_every": 2 * every, "seed": seed}
                alone_cache[key] = _run([model], train, val, **settings)
                log(f"{ladder.name} seed {seed}: {name} alone ({time.perf_counter() - start:.0f} s)")
            alone[seed].append(alone_cache[key])
    metric = alone[suite.seeds[0]][0].report_["metric"]
    targets = [
        statistics.mean(alone[s][i].report_["models"][0][metric] for s in suite.seeds) for i in range(len(names))
    ]

    for seed in suite.seeds:
        start = time.perf_counter()
        models = [_seeded_model(ladder.recipe, size, seed) for size in ladder.sizes]
        chain = _run(models, train, val, budgets=budgets, names=names, eval_every=every, seed=seed, **common)
        runs = {"alone": [_summary(c)[0] for c in alone[seed]], "chain": _summary(chain)}
        runs["chain_report"] = {k: chain.report_[k] for k in ("chain_flops", "independent_flops", "acceleration_ratio")}
        log(f"{ladder.name} seed {seed}: chain ({time.perf_counter() - start:.0f} s)")
        if seed == suite.seeds[0]:
            plot(chain, alone[seed], out / f"{ladder.name}.png")

        # The grown stages again, from the chain's trained first model: same data, other settings.
        first = chain.models_[0]
        grown = {"baseline_budget": budgets[0], "first_trained": True, "seed": seed}
        start = time.perf_counter()
        search = _run(
            [first, *models[1:]],
            train,
            val,
            names=names,
            eval_every=every,
            targets=[None, *targets[1:]],
            **(common | grown | {"budgets": [0] + [budgets[0]] * (len(names) - 1)}),
        )
        runs["search"] = _summary(search)
        runs["search_report"] = {k: search.report_[k] for k in ("chain_flops", "acceleration_ratio")}
        log(f"{ladder.name} seed {seed}: budget search ({time.perf_counter() - start:.0f} s)")

        if ladder.ablate:
            family = family_of(models[0]).name
            runs["ablations"] = {}
            for label, settings in ablations(family).items():
                start = time.perf_counter()
                settings = dict(settings)
                keep = [0, len(names) - 1] if settings.pop("drop_middle", False) else list(range(len(names)))
                run = _run(
                    [first, *[models[i] for i in keep[1:]]],
                    train,
                    val,
                    names=[names[i] for i in keep],
                    eval_every=every,
                    **(common | grown | {"budgets": [0, *[budgets[i] for i in keep[1:]]]} | settings),
                )
                runs["ablations"][label] = {"models": _summary(run), "chain_flops": run.report_["chain_flops"]}
                log(f"{ladder.name} seed {seed}: {label} ({time.perf_counter() - start:.0f} s)")
        result["seeds"][seed] = runs
    result["metric"] = metric
    result["higher_is_better"] = family_of(alone[suite.seeds[0]][0].models_[0]).higher_is_better
    result["targets"] = targets
    return result


def machine() -> dict[str, Any]:
    """Where the numbers come from."""
    return {
        "date": datetime.date.today().isoformat(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=tuple(SUITES), default="quick")
    parser.add_argument("--ladders", help=f"comma-separated subset of {', '.join(LADDERS)}")
    parser.add_argument("--seeds", help="comma-separated seeds [default: the suite's]")
    parser.add_argument("--out", type=Path, help="output directory [default: benchmarks/results/SUITE]")
    parser.add_argument("--merge", action="store_true", help="keep the other ladders of an earlier OUT/results.json")
    parser.add_argument(
        "--docs", type=Path, nargs="?", const=Path("docs"), help="also write DOCS/benchmarks.md and its plots [docs]"
    )
    args = parser.parse_args(argv)
    suite = SUITES[args.suite]
    if args.ladders:
        unknown = set(args.ladders.split(",")) - set(LADDERS)
        if unknown:
            parser.error(f"unknown ladders: {', '.join(sorted(unknown))}")
        suite = attrs.evolve(suite, ladders=tuple(args.ladders.split(",")))
    if args.seeds:
        suite = attrs.evolve(suite, seeds=tuple(int(s) for s in args.seeds.split(",")))
    out = args.out or Path("benchmarks/results") / args.suite
    out.mkdir(parents=True, exist_ok=True)
    torch.set_flush_denormal(True)

    began = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - began:6.0f} s] {message}", flush=True)

    command = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
    results: dict[str, Any] = {"suite": args.suite, "command": command.strip(), "machine": machine(), "ladders": {}}
    results["settings"] = attrs.asdict(suite)
    earlier = out / "results.json"
    if args.merge and earlier.exists():  # e.g. one ladder rerun: the others stay as they were
        old = json.loads(earlier.read_text())
        results["ladders"] = {k: v for k, v in old["ladders"].items() if k not in suite.ladders}
        results["command"] = f"{old['command']}; {results['command']}"
        results["settings"]["ladders"] = tuple(dict.fromkeys([*old["settings"]["ladders"], *suite.ladders]))
        began -= old["elapsed"]
    alone_cache: dict[tuple, Chain] = {}
    for name in suite.ladders:
        results["ladders"][name] = run_ladder(LADDERS[name], suite, out, alone_cache, log)
        results["elapsed"] = time.perf_counter() - began
        write_json(earlier, results)  # after every ladder: a crash loses one ladder at most

    from benchmarks.report import write_report

    write_report(results, out, docs=args.docs)
    log(f"done: {out / 'results.json'}, {out / 'benchmarks.md'}")
    return results


if __name__ == "__main__":
    main()
