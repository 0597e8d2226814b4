"""Growth arithmetic of pre-norm transformers, shared by every transformer family.

A transformer's residual stream of width ``d`` grows to width ``D`` by one of
three rules (:class:`ResidualStream`): mean-fill ``[x, mean(x), ...]`` under
LayerNorm (LEMON), zero-fill ``[x, 0]`` under RMSNorm, or tiling
``[x, x, ...]`` (HyperCloning) where a norm writes the stream itself (CLIP's
``pre_layrnorm``). Every tensor then falls in one role: a norm
(:func:`grow_norm`), a reader of the stream (:func:`grow_reader`), a writer
into it (:func:`grow_writer`, :func:`grow_embedding`), or part of a new block
that must be the identity (:func:`identity_block`). :func:`head_plan` places
attention heads; :func:`compt_copy` is CoM-PT's warm start.

The functions write through a :class:`~comptlib.ops.Writer`, which adds the
grower's symmetry-breaking noise where its method allows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import attrs
import torch
from torch import nn

from comptlib.ops.canvas import Canvas, Writer
from comptlib.ops.heads import gqa_placement, head_dims, shared_placement, slot_dim_maps
from comptlib.ops.width import mean_rows, norm_scale

Fill = Literal["mean", "zero", "tile"]
FILLS: tuple[str, ...] = ("mean", "zero", "tile")


@attrs.frozen
class Proj:
    """A linear map as an ``(out, in)`` weight and a bias, whatever its storage.

    GPT-2's ``Conv1D`` stores ``(in, out)`` and timm and torchvision pack Q, K
    and V in one tensor; these are views, so writing into them writes the
    parameters.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None

    @classmethod
    def of(cls, module: nn.Module) -> Proj:
        """An ``nn.Linear`` (or anything with an ``(out, in)`` weight and a bias)."""
        return cls(module.weight, module.bias)

    @classmethod
    def transposed(cls, module: nn.Module) -> Proj:
        """A module storing its weight as ``(in, out)``, like Hugging Face's ``Conv1D``."""
        return cls(module.weight.T, module.bias)

    @classmethod
    def packed(cls, weight: torch.Tensor, bias: torch.Tensor | None, parts: int = 3) -> tuple[Proj, ...]:
        """The ``parts`` projections packed along the output rows of one ``(out, in)`` weight (Q, K, V)."""
        biases = bias.chunk(parts) if bias is not None else (None,) * parts
        return tuple(cls(w, b) for w, b in zip(weight.chunk(parts), biases))


@attrs.frozen
class ResidualStream:
    """Where a source residual stream of width ``d`` sits in a target stream of width ``big``.

    ``fill`` is the rule for the new dims: ``"mean"`` keeps ``[x, mean(x), ...]``
    (a LayerNorm then outputs ``[LN(x), 0]``), ``"zero"`` keeps ``[x, 0]`` (an
    RMSNorm then outputs ``[RMSNorm(x), 0]``), ``"tile"`` keeps ``[x, x, ..., x]``
    with copy ``c`` at dims ``c*d ... (c+1)*d - 1`` (every norm's statistics
    unchanged; needs ``big`` a multiple of ``d``).
    """

    d: int
    big: int
    fill: Fill = attrs.field(validator=attrs.validators.in_(FILLS))

    def __attrs_post_init__(self) -> None:
        if self.big < self.d:
            raise ValueError(f"the residual stream cannot shrink: {self.d} -> {self.big}")
        if self.tile and self.big % self.d:
            raise ValueError(f"tiling needs an integer width ratio, got {self.d} -> {self.big}")

    @property
    def tile(self) -> bool:
        return self.fill == "tile"

    @property
    def copies(self) -> int:
        return self.big // self.d

    @property
    def eps_scale(self) -> float:
        """Mean- and zero-fill shrink the variance by ``d/big``, tiling keeps it."""
        return 1.0 if self.tile else self.d / self.big

    def scale_eps(self, eps: float) -> float:
        """A norm's eps for the grown width (``eps * d / big``, or ``eps`` when tiled)."""
        return eps if self.tile else eps * self.d / self.big

    def rows(self, rows: torch.Tensor) -> torch.Tensor:
        """A residual writer's ``(d, ...)`` rows as the target's ``(big, ...)``."""
        if self.tile:
            return rows.repeat(self.copies, *(1,) * (rows.dim() - 1))
        if self.fill == "mean":
            return mean_rows(rows, self.big)
        return torch.cat([rows, rows.new_zeros(self.big - rows.shape[0], *rows.shape[1:])])

    def put_rows(self, canvas: Canvas, values: torch.Tensor, axis: int = 0) -> None:
        """Put a residual writer's ``values`` (``d`` long on ``axis``) and the fill of the new dims into ``canvas``.

        What :meth:`rows` gives, written straight into the leading corner of
        the other axes, without building the grown tensor first.
        """
        axis %= values.dim()

        def at(span: slice) -> tuple[slice, ...]:
            return tuple(span if i == axis else slice(0, n) for i, n in enumerate(values.shape))

        if self.tile:
            for c in range(self.copies):
                canvas.put(at(slice(c * self.d, (c + 1) * self.d)), values)
            return
        canvas.put(at(slice(0, self.d)), values)
        fill = values.mean(dim=axis, keepdim=True) if self.fill == "mean" else 0.0
        canvas.put(at(slice(self.d, self.big)), fill)

    def read(self, weight: torch.Tensor, writer: Writer) -> tuple[torch.Tensor, torch.Tensor]:
        """A residual reader's ``(out, d)`` weight as target input columns and their values.

        Mean- and zero-fill write the old columns only: the others read the
        zeros a norm outputs on new dims, so they are free. Tiling spreads
        ``W`` over the ``k`` copies as ``W/k`` each, plus the writer's noise
        made to sum to 0 over the copies (so they can drift apart in training).
        """
        if not self.tile:
            return torch.arange(self.d), weight
        share = weight / self.copies
        blocks = share.expand(self.copies, *share.shape)
        if writer.noise:
            eps = torch.randn(blocks.shape, generator=writer.gen) * (writer.noise * share.float().std().item())
            eps = eps.to(torch.promote_types(eps.dtype, share.dtype))  # a float64 stream cancels in float64
            blocks = blocks + (eps - eps.mean(0)).to(share)
        return torch.arange(self.big), blocks.permute(1, 0, 2).reshape(weight.shape[0], self.big)


def grow_norm(
    src: nn.Module,
    tgt: nn.Module,
    stream: ResidualStream,
    writer: Writer,
    *,
    writes_residual: bool = False,
    eps_attr: str | None = "eps",
) -> None:
    """A LayerNorm or RMSNorm over the grown stream.

    Tiling tiles gamma and beta. Otherwise the old gammas are scaled by
    ``sqrt(d/D)`` (new gammas are free: they scale zeros) and new betas are
    0, or the stream's fill of beta for a norm whose output *is* the residual
    stream (``writes_residual``: ConvNeXt's stem, an approximate CLIP
    ``pre_layrnorm``). ``eps_attr`` names the eps attribute to rescale
    (``None``: leave it to the caller).
    """
    gamma = Canvas(tgt.weight)
    if stream.tile:
        gamma.put(slice(None), stream.rows(src.weight))
    else:
        gamma.put(slice(0, stream.d), src.weight * norm_scale(stream.d, stream.big))
    writer(tgt.weight, gamma)
    if getattr(tgt, "bias", None) is not None:
        beta = Canvas(tgt.bias)
        if stream.tile or writes_residual:
            beta.put(slice(None), stream.rows(src.bias))
        else:
            beta.put(slice(0, stream.d), src.bias)
            beta.put(slice(stream.d, stream.big), 0.0)
        writer(tgt.bias, beta)
    if eps_attr is not None:
        setattr(tgt, eps_attr, stream.scale_eps(getattr(src, eps_attr)))


def grow_reader(
    src: Proj,
    tgt: Proj,
    stream: ResidualStream,
    writer: Writer,
    *,
    rows: torch.Tensor | None = None,
    src_rows: torch.Tensor | None = None,
    scale: float | torch.Tensor = 1.0,
    zero: torch.Tensor | None = None,
) -> None:
    """A projection reading the residual stream: source outputs ``src_rows`` go to target outputs ``rows``.

    Both default to every source output. ``scale`` (a number, or one per
    copied row) multiplies the copied weights and biases (Q absorbing a change of softmax scale); ``zero`` rows
    are zeroed (Q dims that must not add to q.k, new embedding dims). Rows of
    new units are free.
    """
    src_rows = torch.arange(src.weight.shape[0]) if src_rows is None else src_rows
    rows = src_rows if rows is None else rows
    span = _span(src_rows)
    every = isinstance(span, slice) and span == slice(0, src.weight.shape[0])
    picked = src.weight if every else src.weight[src_rows]
    if isinstance(scale, torch.Tensor):
        picked = picked * scale[:, None].to(src.weight)
    elif scale != 1.0:  # x * 1.0 is x: no copy of a large weight to get it
        picked = picked * scale
    cols, values = stream.read(picked, writer)
    weight = Canvas(tgt.weight)
    r, c = _span(rows), _span(cols)
    weight.put((r, c) if isinstance(r, slice) and isinstance(c, slice) else (rows[:, None], cols[None, :]), values)
    parts = [(tgt.weight, weight)]
    if tgt.bias is not None:
        bias = Canvas(tgt.bias)
        bias.put(rows, src.bias[src_rows] * (scale.to(src.bias) if isinstance(scale, torch.Tensor) else scale))
        parts.append((tgt.bias, bias))
    for param, canvas in parts:
        if zero is not None:
            canvas.put(zero, 0.0)
        writer(param, canvas)


def _span(index: torch.Tensor) -> slice | torch.Tensor:
    """``index`` as a slice when it is a run of consecutive positions (a copy, not a gather), else itself."""
    n = index.numel()
    if n and int(index[-1]) - int(index[0]) == n - 1 and (n == 1 or bool((index.diff() == 1).all())):
        return slice(int(index[0]), int(index[0]) + n)
    return index


def grow_writer(src: Proj, tgt: Proj, cols: torch.Tensor, stream: ResidualStream, writer: Writer) -> None:
    """A projection writing the residual stream: source inputs come from ``cols``, every other input is 0.

    New units and heads (the other columns) thus write nothing; the new rows
    follow the stream's fill rule.
    """
    old = src.weight.new_zeros(src.weight.shape[0], tgt.weight.shape[1])
    old[:, _span(cols)] = src.weight
    weight = Canvas(tgt.weight, whole=True)
    stream.put_rows(weight, old)
    writer(tgt.weight, weight)
    if tgt.bias is not None:
        bias = Canvas(tgt.bias, whole=True)
        stream.put_rows(bias, src.bias)
        writer(tgt.bias, bias)


def grow_embedding(src: torch.Tensor, tgt: torch.Tensor, stream: ResidualStream, writer: Writer, axis: int = 0) -> None:
    """An embedding (a residual writer along ``axis``: patch, class, position or token embedding).

    Target entries past the source's on the other axes (more positions) are free.
    """
    others = [n for i, n in enumerate(src.shape) if i != axis % src.dim()]
    canvas = Canvas(tgt, whole=others == [n for i, n in enumerate(tgt.shape) if i != axis % tgt.dim()])
    stream.put_rows(canvas, src, axis)
    writer(tgt, canvas)


def identity_block(
    params: Iterable[torch.Tensor], writers: Sequence[torch.Tensor], writer: Writer, *, zero_last: bool = False
) -> None:
    """A new block whose residual branches output zero: ``writers`` are zeroed, every other entry is free.

    ``zero_last`` writes every tensor with noise first and zeroes the writers
    (views allowed) afterwards, which draws noise for the writers too: the
    decoder LMs' order, kept so their grown weights stay what they were.
    Without noise the order changes nothing, and the writers are zeroed
    first, so a target without an init yet is not drawn there.
    """
    if zero_last and not writer.noise:
        for tensor in writers:
            Canvas(tensor, whole=True).put(slice(None), 0.0)
        for param in params:
            writer(param, Canvas(param))
        return
    zeroed = {id(p) for p in writers}
    for param in params:
        canvas = Canvas(param)
        if id(param) in zeroed and not zero_last:
            canvas.put(slice(None), 0.0)
        writer(param, canvas)
    if zero_last:
        for tensor in writers:
            tensor.zero_()


@attrs.frozen
class HeadPlan:
    """Where source attention dims go in the target, shared by all blocks of a stack."""

    q_rows: torch.Tensor  # target Q dims receiving source Q dims, in source order
    q_gaps: torch.Tensor  # target Q dims of placed heads that receive nothing: zero, or they add to q.k
    kv_rows: torch.Tensor  # target K/V dims receiving source K/V dims
    kv_src: torch.Tensor  # the source K/V dims they copy
    head_dim: int
    new_head_dim: int
    gain: float = 1.0  # folded into Q (RoPE attention_scaling ratio squared)
    q_share: torch.Tensor | None = None  # per Q dim: 1 / the source heads sharing its target head (approximate)


def head_plan(
    heads: tuple[int, int],
    new_heads: tuple[int, int],
    head_dim: int,
    new_head_dim: int,
    *,
    dim_map: torch.Tensor | None = None,
    gain: float = 1.0,
) -> HeadPlan:
    """Place ``(query, kv)`` heads so each query head keeps its kv head, and head dims by ``dim_map``.

    ``dim_map`` is each source head dim's in-head target position (default:
    the same position; :func:`~comptlib.ops.rope_dim_map` under RoPE).
    Raises ValueError from :func:`~comptlib.ops.gqa_placement` when the heads
    do not fit. Without GQA pass the same count twice.
    """
    q_pos, kv_src = gqa_placement(*heads, *new_heads)
    dim_map = torch.arange(head_dim) if dim_map is None else dim_map
    gaps = torch.ones(new_head_dim, dtype=torch.bool)
    gaps[dim_map] = False
    new_kv = torch.nonzero(kv_src >= 0).flatten()
    return HeadPlan(
        q_rows=head_dims(q_pos, dim_map, new_head_dim),
        q_gaps=head_dims(q_pos, torch.nonzero(gaps).flatten(), new_head_dim),
        kv_rows=head_dims(new_kv, dim_map, new_head_dim),
        kv_src=head_dims(kv_src[new_kv], torch.arange(head_dim), head_dim),
        head_dim=head_dim,
        new_head_dim=new_head_dim,
        gain=gain,
    )


def shared_head_plan(
    heads: tuple[int, int],
    new_heads: tuple[int, int],
    head_dim: int,
    new_head_dim: int,
    *,
    rope_map: torch.Tensor | None = None,
    gain: float = 1.0,
) -> HeadPlan:
    """An approximate plan: source heads that do not fit alone share a wider target head (:func:`~comptlib.ops.heads.shared_placement`).

    Each source head keeps its own dims in the shared head (slot ``s`` at
    :func:`~comptlib.ops.heads.slot_dim_maps`), the kv head of its group is
    copied into every slot, and its Q is divided by the number of heads
    sharing: the target's attention logit is their *mean* logit, and the
    output sums each head's value projection under that one attention. Heads
    alone in their target head stay exact. ``rope_map`` is slot 0's
    :func:`~comptlib.ops.rope_dim_map` under RoPE. Raises ValueError when
    more heads would share than ``new_head_dim // head_dim``.
    """
    q_pos, slot, _ = shared_placement(*heads, *new_heads)  # target kv head j copies source kv head j
    maps = slot_dim_maps(head_dim, new_head_dim, rope_map)
    shares = torch.bincount(q_pos, minlength=new_heads[0])
    if int(shares.max()) > len(maps):
        raise ValueError(
            f"num_attention_heads {heads[0]} -> {new_heads[0]}: {int(shares.max())} source heads of {head_dim} dims "
            f"would share a target head of {new_head_dim}"
        )
    q_rows = torch.cat([q_pos[i] * new_head_dim + maps[slot[i]] for i in range(heads[0])])
    gaps = torch.zeros(new_heads[0] * new_head_dim, dtype=torch.bool)
    gaps[head_dims(torch.unique(q_pos), torch.arange(new_head_dim), new_head_dim)] = True
    gaps[q_rows] = False
    group = heads[0] // heads[1]
    kv_rows, kv_dims = [], []
    for kv in range(heads[1]):
        for s in torch.unique(slot[kv * group : (kv + 1) * group]).tolist():
            kv_rows.append(kv * new_head_dim + maps[s])
            kv_dims.append(kv * head_dim + torch.arange(head_dim))
    return HeadPlan(
        q_rows=q_rows,
        q_gaps=torch.nonzero(gaps).flatten(),
        kv_rows=torch.cat(kv_rows),
        kv_src=torch.cat(kv_dims),
        head_dim=head_dim,
        new_head_dim=new_head_dim,
        gain=gain,
        q_share=(1.0 / shares[q_pos].double()).repeat_interleave(head_dim),
    )


def corner(target: torch.Tensor, source: torch.Tensor, writer: Writer, *, parts: int = 1, axis: int = 0) -> None:
    """CoM-PT's copy: ``source`` into the leading corner of ``target``; the rest keeps its init.

    With ``parts > 1`` both are split along ``axis`` first (packed Q, K, V), so
    that each part lands in its own: the teacher's K never lands in the student's Q.
    """
    pairs = [(target, source)] if parts == 1 else zip(target.chunk(parts, dim=axis), source.chunk(parts, dim=axis))
    for t_part, s_part in pairs:
        canvas = Canvas(t_part)
        canvas.put(tuple(slice(0, n) for n in s_part.shape), s_part)
        writer(t_part, canvas)


def compt_copy(
    source: nn.Module,
    target: nn.Module,
    stacks: Sequence[tuple[Sequence[nn.Module], Sequence[nn.Module], Sequence[int]]],
    writer: Writer,
    *,
    packed: Callable[[str], int | None] = lambda name: None,
    blocks_last: bool = False,
) -> None:
    """CoM-PT's warm start: every target tensor gets its source namesake's leading corner.

    ``stacks`` lists ``(source blocks, target blocks, depth map)``: target
    block ``j`` copies source block ``depth_map[j]``. ``packed(name)`` gives
    the axis along which a block parameter packs Q, K and V (``None``: not
    packed). Tensors are written in the target's parameter order, or with
    ``blocks_last`` every tensor outside the blocks first.
    """
    in_block: dict[int, tuple[str, torch.Tensor]] = {}
    for s_blocks, t_blocks, depth_map in stacks:
        for t_block, idx in zip(t_blocks, depth_map):
            s_params = dict(s_blocks[idx].named_parameters())
            for name, param in t_block.named_parameters():
                in_block[id(param)] = (name, s_params[name])
    src = dict(source.named_parameters())
    params = list(target.named_parameters())
    if blocks_last:
        params = [p for p in params if id(p[1]) not in in_block] + [p for p in params if id(p[1]) in in_block]
    for name, param in params:
        if id(param) in in_block:
            block_name, value = in_block[id(param)]
            axis = packed(block_name)
            if axis is None:
                corner(param, value, writer)
            else:
                corner(param, value, writer, parts=3, axis=axis)
        else:
            corner(param, src[name], writer)
