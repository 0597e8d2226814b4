"""Property tests for the transformer growth arithmetic (comptlib.ops.transformer), on plain tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from comptlib.ops import (
    Proj,
    ResidualStream,
    Writer,
    compt_copy,
    corner,
    grow_embedding,
    grow_norm,
    grow_reader,
    grow_writer,
    head_plan,
    identity_block,
)

FILLS = st.sampled_from(["mean", "zero", "tile"])


def writer(noise: float = 0.0, seed: int = 0, where: str = "free") -> Writer:
    return Writer(noise, where, torch.Generator().manual_seed(seed))


def sizes(fill: str, d: int, extra: int) -> int:
    """The target width: any larger one, or a multiple of ``d`` when tiled."""
    return d * (1 + extra % 4) if fill == "tile" else d + extra


class PreNormMLP(nn.Module):
    """``embed``, then ``x + down(gelu(up(norm(x))))``, a final norm and a head: every role but attention."""

    def __init__(self, d: int, hidden: int, rms: bool) -> None:
        super().__init__()
        self.embed = nn.Linear(5, d)
        self.norm1 = nn.RMSNorm(d, eps=1e-5) if rms else nn.LayerNorm(d)
        self.up, self.down = nn.Linear(d, hidden), nn.Linear(hidden, d)
        self.norm2 = nn.RMSNorm(d, eps=1e-5) if rms else nn.LayerNorm(d)
        self.head = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = h + self.down(F.gelu(self.up(self.norm1(h))))
        return self.head(self.norm2(h))


@settings(max_examples=40, deadline=None)
@given(fill=FILLS, d=st.integers(2, 12), extra=st.integers(0, 12), hidden=st.integers(1, 6), seed=st.integers(0, 999))
def test_norms_readers_and_writers_keep_the_function(fill: str, d: int, extra: int, hidden: int, seed: int) -> None:
    big = sizes(fill, d, extra)
    rms = fill == "zero"
    torch.manual_seed(seed)
    small, large = PreNormMLP(d, hidden, rms).double(), PreNormMLP(big, hidden + extra, rms).double()
    with torch.no_grad():
        for p in small.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        stream, w = ResidualStream(d, big, fill), writer(noise=0.5, seed=seed)
        grow_writer(Proj.of(small.embed), Proj.of(large.embed), torch.arange(5), stream, w)
        grow_norm(small.norm1, large.norm1, stream, w)
        grow_reader(Proj.of(small.up), Proj.of(large.up), stream, w)
        grow_writer(Proj.of(small.down), Proj.of(large.down), torch.arange(hidden), stream, w)
        grow_norm(small.norm2, large.norm2, stream, w)
        grow_reader(Proj.of(small.head), Proj.of(large.head), stream, w)
        x = torch.randn(4, 5, dtype=torch.float64)
        torch.testing.assert_close(large(x), small(x))


@settings(max_examples=40, deadline=None)
@given(fill=FILLS, d=st.integers(1, 8), extra=st.integers(0, 8), seed=st.integers(0, 999))
def test_residual_rows_follow_the_fill_rule(fill: str, d: int, extra: int, seed: int) -> None:
    big = sizes(fill, d, extra)
    stream = ResidualStream(d, big, fill)
    rows = torch.randn(d, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    grown = stream.rows(rows)
    assert grown.shape == (big, 3)
    if fill == "tile":
        torch.testing.assert_close(grown, rows.repeat(big // d, 1))
        assert stream.scale_eps(1e-5) == 1e-5
    else:
        torch.testing.assert_close(grown[:d], rows)
        new = rows.mean(0).expand(big - d, 3) if fill == "mean" else torch.zeros(big - d, 3, dtype=rows.dtype)
        torch.testing.assert_close(grown[d:], new)
        assert stream.scale_eps(1e-5) == 1e-5 * d / big


@settings(max_examples=30, deadline=None)
@given(copies=st.integers(2, 4), d=st.integers(1, 6), seed=st.integers(0, 999))
def test_tiled_readers_see_the_same_input_with_noise(copies: int, d: int, seed: int) -> None:
    """Noise on a tiled reader cancels over the copies: on ``[x, ..., x]`` it reads ``W x``."""
    weight = torch.randn(3, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    cols, values = ResidualStream(d, copies * d, "tile").read(weight, writer(noise=1.0, seed=seed))
    assert cols.tolist() == list(range(copies * d))
    x = torch.randn(d, dtype=torch.float64)
    torch.testing.assert_close(values @ x.repeat(copies), weight @ x, rtol=1e-5, atol=1e-6)  # float32 noise


@settings(max_examples=50, deadline=None)
@given(
    kv=st.integers(1, 4),
    group=st.integers(1, 4),
    more_kv=st.integers(0, 3),
    new_group=st.integers(1, 4),
    head_dim=st.integers(1, 8),
    more_dim=st.integers(0, 8),
)
def test_head_plan_keeps_each_query_head_with_its_kv_head(
    kv: int, group: int, more_kv: int, new_group: int, head_dim: int, more_dim: int
) -> None:
    heads, new_kv = kv * group, kv * -(-group // new_group) + more_kv
    new_heads, new_head_dim = new_kv * new_group, head_dim + more_dim
    plan = head_plan((heads, kv), (new_heads, new_kv), head_dim, new_head_dim)
    assert len(set(plan.q_rows.tolist())) == heads * head_dim
    assert not set(plan.q_rows.tolist()) & set(plan.q_gaps.tolist())
    assert len(plan.q_gaps) == heads * more_dim
    # repeat_kv: target query head h reads target kv head h // new_group, which copies the source's kv head.
    target_kv = dict(zip(plan.kv_rows.tolist(), (plan.kv_src // head_dim).tolist()))
    for q_head in range(heads):
        t_head = plan.q_rows[q_head * head_dim].item() // new_head_dim
        t_kv_row = (t_head // new_group) * new_head_dim
        assert target_kv[t_kv_row] == q_head // group


def test_head_plan_refuses_kv_heads_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="num_key_value_heads"):
        head_plan((8, 2), (8, 1), 4, 4)


@given(fill=FILLS, d=st.integers(1, 6), extra=st.integers(0, 6), positions=st.integers(1, 5), more=st.integers(0, 3))
def test_embeddings_fill_the_residual_axis_and_leave_new_positions_free(
    fill: str, d: int, extra: int, positions: int, more: int
) -> None:
    big = sizes(fill, d, extra)
    src, tgt = torch.randn(positions, d), torch.full((positions + more, big), 7.0)
    grow_embedding(src, tgt, ResidualStream(d, big, fill), writer(), axis=1)
    torch.testing.assert_close(tgt[:positions], ResidualStream(d, big, fill).rows(src.T).T)
    assert (tgt[positions:] == 7.0).all()


def test_identity_block_zeroes_writers_and_noises_only_free_entries() -> None:
    block = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    before = block[0].weight.clone()
    with torch.no_grad():
        identity_block(block.parameters(), (block[1].weight, block[1].bias), writer(noise=1.0))
    assert (block[1].weight == 0).all() and (block[1].bias == 0).all()
    assert not torch.equal(block[0].weight, before)


def test_corner_splits_packed_qkv() -> None:
    target, source = torch.zeros(12, 3), torch.arange(6.0).reshape(6, 1).expand(6, 2)
    corner(target, source, writer(), parts=3, axis=0)
    for t_part, s_part in zip(target.chunk(3), source.chunk(3)):
        torch.testing.assert_close(t_part[:2, :2], s_part)
        assert (t_part[2:] == 0).all()


class Stacked(nn.Module):
    def __init__(self, d: int, depth: int) -> None:
        super().__init__()
        self.inp, self.out = nn.Linear(2, d), nn.Linear(d, 2)
        self.blocks = nn.ModuleList(nn.Linear(d, d) for _ in range(depth))


@pytest.mark.parametrize("blocks_last", [False, True])
def test_compt_copy_duplicates_blocks_into_the_corners(blocks_last: bool) -> None:
    torch.manual_seed(0)
    small, large = Stacked(2, 2), Stacked(3, 4)
    with torch.no_grad():
        compt_copy(small, large, [(small.blocks, large.blocks, [0, 0, 1, 1])], writer(), blocks_last=blocks_last)
    for j, block in enumerate(large.blocks):
        torch.testing.assert_close(block.weight[:2, :2], small.blocks[j // 2].weight)
    torch.testing.assert_close(large.inp.weight[:2], small.inp.weight)
    torch.testing.assert_close(large.out.weight[:, :2], small.out.weight)
