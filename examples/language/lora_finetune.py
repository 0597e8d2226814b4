"""Grow a trained small Llama into a larger one, then LoRA-fine-tune the grown model on code it never saw.

1. Pre-train a small byte-level Llama on CPython stdlib source (the first
   ``--max-bytes`` in sorted path order, which stop long before ``xml/``).
2. Grow it exactly into a larger Llama: the grown model starts with the small
   one's function, so its bits per byte are the same.
3. Fine-tune the grown model with LoRA (peft) on the stdlib ``xml`` package,
   held out from pre-training, and score the last quarter of it before and after.
4. ``merge_and_unload()`` folds the adapters in and gives back a plain
   ``LlamaForCausalLM``, which saves with ``save_pretrained`` and reloads with
   ``AutoModelForCausalLM``.

LoRA targets o_proj and down_proj besides q_proj and v_proj: exact growth
gives the new heads and MLP units zero output weights, so adapters on
q_proj/v_proj alone could never switch the grown capacity on.

Run ``python examples/language/lora_finetune.py`` (a few minutes); ``--smoke``
checks it in seconds. Measured on 2 shared CPU cores on 2026-11-27::

    pre-trained d64-L2 for 300 steps: 2.937 bits/byte on held-out stdlib, 2.776 on held-out xml/
    grown exactly to d128-L3: 2.776 bits/byte on held-out xml/
    LoRA r=8 on q_proj, v_proj, o_proj, down_proj: 29,952 of 665,728 parameters, 100 steps, loss 1.894 -> 1.683: 2.637 bits/byte on held-out xml/
    merge_and_unload() -> LlamaForCausalLM, saved and reloaded with AutoModelForCausalLM -> LlamaForCausalLM: 2.637 bits/byte on held-out xml/
"""

from __future__ import annotations

import argparse
import itertools
import os
import sysconfig
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # on shared cores, spinning OpenMP threads slow steps up to 30x

import torch
from torch import nn
from transformers import AutoModelForCausalLM

import comptlib
from comptlib import Chain
from comptlib.data import DEFAULT_TEXT_BYTES, text_loaders
from comptlib.families.decoder_lm import build_llama, evaluate_lm, lm_forward

SMALL, LARGE = (64, 2), (128, 3)
"""(hidden size, layers) of the pre-trained model and of the model it grows into."""
TARGETS = ["q_proj", "v_proj", "o_proj", "down_proj"]
FINETUNE_SOURCE = Path(sysconfig.get_paths()["stdlib"]) / "xml"
CPU = torch.device("cpu")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--finetune-steps", type=int, default=100)
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (alpha is twice the rank)")
    parser.add_argument("--lr", type=float, default=2e-3, help="fine-tuning learning rate")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--max-bytes", type=int, default=DEFAULT_TEXT_BYTES, help="bytes of stdlib to pre-train on")
    parser.add_argument("--finetune-bytes", type=int, default=None, help="bytes of xml/ to use (default: all, ~300 kB)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny budgets: checks the script in seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.pretrain_steps, args.finetune_steps, args.max_bytes, args.finetune_bytes = 5, 3, 100_000, 40_000
        args.batch_size, args.seq_len = 8, 64
    return args


def bits_per_byte(model: nn.Module, loader: Iterable[dict[str, torch.Tensor]]) -> float:
    """Held-out bits per byte: comparable across model sizes and before/after fine-tuning."""
    return evaluate_lm(model, loader, CPU)["bits_per_byte"]


def finetune(model: nn.Module, loader: Iterable[dict[str, torch.Tensor]], steps: int, lr: float) -> list[float]:
    """AdamW on the trainable parameters only (the adapters); returns the training losses."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for batch in itertools.islice(itertools.cycle(loader), steps):
        loss = lm_forward(model, batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:  # an optional extra: fail before pre-training, not after
        from peft import LoraConfig, get_peft_model
    except ModuleNotFoundError:
        raise SystemExit("this example fine-tunes with peft: pip install 'comptlib[lora]'") from None
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    loaders = {"batch_size": args.batch_size, "seq_len": args.seq_len, "seed": args.seed}
    pre_train, pre_val = text_loaders(max_bytes=args.max_bytes, **loaders)
    ft_train, ft_val = text_loaders(source=FINETUNE_SOURCE, max_bytes=args.finetune_bytes, val_fraction=0.25, **loaders)

    chain = Chain([build_llama(*SMALL)], budgets=[args.pretrain_steps], unit="steps", lr=3e-3, progress=False)
    small = chain.fit(pre_train).models_[0]
    print(
        f"pre-trained d{SMALL[0]}-L{SMALL[1]} for {args.pretrain_steps} steps: "
        f"{bits_per_byte(small, pre_val):.3f} bits/byte on held-out stdlib, "
        f"{bits_per_byte(small, ft_val):.3f} on held-out xml/"
    )
    large = comptlib.grow(small, build_llama(*LARGE), method="exact")
    print(f"grown exactly to d{LARGE[0]}-L{LARGE[1]}: {bits_per_byte(large, ft_val):.3f} bits/byte on held-out xml/")

    config = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, target_modules=TARGETS)
    model = get_peft_model(large, config)
    trainable, total = model.get_nb_trainable_parameters()
    losses = finetune(model, ft_train, args.finetune_steps, args.lr)
    print(
        f"LoRA r={args.rank} on {', '.join(TARGETS)}: {trainable:,} of {total:,} parameters, "
        f"{len(losses)} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}: "
        f"{bits_per_byte(model, ft_val):.3f} bits/byte on held-out xml/"
    )

    merged = model.merge_and_unload()
    with tempfile.TemporaryDirectory() as folder:
        merged.save_pretrained(folder)
        reloaded = AutoModelForCausalLM.from_pretrained(folder)
    print(
        f"merge_and_unload() -> {type(merged).__name__}, saved and reloaded with AutoModelForCausalLM -> "
        f"{type(reloaded).__name__}: {bits_per_byte(reloaded, ft_val):.3f} bits/byte on held-out xml/"
    )


if __name__ == "__main__":
    main()
