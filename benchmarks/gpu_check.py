"""GPU check: how fast one chain stage trains on this GPU, with comptlib's own stage machinery.

Run from the repository root on a machine with an NVIDIA GPU (under 8 minutes)::

    bash benchmarks/gpu_check.sh                      # both stages, eager and compiled
    .venv/bin/python -m benchmarks.gpu_check --stages vit-b --steps 10   # a quick look
    .venv/bin/python -m benchmarks.gpu_check --cpu-smoke  # tiny models on the CPU: checks the script runs

Two stages of a CoM-PT chain, each a grown student distilled from its frozen
teacher exactly as ``Chain`` trains it (the family's exact grower and default
transferer, ``Trainee``, bf16 autocast, fused AdamW with clipping), on
synthetic batches (nothing is downloaded):

* ``vit-b``: ViT-S/16 -> ViT-B/16 (86M) at 224 px, batch 128;
* ``llama-350m``: an 88M Llama -> a 360M Llama (1024 wide, 24 layers, tied embeddings), 1,024 tokens, batch 8.

For each, with and without ``torch.compile``, it reports throughput
(samples/s), MFU (the measured training FLOPs per step, student forward and
backward plus teacher forward, over the step time and the GPU's dense bf16
peak), peak memory, and the teacher's overhead: the share of the step time
that goes away when the same step runs without the teacher and the transfer
loss, next to the teacher's share of the step's FLOPs. Results go to stdout
and ``benchmarks/results/gpu_check.json``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from comptlib.distributed import Trainee, World
from comptlib.family import family_of
from comptlib.io import atomic_write
from comptlib.ledger import count_flops
from comptlib.precision import Precision, usable
from comptlib.stage import _optimizer
from comptlib.transferer import FeatureMSE, freeze

PEAK_BF16_TFLOPS = {  # dense bf16 tensor-core peaks (no sparsity), by a substring of the device name
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
    "4090": 165.0,
}
RESULTS = Path(__file__).parent / "results" / "gpu_check.json"


def peak_tflops(name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


# -- the two stages -------------------------------------------------------------
def vit_stage(smoke: bool) -> dict[str, Any]:
    from comptlib.families.vit import build_vit

    if smoke:
        size, patch, batch, (small, big) = 32, 8, 4, ((32, 2, 2), (64, 2, 4))
    else:
        size, patch, batch, (small, big) = 224, 16, 128, ((384, 12, 6), (768, 12, 12))

    def model(dims):
        width, depth, heads = dims
        return build_vit(
            width, depth, num_heads=heads, mlp_dim=4 * width, image_size=size, patch_size=patch, num_classes=1000
        )

    def batches(device: torch.device) -> Callable[[], Any]:
        images = torch.randn(batch, 3, size, size, device=device)
        labels = torch.randint(0, 1000, (batch,), device=device)
        return lambda: (images, labels)

    return {"teacher": model(small), "student": model(big), "batches": batches, "batch": batch}


def llama_stage(smoke: bool) -> dict[str, Any]:
    from comptlib.families.decoder_lm import build_llama

    if smoke:
        seq, batch, vocab, small, big = 32, 2, 256, (64, 2, 4, 176), (128, 2, 8, 352)
    else:
        seq, batch, vocab, small, big = 1024, 8, 32000, (768, 12, 12, 2048), (1024, 24, 16, 3072)

    def model(dims):
        width, depth, heads, mlp = dims
        return build_llama(
            width, depth, num_heads=heads, intermediate_size=mlp, vocab_size=vocab, max_position_embeddings=seq
        )

    def batches(device: torch.device) -> Callable[[], Any]:
        ids = torch.randint(0, vocab, (batch, seq), device=device)
        mask = torch.ones_like(ids)
        return lambda: {"input_ids": ids, "attention_mask": mask}

    return {"teacher": model(small), "student": model(big), "batches": batches, "batch": batch}


STAGES = {"vit-b": vit_stage, "llama-350m": llama_stage}


# -- measuring one stage -------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    name: str, smoke: bool, compile: bool, steps: int, warmup: int, device: torch.device, precision: str
) -> dict[str, Any]:
    """Time ``steps`` training steps of one stage, with and without its teacher; one result row."""
    torch.manual_seed(0)
    spec = STAGES[name](smoke)
    teacher, student = spec["teacher"].to(device), spec["student"].to(device)
    family = family_of(student)
    grower = family.grower("exact")
    freeze(teacher)
    grower.grow(teacher, student)
    fmap = grower.feature_map(teacher, student)
    transfer = FeatureMSE().to(device)  # the paper's transfer: the teacher's forward is what is measured
    next_batch = spec["batches"](device)
    batch = next_batch()
    with torch.no_grad():
        transfer.setup(family.forward(student, batch), family.forward(teacher, batch), fmap)
    amp = Precision(precision, None, device)
    trainee = Trainee(student, family.forward, World(), device, compile=compile)
    params = trainee.parameters() + list(transfer.parameters())
    opt = _optimizer(params, 1e-4, 0.05, (0.9, 0.95))

    def step(with_teacher: bool, eager: bool = False) -> None:
        batch = next_batch()
        t_out = None
        if with_teacher:
            with torch.inference_mode(), amp.teacher_autocast():
                t_out = usable(family.forward(teacher, batch))
        with amp.autocast():
            out = trainee(batch, eager=eager)
            loss = out.loss + transfer(out, t_out, 0, 1) if with_teacher else out.loss
        amp.backward(loss)
        amp.unscale(opt)
        trainee.clip_grad_norm_(params, 1.0)
        amp.step(opt)
        opt.zero_grad(set_to_none=True)

    with count_flops() as student_flops:  # eager: the counter sees every kernel
        with amp.autocast():
            trainee(batch, eager=True).loss.backward()
    opt.zero_grad(set_to_none=True)
    with count_flops() as teacher_flops, torch.inference_mode(), amp.teacher_autocast():
        family.forward(teacher, batch)
    flops = {"student": student_flops.get_total_flops(), "teacher": teacher_flops.get_total_flops()}

    timings: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for with_teacher in (True, False):
        started = time.perf_counter()
        for _ in range(warmup):  # compilation (both graphs) and allocator warm-up
            step(with_teacher)
        _sync(device)
        compile_s = time.perf_counter() - started
        times = []
        for _ in range(steps):
            started = time.perf_counter()
            step(with_teacher)
            _sync(device)
            times.append(time.perf_counter() - started)
        key = "with_teacher" if with_teacher else "student_only"
        timings[key] = statistics.median(times)
        timings[f"{key}_warmup_s"] = compile_s
        if with_teacher and device.type == "cuda":
            timings["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30

    total_flops = flops["student"] + flops["teacher"]
    peak = peak_tflops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    step_s = timings["with_teacher"]
    row = {
        "stage": name,
        "compile": compile,
        "precision": precision,
        "student_params_m": sum(p.numel() for p in student.parameters()) / 1e6,
        "teacher_params_m": sum(p.numel() for p in teacher.parameters()) / 1e6,
        "batch": spec["batch"],
        "step_s": step_s,
        "samples_per_s": spec["batch"] / step_s,
        "student_only_samples_per_s": spec["batch"] / timings["student_only"],
        "tflops_per_s": total_flops / step_s / 1e12,
        "mfu": total_flops / step_s / (peak * 1e12) if peak else None,
        "peak_memory_gib": timings.get("peak_memory_gib"),
        "teacher_overhead": 1.0 - timings["student_only"] / step_s,
        "teacher_flops_share": flops["teacher"] / total_flops,
        "warmup_s": timings["with_teacher_warmup_s"] + timings["student_only_warmup_s"],
    }
    return row


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[dict[str, Any]]) -> str:
    head = "| stage | compile | samples/s | TFLOP/s | MFU | peak mem (GiB) | teacher overhead | teacher FLOPs share |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['stage']} ({r['student_params_m']:.0f}M) | {r['compile']} | {r['samples_per_s']:.1f} "
            f"| {r['tflops_per_s']:.1f} | {_fmt(r['mfu'], '.1%')} | {_fmt(r['peak_memory_gib'], '.1f')} "
            f"| {r['teacher_overhead']:.1%} | {r['teacher_flops_share']:.1%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated: " + ", ".join(STAGES))
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    parser.add_argument("--compile", default="off,on", help="off, on, or off,on")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny models on the CPU, eager: does it run?")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        parser.error("no CUDA device: this check is for a GPU (use --cpu-smoke to exercise it on the CPU)")
    device = torch.device("cpu" if smoke else "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    compiles = [c == "on" for c in args.compile.split(",")]
    rows = []
    for name in args.stages.split(","):
        for compile in compiles:
            rows.append(measure(name, smoke, compile, args.steps, args.warmup, device, "bf16"))
            gc.collect()  # the stage's models and optimiser go before the next one is built
            if device.type == "cuda":
                torch.cuda.empty_cache()
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    name = "cpu (smoke)" if smoke else torch.cuda.get_device_name(device)
    result = {
        "device": name,
        "peak_bf16_tflops": None if smoke else peak_tflops(name),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "rows": rows,
    }
    print(f"\n{name}, torch {torch.__version__}\n\n{table(rows)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
    print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
