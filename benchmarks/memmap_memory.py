"""Peak memory of training batches from a token file read by offset, against the corpus held in memory.

Run from the repository root::

    .venv/bin/python -m benchmarks.memmap_memory                 # a 300 MB token file, about a minute
    .venv/bin/python -m benchmarks.memmap_memory --tokens 20_000_000 --batches 200   # a quick look

It generates a token file of ``--tokens`` random uint16 ids (nanoGPT's
``.bin``, with comptlib's ``.bytes`` and ``.json`` beside it) in a temporary
folder, then, each in a fresh process, draws ``--batches`` shuffled batches of
32 windows of 256 tokens two ways:

- ``memmap``: :func:`comptlib.text.lm_loaders` on the file, every window read
  by offset;
- ``in memory``: today's byte-level path, :func:`comptlib.data.text_loaders`'
  windows (``comptlib.data._windows``) over the whole token stream loaded as
  a tensor.

It prints each side's peak resident memory (``ru_maxrss``) above the process
after its imports, and the time per batch. Measured on 2 shared CPU cores on
2026-12-02::

    token file: 150,000,000 uint16 tokens, 286 MB (+ 143 MB of byte counts)
    loader       peak RSS above imports    setup  per batch
    memmap                        90 MB     0.0s     7.25ms
    memory                     3,471 MB     9.0s     1.22ms

``docs/how-to/own-data.md`` reads the result.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SEQ_LEN, BATCH = 256, 32


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kB


def generate(path: Path, tokens: int, chunk: int = 10_000_000) -> None:
    """A token file of random ids (vocabulary 50,257, EOS 0), written a chunk at a time."""
    rng = np.random.default_rng(0)
    with open(path, "wb") as ids, open(f"{path}.bytes", "wb") as counts:
        for start in range(0, tokens, chunk):
            n = min(chunk, tokens - start)
            rng.integers(0, 50_257, n, dtype=np.uint16).tofile(ids)
            rng.integers(1, 8, n, dtype=np.uint8).tofile(counts)
    meta = {"dtype": "uint16", "num_tokens": tokens, "num_bytes": 4 * tokens, "vocab_size": 50_257, "eos_id": 0}
    Path(f"{path}.json").write_text(json.dumps(meta))


def measure(mode: str, path: Path, batches: int) -> dict[str, float]:
    """One side, in this process: peak resident memory above the imports, and seconds per batch."""
    import torch
    from torch.utils.data import DataLoader

    from comptlib.data import _windows
    from comptlib.text import lm_loaders

    base = _peak_mb()
    start = time.perf_counter()
    if mode == "memmap":
        train, _ = lm_loaders(path, batch_size=BATCH, seq_len=SEQ_LEN)
    else:
        ids = torch.from_numpy(np.fromfile(path, dtype=np.uint16).astype(np.int64))
        train = DataLoader(_windows(ids, SEQ_LEN, pad_tail=False), BATCH, shuffle=True, drop_last=True)
    ready = time.perf_counter()
    for _, batch in zip(range(batches), train):
        assert batch["input_ids"].shape == (BATCH, SEQ_LEN)
    return {
        "peak_mb": _peak_mb() - base,
        "setup_s": ready - start,
        "ms_per_batch": 1000 * (time.perf_counter() - ready) / batches,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=lambda v: int(v.replace("_", "")), default=150_000_000)
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child[0], Path(args.child[1]), args.batches)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.bin"
        generate(path, args.tokens)
        size = path.stat().st_size / 2**20
        print(f"token file: {args.tokens:,} uint16 tokens, {size:,.0f} MB (+ {size / 2:,.0f} MB of byte counts)")
        print(f"{'loader':10} {'peak RSS above imports':>24} {'setup':>8} {'per batch':>10}")
        for mode in ("memmap", "memory"):
            cmd = [sys.executable, "-m", "benchmarks.memmap_memory", "--batches", str(args.batches)]
            out = subprocess.run([*cmd, "--child", mode, str(path)], check=True, capture_output=True, text=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"{mode:10} {result['peak_mb']:>21,.0f} MB {result['setup_s']:>7.1f}s {result['ms_per_batch']:>8.2f}ms"
            )


if __name__ == "__main__":
    main()
