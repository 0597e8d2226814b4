"""A chain against training each model alone: same data, seed and evaluation.

:func:`fit_alone` trains the baselines, :func:`compare` lines both up per
model, :func:`format_table` prints them and :func:`plot` draws the validation
metric against cumulative training FLOPs (matplotlib, the ``plot`` extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
from torch import nn

from comptlib.chain import Chain


def fit_alone(
    models: Sequence[nn.Module], train: Any, val: Any, *, budget: float, names: Sequence[str], **settings: Any
) -> list[Chain]:
    """Train each model from its own init for ``budget``: the baseline a chain is measured against.

    ``settings`` are the :class:`Chain` settings the chain used (``unit``,
    ``lr``, ``seed``...). Chain copies the models, so the chain and these runs
    start from the same weights and see the same batches in the same order.
    """
    return [Chain([m], budgets=[budget], names=[n], **settings).fit(train, val) for m, n in zip(models, names)]


def budget_search(chain: Chain, alone: Sequence[Chain], train: Any, val: Any, *, eval_every: int = 10) -> Chain:
    """The grown models again, each stopped once it matches its baseline: what matched quality costs.

    From the chain's trained first model, every later model is grown and
    trained until its held-out metric reaches the final metric of the same
    model trained alone (checked every ``eval_every`` steps, or the chain's
    own), capped at that run's budget. It trains under WSD, so each check is
    of a decayed branch, as a run told to stop there would end
    (:meth:`~comptlib.stage.Stage.decay_branch`). Its ``acceleration_ratio``
    is the matched-quality ratio: every model alone over this chain, the
    first model's training and the teacher's forwards counted.
    """
    metric = chain.report_["metric"]
    params = chain.get_params(deep=False) | {
        "optim": attrs.evolve(chain.optim, schedule="wsd"),
        "models": [chain.models_[0], *chain.models[1:]],
        "budgets": [0, *(lone.budgets[0] for lone in alone[1:])],
        "targets": [None, *(lone.report_["models"][0][metric] for lone in alone[1:])],
        "first_trained": True,
        "baseline_budget": alone[0].budgets[0],
        "eval_every": chain.eval_every or eval_every,
        "checkpoint_dir": None,
        "resume": False,
        "loggers": None,
    }
    return Chain(**params).fit(train, val)


def compare(chain: Chain, alone: Sequence[Chain], search: Chain | None = None) -> dict[str, Any]:
    """Per model: the metric right after growth, after its chain stage and trained alone; FLOPs and time.

    With a :func:`budget_search`, also the steps each grown model needed to
    match its baseline and the matched-quality ratio (None unless all did).
    """
    metric = chain.report_["metric"]
    rows = []
    for i, (row, record, lone) in enumerate(zip(chain.report_["models"], chain.history_, alone)):
        solo = lone.report_["models"][0]
        if search is not None and i > 0:
            found = search.history_[i]
            matched = {"search_steps": found["steps"], "reached": bool(found.get("reached"))}
            matched["search"] = search.report_["models"][i][metric]
        else:
            matched = {}
        rows.append(
            {
                "name": row["name"],
                "params": row["params"],
                "grown": record["val"][0][metric] if i > 0 and record["val"] else None,
                "chain": row[metric],
                "alone": solo[metric],
                "chain_steps": row["steps"],
                "alone_steps": solo["steps"],
                "chain_flops": row["flops"],
                "alone_flops": solo["flops"],
                "chain_time": row["wall_time"],
                "alone_time": solo["wall_time"],
            }
            | matched
        )
    alone_time = sum(lone.report_["wall_time"] for lone in alone)
    if search is not None:
        reached = all(r["reached"] for r in rows[1:])
        matched = {"search_flops": search.report_["chain_flops"]}
        matched["matched_quality_ratio"] = search.report_["acceleration_ratio"] if reached else None
    return matched | {
        "metric": metric,
        "higher_is_better": _higher_is_better(chain),
        "models": rows,
        "chain_flops": chain.report_["chain_flops"],
        "alone_flops": sum(lone.report_["chain_flops"] for lone in alone),
        "acceleration_ratio": chain.report_["acceleration_ratio"],
        "chain_time": chain.report_["wall_time"],
        "alone_time": alone_time,
        "wall_time_ratio": alone_time / max(chain.report_["wall_time"], 1e-9),
    }


def _higher_is_better(chain: Chain) -> bool:
    from comptlib.family import family_of

    return family_of(chain.models_[0]).higher_is_better


def format_flops(value: float) -> str:
    """FLOPs with an SI prefix, so tiny and large families print alike.

    >>> format_flops(7.07e11), format_flops(4.47e12)
    ('707.0G', '4.5T')
    """
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if value >= scale:
            return f"{value / scale:.1f}{prefix}"
    return f"{value:.0f}"


def format_table(result: dict[str, Any]) -> str:
    """:func:`compare`'s result as a plain-text table, for logs and docstrings."""
    head = f"held-out {result['metric']}"
    lines = [
        f"{'model':<16}{'params':>10} | {head:^22} | {'steps':^11} | {'train FLOPs':^15} | {'wall s':^13}",
        f"{'':<16}{'':>10} | {'grown':>6}{'chain':>8}{'alone':>8} | {'chain':>5}{'alone':>6} | "
        f"{'chain':>7}{'alone':>8} | {'chain':>6}{'alone':>7}",
    ]
    for r in result["models"]:
        grown = f"{r['grown']:>6.3f}" if r["grown"] is not None else f"{'-':>6}"
        lines.append(
            f"{r['name']:<16}{r['params']:>10,} | {grown}{r['chain']:>8.3f}{r['alone']:>8.3f} | "
            f"{r['chain_steps']:>5}{r['alone_steps']:>6} | {format_flops(r['chain_flops']):>7}{format_flops(r['alone_flops']):>8} | "
            f"{r['chain_time']:>6.1f}{r['alone_time']:>7.1f}"
        )
    lines += [
        f"{'family':<16}{'':>10} | {'':>22} | {'':>11} | {format_flops(result['chain_flops']):>7}"
        f"{format_flops(result['alone_flops']):>8} | {result['chain_time']:>6.1f}{result['alone_time']:>7.1f}",
        f"acceleration ratio (FLOPs): {result['acceleration_ratio']:.2f}x; wall-time ratio: {result['wall_time_ratio']:.2f}x",
    ]
    if "search_flops" in result:
        ratio = result["matched_quality_ratio"]
        steps = ", ".join(
            f"{r['name']} {r['search_steps']}"
            + ("" if r["reached"] else f" (not reached: {r['search']:.3f} at the cap, {r['alone_steps']})")
            for r in result["models"][1:]
        )
        head = f"{ratio:.2f}x" if ratio is not None else "not reached"
        lines.append(f"matched-quality ratio (budget search): {head}; steps to each baseline: {steps}")
    return "\n".join(lines)


def curves(chain: Chain, alone: Sequence[Chain]) -> dict[str, list[tuple[float, float]]]:
    """Validation metric against cumulative training FLOPs: the chain's models, and each model alone.

    A chain model's curve starts where the chain had spent everything before
    its stage, which is what it cost to get there; a first model trained
    elsewhere (``first_trained``) is one point, at what the ledger counts for it.
    """
    metric = chain.report_["metric"]
    out: dict[str, list[tuple[float, float]]] = {}
    spent = 0.0
    for record, row in zip(chain.history_, chain.report_["models"]):
        total = row["flops"]
        points = [
            (spent + total * (v["step"] / record["steps"] if record["steps"] else 1), v[metric]) for v in record["val"]
        ]
        out[f"chain: {record['name']}"] = points
        spent += total
    for lone in alone:
        record = lone.history_[0]
        out[f"alone: {record['name']}"] = [
            (record["flops"] * v["step"] / max(record["steps"], 1), v[metric]) for v in record["val"]
        ]
    return out


def plot(chain: Chain, alone: Sequence[Chain], path: str | Path) -> Path:
    """Draw :func:`curves` to a PNG; returns its path.

    With no ``alone`` runs it draws the chain alone (``comptlib grow``'s report).
    """
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from comptlib.io import atomic_write

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, points) in enumerate(curves(chain, alone).items()):
        if not points:
            continue
        x, y = zip(*points)
        k = i % len(chain.history_)
        style = "-o" if label.startswith("chain") else "--"
        ax.plot(x, y, style, color=colors[k % len(colors)], label=label, markersize=3)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("cumulative training FLOPs")
    ax.set_ylabel(f"validation {chain.report_['metric']}")
    title = (
        f"{chain.report_['family']} chain: {chain.report_['acceleration_ratio']:.2f}x fewer FLOPs than training alone"
    )
    ax.set_title(title + (", side by side" if alone else ""))
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    return path
