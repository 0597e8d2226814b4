"""Depth operators: where source blocks go in a deeper target."""

from __future__ import annotations


def _check(src: int, dst: int) -> None:
    if src < 1 or dst < src:
        raise ValueError(f"depth can only grow: {src} -> {dst} layers")


def exact_depth_map(src: int, dst: int) -> list[int | None]:
    """For each target block, the source block it copies, or ``None`` for an identity block.

    Source block ``l`` goes to ``floor(l * dst / src)``; the blocks between are
    new and must be made identities (zero residual writers). For ``dst = 2 src``
    every source block is followed by one identity block.
    """
    _check(src, dst)
    out: list[int | None] = [None] * dst
    for layer in range(src):
        out[layer * dst // src] = layer
    return out


def compt_depth_map(src: int, dst: int) -> list[int]:
    """For each target block, the source block it duplicates (CoM-PT's rule, generalised).

    Target block ``j`` copies source block ``floor(j * src / dst)``: for
    ``dst = 2 src`` that is the paper's ``l -> 2l, 2l+1``; for other ratios
    each source block is repeated once or more, in order.
    """
    _check(src, dst)
    return [j * src // dst for j in range(dst)]


def stack_depth_map(src: int, dst: int) -> list[int]:
    """G_stack: target block ``j`` copies source block ``j % src`` (the whole stack, repeated)."""
    _check(src, dst)
    return [j % src for j in range(dst)]
