"""Width operators: index maps for heads and the residual stream, norms."""

from __future__ import annotations

import math

import torch


def mean_rows(rows: torch.Tensor, total: int) -> torch.Tensor:
    """``rows`` (d, ...) extended to ``total`` rows, each new row the mean of the old.

    Applied to every layer that writes the residual stream, it keeps new
    residual dims equal to the mean of the old ones (LEMON's mean-fill), which
    LayerNorm then maps to zero.
    """
    d = rows.shape[0]
    if total < d:
        raise ValueError(f"cannot shrink {d} rows to {total}")
    extra = rows.mean(dim=0, keepdim=True).expand(total - d, *rows.shape[1:])
    return torch.cat([rows, extra], dim=0)


def norm_scale(old: int, new: int) -> float:
    """Factor for a norm's gamma on the old dims when the normalised width grows ``old -> new``.

    Mean-filling (LayerNorm) or zero-filling (RMSNorm) the new dims shrinks the
    variance by ``old/new``; scaling gamma by ``sqrt(old/new)`` (and eps by
    ``old/new``) undoes it exactly.
    """
    return math.sqrt(old / new)
