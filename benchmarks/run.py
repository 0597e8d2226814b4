"""The benchmark harness: chains against independent training, per family, over seeds.

Run from the repository root::

    .venv/bin/python -m benchmarks.run --suite quick          # one seed, tiny budgets: checks the harness
    .venv/bin/python -m benchmarks.run --suite full --ladders vit-3,vit-4,resnet-3,llama-3 --docs  # about an hour
    .venv/bin/python -m benchmarks.run --suite full --ladders fashion-vit-3 --alone 64x2   # one piece of hours

For each ladder and seed it trains every model alone for the baseline budget
(on the ``knee`` ladders: at its knee, the smallest of the budgets ``B0, 2 B0,
4 B0...`` at which doubling improves its held-out metric, mean over seeds, by
less than one seed-std) and the ladder as a chain with the paper's short
budgets (128:24:16:16 epochs in proportion, of each model's baseline budget);
then the **budget search** (each grown model trained until it
reaches the mean final metric of its baseline, capped at the baseline budget:
the time to target) and, on the ablated ladders, the grown stages again under
other settings (initialisation, transfer, learning rate after growth, no
middle model). The first model is trained once a seed, exactly as its
baseline is (same seed, steps and evaluations, so the same weights), and the
chain, its budget search and the ablations all grow from it, so they differ
from one another only in what they ablate.

Everything lands in ``--out`` (``results.json``, ``benchmarks.md``, plots);
``--docs`` also writes the generated part of ``docs/benchmarks.md`` and its
plots under ``docs/img/benchmarks/``. Each run alone is kept in
``OUT/alone/`` as it finishes, so a piece that stops is resumed where it was,
and ``--alone SIZES`` trains only those baselines: the full suite runs as
pieces of under an hour (``--ladders X --merge``), see ``docs/benchmarks.md``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle threads sleep on shared cores

import argparse
import datetime
import json
import platform
import shlex
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
from comptlib.data import fashion_mnist_loaders
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
    loaders: Callable[..., Loaders] | None = None  # (batch_size, train_size=) -> (train, val); default: the recipe's
    train_size: int | None = None  # training examples kept: the data-limited, many-epoch regime
    knee: int = 0  # doublings of budgets[0] tried for each baseline's knee (0: every model alone budgets[0])
    options: bool = False  # ablate the recipe options (WSD, pre-decay growth, shrink-perturb...) instead

    def __attrs_post_init__(self) -> None:
        if len(self.budgets) != len(self.sizes):
            raise ValueError(f"ladder {self.name}: {len(self.budgets)} budgets for {len(self.sizes)} sizes")


PARTS = ("chain", "ablations", "search-ablations")
"""After the baselines: the chain and its budget search; the ablations (fixed budgets); the budget search
under other settings (judged by steps to target). A piece may run one of them."""

SEARCH_ABLATIONS: dict[str, dict[str, Any]] = {
    "grown LR x0.5": {"grown_lr_scale": 0.5},
    "grown LR x0.25": {"grown_lr_scale": 0.25},
}
"""Budget searches under other grown-stage settings, on the ``options`` ladders. Re-warmed to the full
peak, a grown ViT of fashion-vit-3 falls 3-5 points below what it inherited and climbs back only as its
rate decays. A lower peak keeps the head start, but (measured 2026-12-02, docs/benchmarks.md) reaches
the target no sooner."""


@attrs.frozen
class Suite:
    """Which ladders, seeds and budget scale; ``val_batches`` trims the held-out sets (smoke runs only)."""

    seeds: tuple[int, ...]
    scale: float
    ladders: tuple[str, ...]
    val_batches: int | None = None
    train_size: int | None = None  # caps the ladders' training sets
    knee: int | None = None  # caps the ladders' doublings
    baseline_seeds: tuple[int, ...] = ()  # more seeds for the baselines' knee and targets (a piece of seeds)
    parts: tuple[str, ...] = PARTS  # what runs after the baselines
    batch_size: int | None = None  # caps the ladders' batch size (smoke runs only)
    val_size: int | None = None  # held-out examples kept of each evaluated batch (smoke runs only)
    rows: tuple[str, ...] | None = None  # the search ablations run (default: all of them)


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
# Fashion-MNIST, data-limited: 10,000 training images (78 batches of 128 an epoch), many epochs; every
# evaluation is the whole 10,000-image test set. Baselines at their knee among 156, 312, ... 4,992 steps
# (2 to 64 epochs: at 1,248 none had reached it); chain budgets in the paper's proportions of each model's
# knee. Measured 2026-12-02, two pieces side by side with OMP_NUM_THREADS=1: 1,248 steps alone, four
# evaluations of the test set included, ViT 64x2 124 s, 80x3 206 s, 96x4 345 s, 128x5 922-948 s (2,496 steps:
# 64x2 250 s, 80x3 450 s, 96x4 800 s); a 3-ViT chain with its budget search against baselines of 2,496 steps
# 26-38 min a seed, each search ablation about 20 (ResNet: 0.10 / 0.25 / 0.40 s a step, a chain 8-15 min a seed).
# docs/benchmarks.md splits the suite into pieces.
_FASHION = {"loaders": fashion_mnist_loaders, "train_size": 10_000, "knee": 5, "val_batches": None}
LADDERS |= {
    "fashion-vit-3": Ladder(
        "fashion-vit-3", "fashion-vit", ("64x2", "80x3", "96x4"), (156, 29, 20), 26, options=True, **_FASHION
    ),
    "fashion-vit-4": Ladder(
        "fashion-vit-4", "fashion-vit", ("64x2", "80x3", "96x4", "128x5"), (156, 29, 20, 20), 26, **_FASHION
    ),
    "fashion-resnet-3": Ladder(
        "fashion-resnet-3", "fashion-resnet", ("16x1", "16x2", "24x2"), (156, 29, 20), 26, **_FASHION
    ),
}


def _stdlib_lm(batch_size: int, train_size: int | None = None) -> Loaders:
    """Stdlib source as bytes, with one fixed held-out tail (its last 256 KiB) for both LM regimes.

    ``train_size`` windows of 128 bytes from the start train (all before the tail by default): a few
    (the data-limited regime, many epochs) or all of them (the compute-limited one, under one pass).
    """
    from comptlib.data import ByteTokenizer, _windows, load_text, window_loaders

    ids = ByteTokenizer().encode(load_text("stdlib", max_bytes=None))
    split = len(ids) - 256 * 1024
    train = _windows(ids[: split if train_size is None else min(split, 128 * train_size)], 128, pad_tail=False)
    val = _windows(ids[split:], 128, pad_tail=True)
    return window_loaders(train, val, batch_size, 0, f"{split:,} stdlib bytes", "the stdlib corpus is too small")


# Decoder LMs in two regimes, one held-out tail (256 KiB, 32 batches spread over it), batches of 16 x 128
# bytes, baselines at their knee among 600 ... 4,800 steps: data-limited trains on the first 1 MiB (8,192
# windows, 512 steps an epoch: 1.2 to 9.4 epochs, the paper's regime); compute-limited on all of the
# stdlib before the tail (about 12 MB; 4,800 steps read 9.8 MB, so no byte is seen twice: LLM pre-training).
_LM_REGIME = {"loaders": _stdlib_lm, "knee": 3, "batch_size": 16, "val_batches": 32}
LADDERS |= {
    "llama-data-limited": Ladder(
        "llama-data-limited", "llama", ("16x2", "32x3", "64x4"), (600, 112, 75), 20, train_size=8192, **_LM_REGIME
    ),
    "llama-compute-limited": Ladder(
        "llama-compute-limited", "llama", ("16x2", "32x3", "64x4"), (600, 112, 75), 20, **_LM_REGIME
    ),
}


def _glyph_pairs(batch_size: int, train_size: int | None = None) -> Loaders:
    """The glyph pairs (split seed 0), the training characters cut to ``train_size`` (smoke runs only)."""
    from torch.utils.data import DataLoader, Subset

    from comptlib.image_text import glyph_loaders

    train, val = glyph_loaders(batch_size, seed=0)
    if train_size is not None and train_size < len(train.dataset):
        gen = torch.Generator().manual_seed(0)
        subset = Subset(train.dataset, range(train_size))
        train = DataLoader(subset, batch_size=batch_size, shuffle=True, drop_last=True, generator=gen)
    return train, val


# CLIP, the paper's own setting, on data where larger models have more to learn: 3,691 training characters, a
# random face each time, 410 held out (recall@5 over them, zero-shot accuracy with their names as classes).
# Baselines at their knee among 600 ... 4,800 steps of 64 pairs (10 to 83 passes over the characters).
LADDERS["clip-glyphs-3"] = Ladder(
    "clip-glyphs-3", "clip-glyphs", ("32x2", "64x3", "128x4"), (600, 112, 75), 50, loaders=_glyph_pairs, knee=3
)

SUITES: dict[str, Suite] = {
    # every code path in minutes: CI's smoke test (fashion-vit-4 and the compute-limited LM add none: left out)
    "quick": Suite(
        (0,),
        0.02,
        tuple(k for k in LADDERS if k not in ("fashion-vit-4", "llama-compute-limited")),
        val_batches=2,
        train_size=256,
        knee=1,
        batch_size=16,
        val_size=32,
    ),
    "full": Suite((0, 1, 2), 1.0, tuple(LADDERS)),
}


def ablations(family: str, options: bool = False) -> dict[str, dict[str, Any]]:
    """The grown-stage settings each ablated ladder is retrained with, by label (``"default"`` first).

    ``options``: the recipe options of issue 17 instead of the paper's choices. ``fresh_first``
    retrains the first model too (a WSD schedule changes it); ``drop_middle`` grows the largest model
    from the smallest (about 4x the parameters a step instead of 2x).
    """
    out: dict[str, dict[str, Any]] = {"default": {}}
    paper = {"transfer: feature MSE x500, constant (the paper's)": {"transferer": FeatureMSE()}}
    if options:
        out |= paper | {
            "transfer: none": {"transferer": None},
            "transfer: feature MSE to 0 over 40 % (KI)": {
                "transferer": FeatureMSE(schedule="linear", decay_fraction=0.4)
            },
            "transfer: feature MSE x D/512": {"transferer": FeatureMSE(width_reference=512)},
            "shrink 0.5, perturb 0.01": {"shrink": 0.5, "perturb": 0.01},
            "noise on free entries, 10 dB": {"growth_snr_db": 10.0},
            "schedule: wsd, grow from final": {"schedule": "wsd", "fresh_first": True},
            "schedule: wsd, grow from pre-decay": {"schedule": "wsd", "grow_from": "pre_decay", "fresh_first": True},
        }
    else:
        distil = {} if _default_transferer(family) is not None else {"transferer": FeatureMSE()}
        out |= {
            "init: compt (paper's warm start)": {"grower": "compt"},
            "init: none (distil only)": {"grower": None} | distil,
        }
        out |= paper | {
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


_HARNESS = ("drop_middle", "fresh_first")
"""Ablation keys the harness reads itself: not Chain settings."""


def _is_default(settings: dict[str, Any], family: str) -> bool:
    if set(settings) & set(_HARNESS):
        return False
    variant = Chain([], **settings)
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


def _loaders(ladder: Ladder, suite: Suite) -> Loaders:
    """The ladder's data with a fixed split (seed 0): seeds vary the init and the batch order only."""
    spec = RECIPES[ladder.recipe]
    batch_size = min(n for n in (ladder.batch_size or spec.batch_size, suite.batch_size) if n is not None)
    if ladder.loaders is None:
        train, val = spec.loaders(batch_size, 0)
    else:
        sizes = [n for n in (ladder.train_size, suite.train_size) if n is not None]
        train, val = ladder.loaders(batch_size, train_size=min(sizes) if sizes else None)
    limits = [n for n in (ladder.val_batches, suite.val_batches) if n is not None]
    if limits:  # evenly spaced over the held-out set, so it still covers all of it
        batches = list(val)
        val = batches[:: max(len(batches) // min(limits), 1)][: min(limits)]
    if suite.val_size is not None:
        val = [_head(batch, suite.val_size) for batch in val]
    return train, val


def _head(batch: Any, n: int) -> Any:
    """The first ``n`` examples of a batch (a tensor, or a tuple, list or dict of them)."""
    if isinstance(batch, dict):
        return {k: _head(v, n) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_head(v, n) for v in batch)
    return batch[:n]


def _run(models: Sequence[nn.Module], train: Any, val: Any, **settings: Any) -> Chain:
    return Chain(list(models), progress=False, **settings).fit(train, val)


def _summary(chain: Any) -> list[dict[str, Any]]:
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
                "branch_steps": record.get("branch_steps", 0),
                "flops": row["flops"],
                "wall_time": row["wall_time"],
                "curve": [(v["step"], v[metric]) for v in record["val"]],
            }
        )
    return rows


@attrs.frozen
class Stored:
    """A run alone as ``OUT/alone/`` keeps it: what the summaries and plots read of a fitted Chain."""

    history_: list[dict[str, Any]]
    report_: dict[str, Any]


def _alone(ladder: Ladder, suite: Suite, data: Loaders, size: str, seed: int, budget: int, out: Path, log: Callable):
    """``size`` trained alone for ``budget`` steps: from ``OUT/alone/`` when an earlier piece trained it."""
    spec = RECIPES[ladder.recipe]
    every = _alone_every(ladder, suite, budget)
    limits = (ladder.batch_size, ladder.val_batches, suite.val_batches, ladder.train_size, suite.train_size, every)
    limits += (suite.batch_size, suite.val_size, spec.lr)
    path = (
        out / "alone" / f"{ladder.recipe}-{size}-seed{seed}-{budget}steps-{zlib.crc32(repr(limits).encode()):08x}.json"
    )
    if path.exists():
        return Stored(**json.loads(path.read_text()))
    start = time.perf_counter()
    settings = {"budgets": [budget], "names": [f"{ladder.recipe}-{size}"], "eval_every": every, "seed": seed}
    chain = _run([_seeded_model(ladder.recipe, size, seed)], *data, unit="steps", lr=spec.lr, **settings)
    write_json(path, {"history_": chain.history_, "report_": chain.report_})
    log(
        f"{ladder.name} seed {seed}: {ladder.recipe}-{size} alone, {budget} steps ({time.perf_counter() - start:.0f} s)"
    )
    return chain


def _alone_every(ladder: Ladder, suite: Suite, budget: int) -> int:
    """How often a run alone is evaluated: four times on the knee ladders (only its end is compared)."""
    return max(budget // 4, 1) if ladder.knee else 2 * max(int(round(ladder.eval_every * suite.scale)), 1)


def _std(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _knee(ladder: Ladder, suite: Suite, data: Loaders, size: str, tried: list[int], out: Path, log: Callable):
    """Baselines at the knee: the smallest tried budget at which doubling gains less than one seed-std.

    Returns the curve (every budget trained, final metric per seed) and the runs at the knee; where no
    doubling is that small the largest budget tried is the baseline (``found`` False).
    """
    higher = _family(ladder).higher_is_better
    curve: list[list[float]] = []
    previous: dict[int, Any] = {}
    for k, budget in enumerate(tried):
        runs = {seed: _alone(ladder, suite, data, size, seed, budget, out, log) for seed in _every_seed(suite)}
        curve.append([r.report_["models"][0][r.report_["metric"]] for r in runs.values()])
        gain = statistics.mean(curve[k]) - statistics.mean(curve[k - 1]) if k else None
        if gain is not None and (gain if higher else -gain) < _std(curve[k - 1]):
            return {"budgets": tried[: k + 1], "metrics": curve, "knee": tried[k - 1], "found": True}, previous
        previous = runs
    return {"budgets": tried, "metrics": curve, "knee": tried[-1], "found": False}, previous


def _every_seed(suite: Suite) -> tuple[int, ...]:
    """The seeds of the baselines: the chains' and ``baseline_seeds``."""
    return tuple(dict.fromkeys([*suite.baseline_seeds, *suite.seeds]))


def _family(ladder: Ladder) -> Any:
    from comptlib.family import list_families

    return list_families()[RECIPES[ladder.recipe].family]


def _ratio(alone: Sequence[dict[str, Any]], chain: Chain) -> dict[str, float]:
    """FLOPs of every model alone at its baseline budget over the chain's (every stage, teacher forwards too)."""
    independent = sum(a["flops"] for a in alone)
    flops = chain.report_["chain_flops"]
    return {"chain_flops": flops, "independent_flops": independent, "acceleration_ratio": independent / flops}


def run_ladder(ladder: Ladder, suite: Suite, out: Path, log: Callable, only: Sequence[str] | None = None) -> dict:
    """Every run of one ladder, for every seed of the suite; plots of seed ``suite.seeds[0]``.

    ``only``: train just these sizes' baselines (every budget of the knee search) and return nothing.
    """
    spec = RECIPES[ladder.recipe]
    scaled = [max(int(round(b * suite.scale)), 2) for b in ladder.budgets]
    every = max(int(round(ladder.eval_every * suite.scale)), 1)
    doublings = ladder.knee if suite.knee is None else min(ladder.knee, suite.knee)
    tried = [scaled[0] * 2**k for k in range(doublings + 1)]
    data = _loaders(ladder, suite)
    if only is not None:
        for budget in tried:  # every size at one budget before the next: a piece cut short has the cheap ones
            for size in (s for s in ladder.sizes if s in only):
                for seed in _every_seed(suite):
                    _alone(ladder, suite, data, size, seed, budget, out, log)
        return {}
    names = [f"{ladder.recipe}-{s}" for s in ladder.sizes]
    common = {"unit": "steps", "lr": spec.lr, "grower": spec.grower("exact")}

    knees, at_knee = {}, []
    for size in ladder.sizes:  # baselines first: the budget search needs their mean final metric
        knees[size], runs = _knee(ladder, suite, data, size, tried, out, log)
        at_knee.append(runs)
    alone = {seed: [runs[seed] for runs in at_knee] for seed in _every_seed(suite)}
    base = [knees[s]["knee"] for s in ladder.sizes]  # each model's baseline budget
    share = [b / ladder.budgets[0] for b in ladder.budgets]  # the paper's proportions, of each model's baseline
    budgets = [base[0]] + [max(int(round(base[i] * share[i])), 2) for i in range(1, len(base))]
    metric = alone[suite.seeds[0]][0].report_["metric"]
    targets = [statistics.mean(alone[s][i].report_["models"][0][metric] for s in alone) for i in range(len(names))]
    result: dict[str, Any] = {"sizes": ladder.sizes, "budgets": budgets, "baselines": base, "eval_every": every}
    result["date"] = datetime.date.today().isoformat()  # ladders of one results file may come from other days
    result["search_schedule"] = "wsd"  # the budget search evaluates decayed branches
    result |= {"knees": knees, "seeds": {}}
    if ladder.knee:
        _plot_knees(ladder.name, knees, metric, out / f"{ladder.name}-knee.png")

    for seed in suite.seeds:
        start = time.perf_counter()
        models = [_seeded_model(ladder.recipe, size, seed) for size in ladder.sizes]
        runs: dict[str, Any] = {"alone": [_summary(c)[0] for c in alone[seed]]}
        run_with = {"names": names, "eval_every": every, "seed": seed, **common}
        # The first model as its baseline trains (same seed, steps and evaluations): the same model, which
        # the chain, its budget search and the ablations grow from; checked against the baseline's metric.
        lone = {"names": names[:1], "eval_every": _alone_every(ladder, suite, base[0])}
        trained = _run(models[:1], *data, budgets=budgets[:1], **(run_with | lone))
        first = trained.models_[0]
        same = _summary(trained)[0]["metric"] == runs["alone"][0]["metric"]
        log(f"{ladder.name} seed {seed}: first model ({time.perf_counter() - start:.0f} s, its baseline's: {same})")
        grown = {"baseline_budget": base[0], "first_trained": True, "seed": seed}

        if "chain" in suite.parts:
            start = time.perf_counter()
            chain = _run([first, *models[1:]], *data, **(run_with | grown | {"budgets": [0, *budgets[1:]]}))
            runs |= {
                "chain": [_summary(trained)[0], *_summary(chain)[1:]],
                "chain_report": _ratio(runs["alone"], chain),
            }
            if seed == suite.seeds[0]:
                plot(chain, alone[seed], out / f"{ladder.name}.png")
            log(f"{ladder.name} seed {seed}: chain ({time.perf_counter() - start:.0f} s)")

        # The grown stages again, from the same trained first model, each until it reaches its target (or its
        # baseline's budget), under WSD: each evaluation is of a decayed branch, as a run told to stop there ends.
        # The budget search, then the search ablations (other settings, same data).
        searches: dict[str | None, dict[str, Any]] = {None: {}} if "chain" in suite.parts else {}
        if ladder.options and "search-ablations" in suite.parts:
            searches |= {k: v for k, v in SEARCH_ABLATIONS.items() if suite.rows is None or k in suite.rows}
        wsd = {"budgets": [0, *base[1:]], "schedule": "wsd"}
        for label, settings in searches.items():
            start = time.perf_counter()
            run = _run([first, *models[1:]], *data, targets=[None, *targets[1:]], **(run_with | grown | wsd | settings))
            entry = {"search": _summary(run), "search_report": _ratio(runs["alone"], run)}
            if label is None:
                runs |= entry
            else:
                runs.setdefault("search_ablations", {})[label] = entry
            log(
                f"{ladder.name} seed {seed}: budget search{f', {label}' if label else ''} ({time.perf_counter() - start:.0f} s)"
            )

        if (ladder.ablate or ladder.options) and "ablations" in suite.parts:
            runs["ablations"] = {}
            for label, settings in ablations(spec.family, ladder.options).items():
                start = time.perf_counter()
                settings = dict(settings)
                keep = [0, len(names) - 1] if settings.pop("drop_middle", False) else list(range(len(names)))
                fresh = settings.pop("fresh_first", False)  # a WSD schedule changes the first model too
                head = [models[0] if fresh else first, *[models[i] for i in keep[1:]]]
                stages = [budgets[0] if fresh else 0, *[budgets[i] for i in keep[1:]]]
                run = _run(
                    head,
                    *data,
                    names=[names[i] for i in keep],
                    eval_every=every,
                    **(common | ({"seed": seed} if fresh else grown) | {"budgets": stages} | settings),
                )
                runs["ablations"][label] = {"models": _summary(run), "chain_flops": run.report_["chain_flops"]}
                log(f"{ladder.name} seed {seed}: {label} ({time.perf_counter() - start:.0f} s)")
        result["seeds"][seed] = runs
    result["metric"] = metric
    result["higher_is_better"] = _family(ladder).higher_is_better
    result["targets"] = targets
    return result


def _plot_knees(name: str, knees: dict[str, Any], metric: str, path: Path) -> None:
    """The baselines' held-out metric against their budget (mean ± std over seeds), the knee circled."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    from comptlib.io import atomic_write

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for size, knee in knees.items():
        means = [statistics.mean(m) for m in knee["metrics"]]
        line = ax.errorbar(knee["budgets"], means, yerr=[_std(m) for m in knee["metrics"]], fmt="-o", label=size)
        at = knee["budgets"].index(knee["knee"])
        ax.plot([knee["knee"]], [means[at]], "o", markersize=12, fillstyle="none", color=line[0].get_color())
    ax.set_xscale("log", base=2)
    ax.set_xlabel("steps trained alone")
    ax.set_ylabel(f"held-out {metric}")
    ax.set_title(f"{name}: each model alone, its knee circled")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def _merge_seeds(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """A ladder rerun for some seeds or one part keeps what an earlier run of the same budgets has of the rest."""
    keys = ("budgets", "baselines", "targets", "search_schedule")  # another search: its seeds are not comparable
    same = old is not None and all(old.get(k) == new.get(k) for k in keys)
    seeds = {int(k): v for k, v in old["seeds"].items()} if same else {}
    for seed, runs in new["seeds"].items():  # a part rerun for a seed replaces that part only
        seeds[seed] = seeds.get(seed, {}) | runs
    commands = [*(old.get("commands", []) if same else []), *new.get("commands", [])]  # those of the seeds kept
    return new | {"seeds": dict(sorted(seeds.items())), "commands": list(dict.fromkeys(commands))}


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
    parser.add_argument(
        "--baseline-seeds", help="comma-separated seeds the baselines' knee and targets also average over"
    )
    parser.add_argument("--out", type=Path, help="output directory [default: benchmarks/results/SUITE]")
    parser.add_argument("--merge", action="store_true", help="keep the other ladders of an earlier OUT/results.json")
    parser.add_argument("--report", action="store_true", help="run nothing: the report of OUT/results.json")
    parser.add_argument(
        "--merge-from",
        type=Path,
        nargs="+",
        help="run nothing: merge the results.json of pieces run in parallel (other --out folders) into OUT's",
    )
    parser.add_argument(
        "--part", choices=PARTS, help="only the chain and budget search, the ablations or the search ablations"
    )
    parser.add_argument(
        "--alone", help="comma-separated sizes: only train their baselines (kept in OUT/alone/) and stop"
    )
    parser.add_argument("--rows", help="the search ablations run, by label, separated by ';' [all]")
    parser.add_argument("--knee", type=int, help="at most this many doublings of the knee search [the ladder's]")
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
    if args.part:
        suite = attrs.evolve(suite, parts=(args.part,))
    if args.knee is not None:
        suite = attrs.evolve(suite, knee=args.knee)
    if args.rows:
        rows = tuple(args.rows.split(";"))
        if set(rows) - set(SEARCH_ABLATIONS):
            parser.error(f"unknown rows: {'; '.join(sorted(set(rows) - set(SEARCH_ABLATIONS)))}")
        suite = attrs.evolve(suite, rows=rows)
    if args.baseline_seeds:
        suite = attrs.evolve(suite, baseline_seeds=tuple(int(s) for s in args.baseline_seeds.split(",")))
    out = args.out or Path("benchmarks/results") / args.suite
    out.mkdir(parents=True, exist_ok=True)
    torch.set_flush_denormal(True)

    began = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - began:6.0f} s] {message}", flush=True)

    command = "python -m benchmarks.run " + shlex.join(argv if argv is not None else sys.argv[1:])
    results: dict[str, Any] = {"suite": args.suite, "machine": machine(), "ladders": {}}
    results["settings"] = attrs.asdict(suite)
    earlier = out / "results.json"
    if args.merge and earlier.exists():  # e.g. one ladder rerun: the others stay as they were
        old = json.loads(earlier.read_text())
        results["ladders"] = dict(old["ladders"])
        results["settings"]["ladders"] = tuple(dict.fromkeys([*old["settings"]["ladders"], *suite.ladders]))
        began -= old["elapsed"]
    if args.merge_from:  # pieces run side by side, each in its own folder: one results file
        if earlier.exists():
            results = json.loads(earlier.read_text())
        else:
            results["settings"]["ladders"] = []
        for path in args.merge_from:
            piece = json.loads(path.read_text())
            for name, ladder in piece["ladders"].items():
                ladder = ladder | {"seeds": {int(k): v for k, v in ladder["seeds"].items()}}
                results["ladders"][name] = _merge_seeds(results["ladders"].get(name), ladder)
            results["elapsed"] = results.get("elapsed", 0.0) + piece.get("elapsed", 0.0)
            names = [*results["settings"]["ladders"], *piece["ladders"]]
            results["settings"]["ladders"] = list(dict.fromkeys(names))
        write_json(earlier, results)
        log(f"merged {len(args.merge_from)} pieces into {earlier}")
        return results
    if args.report:  # the pieces are merged: only the tables, plots and docs page
        from benchmarks.report import write_report

        write_report(json.loads(earlier.read_text()), out, docs=args.docs)
        return results
    if args.alone:  # a piece of baselines: the ladder's later run reads them from OUT/alone/
        for name in suite.ladders:
            run_ladder(LADDERS[name], suite, out, log, only=args.alone.split(","))
        log(f"done: baselines of {args.alone} in {out / 'alone'}")
        return results
    for name in suite.ladders:
        ladder = run_ladder(LADDERS[name], suite, out, log) | {"commands": [command.strip()]}
        results["ladders"][name] = _merge_seeds(results["ladders"].get(name), ladder)
        results["elapsed"] = time.perf_counter() - began
        write_json(earlier, results)  # after every ladder: a crash loses one ladder at most

    from benchmarks.report import write_report

    write_report(results, out, docs=args.docs)
    log(f"done: {out / 'results.json'}, {out / 'benchmarks.md'}")
    return results


if __name__ == "__main__":
    main()
