"""One grower for every pre-norm transformer, driven by a *role map* of the model.

A family maps its model onto :class:`Roles`: one :class:`Stack` per residual
stream (CLIP has two towers), each with its embeddings, an optional norm that
writes the stream, its :class:`Block`\\ s (norms, Q/K/V/O, MLP readers and
writer), a final norm and a head. :class:`TransformerGrower` then grows any
such model with the arithmetic of :mod:`comptlib.ops.transformer`, exactly
(``"exact"``) or with CoM-PT's warm start (``"compt"``). A family subclass
implements :meth:`TransformerGrower.roles`, :meth:`~comptlib.Grower.validate`,
and whatever is truly its own (a config entry, a head layer the map does not
cover) in :meth:`TransformerGrower.finish_exact`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence

import attrs
import torch
from torch import nn

from comptlib.grower import Grower, GrowthError
from comptlib.ops import (
    HeadPlan,
    Proj,
    ResidualStream,
    Writer,
    compt_copy,
    compt_depth_map,
    exact_depth_map,
    grow_embedding,
    grow_norm,
    grow_reader,
    grow_writer,
    head_plan,
    identity_block,
)
from comptlib.ops.transformer import Fill


@attrs.frozen
class Block:
    """The roles of one pre-norm block: ``x + o(attn(q, k, v of attn_norm(x)))``, then ``x + down(mlp(mlp_norm(x)))``."""

    layer: nn.Module  # the block module: every parameter of the block
    attn_norm: nn.Module
    q: Proj
    k: Proj
    v: Proj
    o: Proj
    mlp_norm: nn.Module
    readers: tuple[Proj, ...]  # MLP input projections (fc1; gate and up)
    down: Proj
    scaling: float  # the softmax scale of q.k (1/sqrt(head_dim), or GPT-2's per layer)


@attrs.frozen
class Embedding:
    """A residual-stream writer outside the blocks (patch, class, position or token embedding).

    ``axis`` is the tensor's residual axis; the tensor may be a view.
    """

    tensor: torch.Tensor
    axis: int = 0


@attrs.frozen
class Stack:
    """One residual stream: embeddings, blocks, final norm and the head that reads it.

    ``heads`` is ``(query heads, kv heads)``; ``fill`` the rule for new
    residual dims (:class:`~comptlib.ops.ResidualStream`); ``eps_attr`` the
    norms' eps attribute; ``pre_norm`` a norm whose output is the stream
    (CLIP's ``pre_layrnorm``, timm's ``norm_pre``); ``head`` the projection
    reading the final norm, ``None`` when tied to the token embedding;
    ``rotary`` the rotary embedding (``inv_freq``, ``attention_scaling``)
    under RoPE.
    """

    width: int
    heads: tuple[int, int]
    head_dim: int
    embeds: tuple[Embedding, ...]
    blocks: tuple[Block, ...]
    norm: nn.Module
    head: Proj | None
    fill: Fill = "mean"
    eps_attr: str = "eps"
    pre_norm: nn.Module | None = None
    rotary: nn.Module | None = None


@attrs.frozen
class Roles:
    """A model's role map: its stacks, and which block parameters pack Q, K and V (``packed(name) -> axis``)."""

    stacks: tuple[Stack, ...]
    packed: Callable[[str], int | None] = lambda name: None


class TransformerGrower(Grower):
    """Grows any pre-norm transformer described by a role map, in width, heads, MLP size and depth.

    Exact growth: every stack's residual stream is filled by its rule, each
    norm, reader and writer grown by :mod:`comptlib.ops.transformer`, source
    heads placed by :meth:`head_plan`, and new blocks made identities.
    ``"compt"`` copies every tensor into the leading corner (packed Q, K, V
    split first) and duplicates blocks by :meth:`depth_map`.
    """

    defers_init = True
    zero_writers_last: bool = False
    """Identity blocks: draw noise for the zeroed writers too (the decoder LMs' historical order)."""
    compt_blocks_last: bool = False
    """Warm start: write the tensors outside the blocks first (the decoder LMs' historical order)."""

    @abc.abstractmethod
    def roles(self, model: nn.Module) -> Roles:
        """The role map of ``model``; TypeError when it is not of this family."""

    def streams(self, source: Roles, target: Roles) -> tuple[ResidualStream, ...]:
        """Each stack's residual stream, by its fill rule."""
        return tuple(ResidualStream(s.width, t.width, t.fill) for s, t in zip(source.stacks, target.stacks))

    def head_plan(self, source: Stack, target: Stack) -> HeadPlan:
        """Where source heads go: each keeps its place and its kv head; GrowthError when they do not fit."""
        try:
            return head_plan(source.heads, target.heads, source.head_dim, target.head_dim)
        except ValueError as err:
            raise GrowthError(str(err)) from err

    def q_scale(self, source: Block, target: Block, plan: HeadPlan) -> float:
        """What Q is multiplied by so that ``q.k`` keeps its value under the target's softmax scale."""
        return source.scaling / target.scaling * plan.gain

    def depth_map(self, src: int, dst: int) -> list[int]:
        """For ``"compt"``: the source block each target block duplicates."""
        return compt_depth_map(src, dst)

    def finish_exact(
        self, source: nn.Module, target: nn.Module, streams: Sequence[ResidualStream], writer: Writer
    ) -> None:
        """What exact growth needs beyond the role map (config entries, extra head layers)."""

    @torch.no_grad()
    def grow(self, source: nn.Module, target: nn.Module) -> nn.Module:
        self.validate(source, target)
        with self.growing(source, target):
            s, t, writer = self.roles(source), self.roles(target), self.writer()
            if self.method == "exact":
                streams = self.streams(s, t)
                for ss, ts, stream in zip(s.stacks, t.stacks, streams):
                    self._embeddings(ss, ts, stream, writer)
                for ss, ts, stream in zip(s.stacks, t.stacks, streams):
                    self._body(ss, ts, stream, writer)
                self.finish_exact(source, target, streams, writer)
            else:
                stacks = [
                    (
                        [b.layer for b in ss.blocks],
                        [b.layer for b in ts.blocks],
                        self.depth_map(len(ss.blocks), len(ts.blocks)),
                    )
                    for ss, ts in zip(s.stacks, t.stacks)
                ]
                compt_copy(source, target, stacks, writer, packed=t.packed, blocks_last=self.compt_blocks_last)
        return target

    def _embeddings(self, s: Stack, t: Stack, stream: ResidualStream, writer: Writer) -> None:
        for se, te in zip(s.embeds, t.embeds):
            grow_embedding(se.tensor, te.tensor, stream, writer, axis=te.axis)
        if t.pre_norm is not None:
            grow_norm(s.pre_norm, t.pre_norm, stream, writer, writes_residual=True, eps_attr=t.eps_attr)

    def _body(self, s: Stack, t: Stack, stream: ResidualStream, writer: Writer) -> None:
        plan = self.head_plan(s, t)
        for tb, idx in zip(t.blocks, exact_depth_map(len(s.blocks), len(t.blocks))):
            if idx is None:
                writers = [p for proj in (tb.o, tb.down) for p in (proj.weight, proj.bias) if p is not None]
                identity_block(tb.layer.parameters(), writers, writer, zero_last=self.zero_writers_last)
            else:
                self._block(s.blocks[idx], tb, plan, stream, writer, t.eps_attr)
        grow_norm(s.norm, t.norm, stream, writer, eps_attr=t.eps_attr)
        if t.head is not None:
            out, new_out = s.head.weight.shape[0], t.head.weight.shape[0]
            grow_reader(s.head, t.head, stream, writer, zero=torch.arange(out, new_out))

    def _block(self, sb: Block, tb: Block, plan: HeadPlan, stream: ResidualStream, writer: Writer, eps: str) -> None:
        grow_norm(sb.attn_norm, tb.attn_norm, stream, writer, eps_attr=eps)
        grow_norm(sb.mlp_norm, tb.mlp_norm, stream, writer, eps_attr=eps)
        q_scale = self.q_scale(sb, tb, plan)
        if plan.q_share is not None:  # heads sharing a target head: their mean logit
            q_scale = q_scale * plan.q_share
        grow_reader(sb.q, tb.q, stream, writer, rows=plan.q_rows, scale=q_scale, zero=plan.q_gaps)
        grow_reader(sb.k, tb.k, stream, writer, rows=plan.kv_rows, src_rows=plan.kv_src)
        grow_reader(sb.v, tb.v, stream, writer, rows=plan.kv_rows, src_rows=plan.kv_src)
        grow_writer(sb.o, tb.o, plan.q_rows, stream, writer)
        units = torch.arange(sb.down.weight.shape[1])
        for s_reader, t_reader in zip(sb.readers, tb.readers):
            grow_reader(s_reader, t_reader, stream, writer)
        grow_writer(sb.down, tb.down, units, stream, writer)
