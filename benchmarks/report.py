"""Turn :mod:`benchmarks.run`'s results into markdown tables, verdicts and plots.

The generated text replaces what lies between the two markers in
``docs/benchmarks.md``; what is around them (the discussion) is left alone.
"""

from __future__ import annotations

import shutil
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from comptlib.bench import format_flops
from comptlib.io import atomic_write

START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"
PAPER = {3: ("4.13x", 4.5), 4: ("5.68x", 6.0)}
"""Models in the family -> (the paper's CC3M acceleration ratio, this project's target)."""


def _stats(values: Sequence[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _pm(values: Sequence[float], digits: int = 3) -> str:
    """Mean ± std over seeds; the mean alone where every seed agrees (FLOPs ratios are deterministic)."""
    mean, std = _stats(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if round(std, digits) else f"{mean:.{digits}f}"


def _better(a: float, b: float, higher: bool) -> float:
    """How much ``a`` beats ``b`` (negative: worse), whatever the metric's direction."""
    return a - b if higher else b - a


def _verdict(target: float, ratio: float, matched: bool) -> str:
    """The issue's target: the FLOPs ratio, with every grown model within one std of its baseline."""
    misses = [what for what, ok in (("ratio", ratio >= target), ("quality", matched)) if not ok]
    return f">= {target}x and matched: " + ("met" if not misses else f"missed ({' and '.join(misses)})")


def _seed_runs(ladder: dict[str, Any]) -> list[dict[str, Any]]:
    return list(ladder["seeds"].values())


def _baselines(ladder: dict[str, Any]) -> list[int]:
    """Each model's budget alone (results from before the knee rule: the first model's, for all)."""
    return ladder.get("baselines", [ladder["budgets"][0]] * len(ladder["sizes"]))


def _knee_section(name: str, ladder: dict[str, Any], image: str) -> list[str]:
    """The curves that chose each baseline's budget: held-out metric per budget tried, the knee in bold."""
    knees = ladder.get("knees", {})
    if not any(len(k["budgets"]) > 1 for k in knees.values()):
        return []
    lines = [
        f"Baselines at their knee: each model alone for the smallest budget at which doubling it improves the "
        f"held-out {ladder['metric']} (mean over seeds) by less than one seed-std; *not found*: the largest tried.",
        "",
        "| model | "
        + " | ".join(f"{b} steps" for b in max((k["budgets"] for k in knees.values()), key=len))
        + " | knee |",
        "|---|" + "---:|" * max(len(k["budgets"]) for k in knees.values()) + "---:|",
    ]
    for size, knee in knees.items():
        cells = [_pm(m) if b != knee["knee"] else f"**{_pm(m)}**" for b, m in zip(knee["budgets"], knee["metrics"])]
        cells += ["–"] * (len(lines[2].split("|")) - 4 - len(cells))
        lines.append(f"| {size} | " + " | ".join(cells) + f" | {knee['knee'] if knee['found'] else 'not found'} |")
    return [*lines, "", f"![{name}: each model alone against its budget]({image})", ""]


def family_rows(ladder: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per model and for the family: means over seeds and the matched-quality verdicts."""
    runs, higher = _seed_runs(ladder), ladder["higher_is_better"]
    rows = []
    for i, size in enumerate(ladder["sizes"]):
        chain = [r["chain"][i]["metric"] for r in runs]
        alone = [r["alone"][i]["metric"] for r in runs]
        gap = _better(statistics.mean(chain), statistics.mean(alone), higher)
        std = _stats(alone)[1]
        rows.append(
            {
                "size": size,
                "params": runs[0]["chain"][i]["params"],
                "chain": chain,
                "alone": alone,
                "grown": [r["chain"][i]["grown"] for r in runs] if i else None,
                "gap": gap,
                "matched": gap >= -std,
                "chain_flops": statistics.mean(r["chain"][i]["flops"] for r in runs),
                "alone_flops": statistics.mean(r["alone"][i]["flops"] for r in runs),
                "chain_time": statistics.mean(r["chain"][i]["wall_time"] for r in runs),
                "alone_time": statistics.mean(r["alone"][i]["wall_time"] for r in runs),
            }
        )
    ratio = [r["chain_report"]["acceleration_ratio"] for r in runs]
    wall = [sum(m["wall_time"] for m in r["alone"]) / sum(m["wall_time"] for m in r["chain"]) for r in runs]
    family = {"ratio": ratio, "wall_ratio": wall, "matched": all(row["matched"] for row in rows[1:])}
    return rows, family


def search_rows(ladder: dict[str, Any], label: str | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Time to target: per grown model, steps and FLOPs until it reached its baseline's mean final metric.

    ``label``: the search ablation of that name instead of the budget search.
    """
    runs = _seed_runs(ladder)
    if label is not None:
        runs = [
            r["search_ablations"][label] | {"alone": r["alone"]} for r in runs if label in r.get("search_ablations", {})
        ]
    rows = []
    for i in range(1, len(ladder["sizes"])):
        stages = [r["search"][i] for r in runs]
        reached = [s for s in stages if s["reached"]]
        alone = statistics.mean(r["alone"][i]["flops"] for r in runs)
        rows.append(
            {
                "size": ladder["sizes"][i],
                "target": ladder["targets"][i],
                "reached": len(reached),
                "seeds": len(stages),
                "steps": [s["steps"] for s in reached],
                "flops": [s["flops"] for s in reached],
                "ratio": [alone / s["flops"] for s in reached],
                "branch_steps": [s.get("branch_steps", 0) for s in reached],
            }
        )
    all_reached = [r for r in runs if all(s["reached"] for s in r["search"][1:])]
    family = {"ratio": [r["search_report"]["acceleration_ratio"] for r in all_reached], "seeds": len(runs)}
    family["with_search"] = [_with_search(r) for r in all_reached]
    return rows, family


def _with_search(run: dict[str, Any]) -> float:
    """The matched-quality ratio with the dropped decay branches counted too: the search's own cost."""
    report = run["search_report"]
    extra = sum(s.get("branch_steps", 0) * s["flops"] / s["steps"] for s in run["search"][1:] if s["steps"])
    independent = report["acceleration_ratio"] * report["chain_flops"]  # older results keep only the ratio
    return independent / (report["chain_flops"] + extra)


def ablation_rows(ladder: dict[str, Any]) -> list[dict[str, Any]]:
    """Per ablation setting: each grown model's final metric over seeds, and the grown stages' FLOPs."""
    runs = _seed_runs(ladder)
    rows = []
    for label in runs[0]["ablations"]:
        entries = [r["ablations"][label] for r in runs]
        models = {m["name"]: [] for m in entries[0]["models"][1:]}
        for e in entries:
            for m in e["models"][1:]:
                models[m["name"]].append(m["metric"])
        rows.append({"label": label, "models": models, "flops": statistics.mean(e["chain_flops"] for e in entries)})
    return rows


def _family_section(name: str, ladder: dict[str, Any], image: str) -> list[str]:
    rows, family = family_rows(ladder)
    metric, n = ladder["metric"], len(ladder["sizes"])
    seeds = len(ladder["seeds"])
    lines = [
        f"### {name}: {' -> '.join(ladder['sizes'])}",
        "",
        f"Held-out {metric} ({'higher' if ladder['higher_is_better'] else 'lower'} is better), mean ± std over "
        f"{seeds} seed{'s' * (seeds > 1)}; chain budgets {ladder['budgets']} steps, each model alone "
        f"{_baselines(ladder)} steps. *grown*: right after growth, before the stage trains.",
        "",
        "| model | params | grown | chain | alone | chain − alone | within 1 std | train FLOPs chain / alone | wall s chain / alone |",
        "|---|---:|---:|---:|---:|---:|:-:|---:|---:|",
    ]
    for row in rows:
        grown = _pm(row["grown"]) if row["grown"] else "–"
        verdict = "–" if row is rows[0] else ("yes" if row["matched"] else "**no**")
        signed = row["gap"] if ladder["higher_is_better"] else -row["gap"]
        lines.append(
            f"| {row['size']} | {row['params']:,} | {grown} | {_pm(row['chain'])} | {_pm(row['alone'])} | "
            f"{signed:+.3f} | {verdict} | {format_flops(row['chain_flops'])} / {format_flops(row['alone_flops'])} | "
            f"{row['chain_time']:.0f} / {row['alone_time']:.0f} |"
        )
    target = PAPER.get(n)
    ratio = _stats(family["ratio"])[0]
    lines += [
        "",
        f"**Acceleration ratio {_pm(family['ratio'], 2)}x in FLOPs, {_pm(family['wall_ratio'], 2)}x in wall time**"
        + (f" (paper, CC3M: {target[0]}; target {_verdict(target[1], ratio, family['matched'])})." if target else "."),
        f"Every grown model within one std of its baseline or better: **{'yes' if family['matched'] else 'no'}**.",
        "",
    ]
    search, matched = search_rows(ladder)
    lines += [
        "Time to target (budget search: each grown model trained until it reaches its baseline's mean final "
        f"{metric}, evaluated every {ladder['eval_every']} steps"
        + (
            " (under WSD: each evaluation before the decay is of a decayed branch, as a run told to stop there ends)"
            if ladder.get("search_schedule") == "wsd"
            else " (under a cosine schedule: mid-stage, at a high learning rate)"
        )
        + ", capped at its baseline's budget; the cost counts every stage, teacher forwards included):",
        "",
        "| grown model | target | reached | steps to target | FLOPs to target | alone FLOPs / FLOPs to target "
        "| dropped branch steps |",
        "|---|---:|:-:|---:|---:|---:|---:|",
    ]
    for row in search:
        steps = _pm(row["steps"], 0) if row["steps"] else "–"
        flops = format_flops(statistics.mean(row["flops"])) if row["flops"] else "–"
        gain = f"{_pm(row['ratio'], 2)}x" if row["ratio"] else "–"
        branches = _pm(row["branch_steps"], 0) if row["branch_steps"] else "–"
        lines.append(
            f"| {row['size']} | {row['target']:.3f} | {row['reached']}/{row['seeds']} | {steps} | {flops} | {gain} "
            f"| {branches} |"
        )
    if matched["ratio"]:
        lines.append(
            f"\nMatched-quality acceleration ratio of the searched chain: **{_pm(matched['ratio'], 2)}x** "
            f"({len(matched['ratio'])} of {matched['seeds']} seeds reached every target); with the search's "
            f"dropped decay branches counted too, {_pm(matched['with_search'], 2)}x."
        )
    else:
        lines.append("\nNo seed reached every target within the cap: no matched-quality ratio.")
    lines += ["", f"![{name}: held-out {metric} against cumulative training FLOPs, seed 0]({image})", ""]
    return lines


def _ablation_section(name: str, ladder: dict[str, Any]) -> list[str]:
    rows = ablation_rows(ladder)
    grown = list(rows[0]["models"])
    alone = {ladder["sizes"][i]: [r["alone"][i]["metric"] for r in _seed_runs(ladder)] for i in range(len(grown) + 1)}
    lines = [
        f"### Ablations on {name}",
        "",
        f"Final held-out {ladder['metric']} of the grown models (mean ± std over {len(ladder['seeds'])} seeds); "
        "every row retrains the grown stages from the same trained first model, same batches.",
        "",
        "| setting | " + " | ".join(grown) + " | grown stages' FLOPs |",
        "|---|" + "---:|" * len(grown) + "---:|",
    ]
    for row in rows:
        cells = [_pm(row["models"][g]) if g in row["models"] else "–" for g in grown]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + f" | {format_flops(row['flops'])} |")
    baseline = [_pm(v) for k, v in alone.items() if any(k in g for g in grown)]
    lines += ["| *each model alone* | " + " | ".join(baseline) + " | |", ""]
    return lines


def _search_ablation_section(name: str, ladder: dict[str, Any]) -> list[str]:
    """The budget search again under other settings, each judged by its steps to target."""
    runs = _seed_runs(ladder)
    labels = list(dict.fromkeys(k for r in runs for k in r.get("search_ablations", {})))
    grown = ladder["sizes"][1:]
    lines = [
        f"### Budget search under other settings on {name}",
        "",
        "Steps each grown model needed to reach its baseline's mean final "
        f"{ladder['metric']} (mean ± std over the seeds that reached it), from the same trained first model, "
        "same batches; the first row is the budget search above (compare a row with it seed by seed where it ran on fewer). "
        "The ratio is the matched-quality one.",
        "",
        "| setting | seeds | " + " | ".join(f"{g} steps to target" for g in grown) + " | matched-quality ratio "
        "| with dropped branches |",
        "|---|:-:|" + "---:|" * len(grown) + "---:|---:|",
    ]
    for label in [None, *labels]:
        rows, family = search_rows(ladder, label)
        seeds = ", ".join(
            str(k) for k, r in ladder["seeds"].items() if label is None or label in r.get("search_ablations", {})
        )
        steps = [f"{_pm(r['steps'], 0)} ({r['reached']}/{r['seeds']})" if r["steps"] else "not reached" for r in rows]
        ratio = f"{_pm(family['ratio'], 2)}x" if family["ratio"] else "–"
        branches = f"{_pm(family['with_search'], 2)}x" if family["with_search"] else "–"
        lines.append(
            f"| {label or 'default (the budget search)'} | {seeds} | "
            + " | ".join(steps)
            + f" | {ratio} | {branches} |"
        )
    return [*lines, ""]


PAIRS = (("vit-3", "vit-4"), ("fashion-vit-3", "fashion-vit-4"))
"""A 3-model ladder and the 4-model one that adds a model to it."""


def _prepend_section(results: dict[str, Any], short: str, long: str) -> list[str]:
    """The paper's first observation: a longer chain (here: one model more) cuts the cost of the largest."""
    ladders = results["ladders"]
    if not {short, long} <= set(ladders):
        return []
    three, four = (family_rows(ladders[k])[0] for k in (short, long))
    c3 = [r["chain_report"]["chain_flops"] for r in _seed_runs(ladders[short])]
    c4 = [r["chain_report"]["chain_flops"] for r in _seed_runs(ladders[long])]
    largest = four[-1]["alone_flops"]
    added = next(r["size"] for r in four if r["size"] not in {t["size"] for t in three})
    share = 100 * statistics.mean(c4) / largest
    if added == four[0]["size"]:  # a smaller model in front, as the paper's 4-model chain
        head = f"### Prepending a smaller model: {long} prepends {added} to {short}"
        said = (
            f"the 3-model chain costs {100 * statistics.mean(c3) / largest:.0f} % of it and the 4-model chain "
            f"{share:.0f} % (paper: ViT-T, S and B prepended to ViT-L cost 28 % of ViT-L alone)."
        )
    else:
        head = f"### A larger model on top: {long} grows {added} from {short}'s largest"
        said = f"the 4-model chain, all four models, costs {share:.0f} % of it."
    lines = [
        head,
        "",
        f"Chain FLOPs: {format_flops(statistics.mean(c3))} (3 models) and {format_flops(statistics.mean(c4))} "
        f"(4 models); training {four[-1]['size']} alone costs {format_flops(largest)}, so {said}",
        "",
        "| model | in the 3-model chain | in the 4-model chain |",
        "|---|---:|---:|",
    ]
    for row in four:
        other = next((_pm(r["chain"]) for r in three if r["size"] == row["size"]), "–")
        lines.append(f"| {row['size']} | {other} | {_pm(row['chain'])} |")
    return [*lines, ""]


def _middle_section(name: str, ladder: dict[str, Any]) -> list[str]:
    """The paper's second observation: a middle-size model adds little cost."""
    runs = _seed_runs(ladder)
    if "no middle model" not in runs[0].get("ablations", {}):
        return []
    full = [r["ablations"]["default"] for r in runs]
    two = [r["ablations"]["no middle model"] for r in runs]
    largest = ladder["sizes"][-1]
    return [
        f"**A middle model on {name}.** Without {', '.join(ladder['sizes'][1:-1])}, the chain costs "
        f"{format_flops(statistics.mean(t['chain_flops'] for t in two))} against "
        f"{format_flops(statistics.mean(f['chain_flops'] for f in full))} with it, and {largest} ends at "
        f"{_pm([t['models'][-1]['metric'] for t in two])} against {_pm([f['models'][-1]['metric'] for f in full])}.",
        "",
    ]


def _commands(results: dict[str, Any]) -> list[str]:
    """The commands that made the results kept, ladder by ladder, each once."""
    return list(dict.fromkeys(c for ladder in results["ladders"].values() for c in ladder["commands"]))


def render(results: dict[str, Any], images: str) -> str:
    """The generated markdown: headline table, then per family its tables, plot and ablations."""
    m = results["machine"]
    lines = [
        START,
        "",
        f"Suite `{results['suite']}` on {m['processor']} ({m['cpu_count']} cores, "
        f"{m['threads']} torch threads, {m['platform']}, torch {m['torch']}), "
        f"seeds {sorted({int(s) for ladder in results['ladders'].values() for s in ladder['seeds']})}, "
        f"{results['elapsed'] / 60:.0f} minutes in all, each ladder on the date in its row. Reproduce with "
        "(each ladder's pieces, in the order they were merged; a piece whose seeds were replaced is gone):",
        "",
        "```bash\n" + "\n".join(f".venv/bin/{c}" for c in _commands(results)) + "\n```",
        "",
        "| family | run on | models | fixed-budget ratio (FLOPs, paper proportions) | wall-time ratio | paper (CC3M) | target | grown models matched | matched-quality ratio |",
        "|---|---|:-:|---:|---:|---:|---:|:-:|---:|",
    ]
    for name, ladder in results["ladders"].items():
        _, family = family_rows(ladder)
        _, matched = search_rows(ladder)
        n = len(ladder["sizes"])
        paper, target = PAPER.get(n, ("–", None))
        ratio = _stats(family["ratio"])[0]
        verdict = _verdict(target, ratio, family["matched"]) if target else "–"
        reached = f"{len(matched['ratio'])}/{matched['seeds']} seeds"
        searched = f"{_pm(matched['ratio'], 2)}x ({reached})" if matched["ratio"] else f"not reached ({reached})"
        lines.append(
            f"| {name} | {ladder.get('date', '–')} | {n} | {_pm(family['ratio'], 2)}x | {_pm(family['wall_ratio'], 2)}x | {paper} | {verdict} | "
            f"{'yes' if family['matched'] else 'no'} | {searched} |"
        )
    lines.append("")
    for name, ladder in results["ladders"].items():
        lines += _family_section(name, ladder, f"{images}/{name}.png")
        lines += _knee_section(name, ladder, f"{images}/{name}-knee.png")
        if "ablations" in next(iter(ladder["seeds"].values())):
            lines += _ablation_section(name, ladder) + _middle_section(name, ladder)
        if any("search_ablations" in r for r in _seed_runs(ladder)):
            lines += _search_ablation_section(name, ladder)
    for short, long in PAIRS:
        lines += _prepend_section(results, short, long)
    return "\n".join([*lines, END, ""])


def write_report(results: dict[str, Any], out: Path, docs: Path | None = None) -> None:
    """``out/benchmarks.md``; with ``docs``, also the generated part of ``docs/benchmarks.md`` and its plots."""
    atomic_write(out / "benchmarks.md", lambda tmp: tmp.write_text(render(results, ".")))
    if docs is None:
        return
    images = docs / "img" / "benchmarks"
    images.mkdir(parents=True, exist_ok=True)
    for name in results["ladders"]:
        for plot in (f"{name}.png", f"{name}-knee.png"):
            if (out / plot).exists():
                shutil.copyfile(out / plot, images / plot)
    page = docs / "benchmarks.md"
    text = page.read_text() if page.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    if START not in text or END not in text:
        raise ValueError(f"{page} has no {START} ... {END} markers to write the results between")
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    generated = render(results, "img/benchmarks")
    atomic_write(page, lambda tmp: tmp.write_text(head + generated.rstrip("\n") + tail))
