"""Attention-head operators: where source heads and head dims go in a wider target.

Grouped-query attention (Hugging Face ``repeat_kv``) gives kv head ``j`` to
query heads ``j*g ... (j+1)*g - 1``; RoPE rotates dim ``k`` of a head together
with dim ``k + head_dim/2`` at frequency ``k``. A placement must respect both
so that every source attention logit reappears unchanged in the target.
"""

from __future__ import annotations

import math

import torch


def head_dims(heads: torch.Tensor, dims: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Flat positions of the in-head ``dims`` of each head in ``heads``, for ``head_dim`` dims per head.

    Indexes the output rows of a Q/K/V projection (or the input columns of the
    output projection), head by head.
    """
    return (heads[:, None] * head_dim + dims[None, :]).reshape(-1)


def gqa_placement(
    q_heads: int, kv_heads: int, new_q_heads: int, new_kv_heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Place source query and kv heads so each query head keeps its kv head.

    Returns ``(q_pos, kv_src)``: ``q_pos[i]`` is the target query head of
    source query head ``i``; ``kv_src[t]`` is the source kv head that target
    kv head ``t`` copies, or ``-1`` for a new one. When the group size shrinks
    (``g' < g``), each source kv head is copied into ``ceil(g/g')`` target kv
    heads, so that its ``g`` query heads still fit in groups of ``g'``.
    Raises ValueError, naming ``num_key_value_heads``, when they do not fit.
    """
    for q, kv in ((q_heads, kv_heads), (new_q_heads, new_kv_heads)):
        if kv < 1 or q % kv:
            raise ValueError(f"num_attention_heads {q} is not a multiple of num_key_value_heads {kv}")
    group, new_group = q_heads // kv_heads, new_q_heads // new_kv_heads
    copies = math.ceil(group / new_group)
    if kv_heads * copies > new_kv_heads:
        raise ValueError(
            f"num_key_value_heads {kv_heads} -> {new_kv_heads}: with groups of {group} -> {new_group} query heads, "
            f"each source kv head needs {copies} target kv heads ({kv_heads * copies} in all)"
        )
    source = torch.arange(q_heads)
    kv_pos = (source // group) * copies + (source % group) // new_group
    q_pos = kv_pos * new_group + (source % group) % new_group
    kv_src = torch.full((new_kv_heads,), -1, dtype=torch.long)
    kv_src[: kv_heads * copies] = torch.arange(kv_heads).repeat_interleave(copies)
    return q_pos, kv_src


def rope_dim_map(freqs: torch.Tensor, new_freqs: torch.Tensor) -> torch.Tensor:
    """In-head target position of each source head dim under RoPE, matching rotation frequencies.

    ``freqs`` and ``new_freqs`` are the rotary ``inv_freq`` of source and target
    (``head_dim / 2`` each). Source pair ``(k, k + h/2)`` goes to target pair
    ``(k', k' + H/2)`` where ``new_freqs[k']`` is nearest to ``freqs[k]`` in
    log scale. With default RoPE and an integer head_dim ratio ``r`` that is
    ``k' = r k`` with identical frequencies, so the placement is exact; check
    with :func:`rope_mismatch`. Raises ValueError if two pairs would collide.
    """
    half, new_half = freqs.numel(), new_freqs.numel()
    if new_half < half:
        raise ValueError(f"head_dim cannot shrink ({2 * half} -> {2 * new_half})")
    match = (freqs.double().log()[:, None] - new_freqs.double().log()[None, :]).abs().argmin(dim=1)
    if match.unique().numel() != half:
        raise ValueError("head_dim: two source RoPE frequencies map to the same target frequency")
    return torch.cat([match, match + new_half])


def rope_mismatch(freqs: torch.Tensor, new_freqs: torch.Tensor, dim_map: torch.Tensor) -> float:
    """Largest relative frequency error of a :func:`rope_dim_map` placement (0 when exact)."""
    placed = new_freqs[dim_map[: freqs.numel()]]
    return ((placed.double() - freqs.double()).abs() / freqs.double().abs()).max().item()


def shared_placement(
    q_heads: int, kv_heads: int, new_q_heads: int, new_kv_heads: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An approximate placement for target groups too small for their source group: query heads share.

    For public ladders whose head count falls as head_dim rises (Qwen2.5
    0.5B -> 1.5B: 14 heads of 64 -> 12 of 128). Source kv head ``j`` goes to
    target kv head ``j``; its ``g`` query heads go in order to the ``g'``
    target query heads of that group, as evenly as possible, so that
    ``ceil(g/g')`` share a target head at most. Returns ``(q_pos, slot,
    kv_src)``: ``slot[i]`` is source head ``i``'s place among the heads
    sharing its target head, ``kv_src`` as in :func:`gqa_placement`.
    """
    for q, kv in ((q_heads, kv_heads), (new_q_heads, new_kv_heads)):
        if kv < 1 or q % kv:
            raise ValueError(f"num_attention_heads {q} is not a multiple of num_key_value_heads {kv}")
    if new_kv_heads < kv_heads:
        raise ValueError(f"num_key_value_heads shrinks: {kv_heads} -> {new_kv_heads}")
    group, new_group = q_heads // kv_heads, new_q_heads // new_kv_heads
    rank = torch.arange(q_heads) % group
    within = rank * new_group // group
    first = {int(w): int(r) for r, w in reversed(list(zip(rank, within)))}  # the first rank of each target head
    slot = rank - torch.tensor([first[int(w)] for w in within], dtype=torch.long)
    q_pos = (torch.arange(q_heads) // group) * new_group + within
    kv_src = torch.full((new_kv_heads,), -1, dtype=torch.long)
    kv_src[:kv_heads] = torch.arange(kv_heads)
    return q_pos, slot, kv_src


def slot_dim_maps(head_dim: int, new_head_dim: int, first: torch.Tensor | None = None) -> list[torch.Tensor]:
    """In-head target positions for each of the ``new_head_dim // head_dim`` source heads sharing a target head.

    Without RoPE, slot ``s`` takes dims ``s*h ... (s+1)*h - 1``. Under RoPE
    pass ``first``, the :func:`rope_dim_map` of slot 0 (exact frequencies);
    the other slots take the remaining rotation pairs, interleaved, so slot
    ``s`` of a doubled head_dim rotates at the frequency between two of the
    source's: the approximation :meth:`~comptlib.Grower.check` measures.
    """
    slots = new_head_dim // head_dim
    if first is None:
        return [torch.arange(head_dim) + s * head_dim for s in range(slots)]
    half, new_half = head_dim // 2, new_head_dim // 2
    used = torch.zeros(new_half, dtype=torch.bool)
    used[first[:half]] = True
    free = torch.nonzero(~used).flatten()
    extra = free.numel() // half
    maps = [first]
    for s in range(extra):
        pairs = free[s::extra][:half]
        maps.append(torch.cat([pairs, pairs + new_half]))
    return maps
