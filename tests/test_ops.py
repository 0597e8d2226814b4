"""Property tests for the tensor-level growth operators."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from comptlib.ops import Canvas, compt_depth_map, exact_depth_map, head_dims, mean_rows, norm_scale, stack_depth_map


@settings(max_examples=50, deadline=None)
@given(d=st.integers(2, 24), extra=st.integers(0, 40), seed=st.integers(0, 2**16))
def test_mean_fill_then_layernorm_is_layernorm_then_zero_pad(d: int, extra: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    big = d + extra
    x = torch.randn(7, d, generator=gen, dtype=torch.float64)
    gamma, beta = torch.randn(d, generator=gen, dtype=torch.float64), torch.randn(d, generator=gen, dtype=torch.float64)
    eps = 1e-5
    # A writer W (d x k) extended with mean rows produces [x, mean(x), ...].
    w = torch.randn(d, 5, generator=gen, dtype=torch.float64)
    inp = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    x = inp @ w.T
    x_big = inp @ mean_rows(w, big).T
    g_big = torch.cat([gamma * norm_scale(d, big), torch.randn(extra, generator=gen, dtype=torch.float64)])
    b_big = torch.cat([beta, torch.zeros(extra, dtype=torch.float64)])
    out = torch.nn.functional.layer_norm(x, (d,), gamma, beta, eps)
    out_big = torch.nn.functional.layer_norm(x_big, (big,), g_big, b_big, eps * d / big)
    torch.testing.assert_close(out_big[:, :d], out)
    torch.testing.assert_close(out_big[:, d:], torch.zeros(7, extra, dtype=torch.float64))


@given(src=st.integers(1, 30), extra=st.integers(0, 40))
def test_depth_maps_keep_order_and_cover_every_source_block(src: int, extra: int) -> None:
    dst = src + extra
    exact = exact_depth_map(src, dst)
    placed = [s for s in exact if s is not None]
    assert placed == list(range(src)) and len(exact) == dst
    compt = compt_depth_map(src, dst)
    assert sorted(compt) == compt and set(compt) == set(range(src)) and len(compt) == dst
    assert stack_depth_map(src, dst)[:src] == list(range(src))
    if dst == 2 * src:
        assert compt == [j // 2 for j in range(dst)]
        assert exact == [j // 2 if j % 2 == 0 else None for j in range(dst)]


@given(heads=st.integers(1, 8), head_dim=st.integers(1, 16), grow=st.integers(0, 8))
def test_head_index_keeps_heads_apart(heads: int, head_dim: int, grow: int) -> None:
    idx = head_dims(torch.arange(heads), torch.arange(head_dim), head_dim + grow)
    assert len(set(idx.tolist())) == heads * head_dim
    assert (idx // (head_dim + grow)).tolist() == [h for h in range(heads) for _ in range(head_dim)]


def test_canvas_noise_goes_only_where_asked() -> None:
    canvas = Canvas(torch.zeros(4, 4))
    canvas.put((slice(0, 2), slice(0, 2)), torch.ones(2, 2))
    gen = torch.Generator().manual_seed(0)
    free = canvas.finish(1.0, "free", gen)
    assert torch.equal(free[:2, :2], torch.ones(2, 2)) and free[2:].abs().sum() > 0
    written = canvas.finish(1.0, "written", gen)
    assert torch.equal(written[2:], torch.zeros(2, 4)) and not torch.equal(written[:2, :2], torch.ones(2, 2))
