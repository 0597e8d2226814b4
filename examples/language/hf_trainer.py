"""Grow a Llama with comptlib, then train it with Hugging Face's Trainer and inverse distillation from its source.

1. Train a small byte-level Llama (32x2) on CPython stdlib source with a plain
   ``transformers.Trainer``.
2. Grow it exactly into a 64x3 Llama with :func:`comptlib.grow`: same held-out
   bits per byte.
3. Train the grown model with
   :class:`comptlib.integrations.transformers.DistillationTrainer`: the same
   Trainer, whose loss adds the decoder-LM family's default transferer (logit
   KL from the frozen source, weight decaying linearly to 0), for the paper's
   shorter budget (56 steps against 300).

Everything runs offline (``report_to=[]``, a temporary output folder). Run
``python examples/language/hf_trainer.py`` (a few minutes on 2 shared CPU
cores); ``--smoke`` checks it in seconds. Measured on 2 shared CPU cores on
2026-12-01 (the Trainer's own log lines left out)::

    Trainer, llama-32x2, 300 steps: 3.314 bits/byte held out
    comptlib.grow -> llama-64x3 (exact): 3.314 bits/byte held out
    DistillationTrainer, LogitKL(weight=1.0, schedule='linear', decay_steps=None, temperature=1.0) from llama-32x2, 56 steps: 3.221 bits/byte held out (train loss 2.151, transfer loss 0.0381 -> 0.0046)

The grown model starts at its source's bits per byte and improves on them in
56 steps; the KL to the source, 0 right after exact growth, stays small as
its weight decays.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # on shared cores, spinning OpenMP threads slow steps up to 30x

import torch
from transformers import Trainer, TrainingArguments, default_data_collator

import comptlib
from comptlib.data import text_loaders
from comptlib.families.decoder_lm import build_llama, evaluate_lm
from comptlib.integrations.transformers import DistillationTrainer

CPU = torch.device("cpu")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source-steps", type=int, default=300, help="Trainer steps of the small model")
    parser.add_argument("--grown-steps", type=int, default=56, help="DistillationTrainer steps of the grown model")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="4 + 2 steps of 8, 2 held-out batches: seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.source_steps, args.grown_steps, args.batch_size = 4, 2, 8
    return args


def collate(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """What a plain Trainer feeds a causal LM: ``labels``, padding ignored (it drops ``num_bytes``, not an argument)."""
    batch = default_data_collator(rows)
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return batch


def training_args(out: str, steps: int, args: argparse.Namespace) -> TrainingArguments:
    return TrainingArguments(
        output_dir=out,
        max_steps=steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_steps=max(steps // 20, 1),
        lr_scheduler_type="cosine",
        logging_steps=max(steps // 4, 1),
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_drop_last=True,
        use_cpu=True,
        seed=args.seed,
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    train, val = text_loaders(args.batch_size, seed=args.seed)
    if args.smoke:
        val = list(itertools.islice(val, 2))

    def bits(model: torch.nn.Module) -> float:
        return evaluate_lm(model, val, CPU)["bits_per_byte"]

    small = build_llama(32, 2)
    with tempfile.TemporaryDirectory() as out:
        Trainer(
            small, training_args(out, args.source_steps, args), train_dataset=train.dataset, data_collator=collate
        ).train()
        source = bits(small)
        print(f"Trainer, llama-32x2, {args.source_steps} steps: {source:.3f} bits/byte held out")

        large = comptlib.grow(small, build_llama(64, 3))
        grown = bits(large)
        print(f"comptlib.grow -> llama-64x3 (exact): {grown:.3f} bits/byte held out")

        trainer = DistillationTrainer(
            large,
            training_args(out, args.grown_steps, args),
            train_dataset=train.dataset,
            data_collator=collate,
            teacher=small,
        )
        logs = trainer.train()
        distilled = bits(large)
        transfer = [entry["transfer_loss"] for entry in trainer.state.log_history if "transfer_loss" in entry]
        print(
            f"DistillationTrainer, {trainer.transferer!r} from llama-32x2, {args.grown_steps} steps: "
            f"{distilled:.3f} bits/byte held out (train loss {logs.training_loss:.3f}, "
            f"transfer loss {transfer[0]:.4f} -> {transfer[-1]:.4f})"
        )
    return {"source": source, "grown": grown, "distilled": distilled, "transfer_loss": transfer}


if __name__ == "__main__":
    main()
