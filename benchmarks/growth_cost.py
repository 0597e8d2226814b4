"""What ``comptlib.grow`` costs, in time and peak memory, against building the target alone.

Run from the repository root::

    .venv/bin/python -m benchmarks.growth_cost           # a few minutes on 2 CPU cores, ~10 GB of memory
    .venv/bin/python -m benchmarks.growth_cost --cases vit

Each measurement runs in a fresh process (so its peak RSS is its own), on
``--threads`` threads (default 2), for three links: torchvision ``vit_b_16 ->
vit_l_16``, the public Qwen2.5 0.5B -> 1.5B shapes (built from config, no
weights; fewer, wider heads, so ``approximate=True``) and ``resnet50 ->
wide_resnet50_2``. Per link:

- ``build``: the target built alone, with its constructor's random init;
- ``grow``: the target built on the meta device and grown (allocated once,
  each tensor drawn from its init rule only where growth leaves entries free,
  written in place);
- ``grow built``: growth into a target built the ordinary way (its build not counted).

Peak memory is the process's peak RSS above what it held before the timed
part (the source is built first), as a multiple of the target's weight bytes.
It writes ``benchmarks/results/growth_cost.json`` (atomically) and prints a
markdown table; ``docs/benchmarks.md`` ("Growth cost") records a run.
Goals (issue 16): ``vit_b_16 -> vit_l_16`` in at most 3 s with peak memory at
most 1.5x the target's weights; ~0.5B -> ~1.5B in at most 60 s.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import datetime
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

RESULTS = Path(__file__).parent / "results" / "growth_cost.json"
MODES = ("build", "grow", "grow built")
QWEN25_05B = {
    "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
    "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 32768,
    "rope_theta": 1e6, "tie_word_embeddings": True,
}  # fmt: skip
QWEN25_15B = QWEN25_05B | {
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
}


def _qwen(entries: dict[str, Any]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from transformers import Qwen2Config, Qwen2ForCausalLM

        return Qwen2ForCausalLM(Qwen2Config(**entries))

    return build


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision.models

        return getattr(torchvision.models, name)()

    return build


CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[], nn.Module], dict[str, Any], str]] = {
    "vit": (_torchvision("vit_b_16"), _torchvision("vit_l_16"), {}, "torchvision vit_b_16 -> vit_l_16"),
    "qwen": (_qwen(QWEN25_05B), _qwen(QWEN25_15B), {"approximate": True}, "Qwen2.5 0.5B -> 1.5B shapes"),
    "resnet": (_torchvision("resnet50"), _torchvision("wide_resnet50_2"), {}, "resnet50 -> wide_resnet50_2"),
}


def _rss() -> int:
    """The process's resident memory now, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(case: str, mode: str) -> dict[str, float]:
    """One measurement, in this process: seconds and peak memory above the baseline."""
    import comptlib

    small, large, options, _ = CASES[case]
    source = small() if mode != "build" else None
    target = large() if mode == "grow built" else None
    before = _rss()
    start = time.perf_counter()
    if mode == "build":
        target = large()
    else:
        if target is None:
            with torch.device("meta"):
                target = large()
        comptlib.grow(source, target, **options)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    weights = sum(t.numel() * t.element_size() for t in [*target.parameters(), *target.buffers()])
    params = sum(p.numel() for p in target.parameters())
    return {"seconds": seconds, "peak_bytes": max(peak - before, 0), "weight_bytes": weights, "params": params}


def _child(case: str, mode: str, threads: int) -> dict[str, float]:
    code = f"import torch; torch.set_num_threads({threads}); import json; from benchmarks.growth_cost import measure; "
    code += f"print(json.dumps(measure({case!r}, {mode!r})))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(results: dict[str, Any]) -> str:
    """The markdown table of a run: per link, time and peak memory of each mode, and the ratios to building."""
    rows = [
        "| link | target params | build s | grow (meta target) s | grow / build | peak / target weights | grow into a built target s | its peak / weights |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case, r in results["cases"].items():
        build, grow, built = (r[m] for m in MODES)
        w = grow["weight_bytes"]
        rows.append(
            f"| {CASES[case][3]} | {grow['params'] / 1e6:.0f}M | {build['seconds']:.1f} | {grow['seconds']:.1f} | "
            f"{grow['seconds'] / build['seconds']:.2f} | {grow['peak_bytes'] / w:.2f} | {built['seconds']:.1f} | "
            f"{built['peak_bytes'] / w:.2f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    from comptlib.io import write_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "threads": args.threads,
        "torch": torch.__version__,
        "cases": {},
    }
    for case in args.cases.split(","):
        results["cases"][case] = {mode: _child(case, mode, args.threads) for mode in MODES}
        print(case, json.dumps(results["cases"][case]), flush=True)
    write_json(RESULTS, results)
    print(table(results))


if __name__ == "__main__":
    main()
