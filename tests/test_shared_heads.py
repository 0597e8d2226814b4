"""Public ladders whose head count falls (Qwen2.5 0.5B -> 1.5B, Llama-3.2 1B -> 3B): approximate growth."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

import comptlib
from comptlib import GrowthError
from comptlib.ops import rope_dim_map, shared_head_plan
from conftest import perturb

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def _qwen(hidden: int, heads: int, head_dim: int, layers: int) -> Qwen2ForCausalLM:
    """Qwen2.5's layout (2 kv heads, rope_theta 1e6, tied) at toy widths."""
    config = Qwen2Config(
        vocab_size=256, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=2, head_dim=head_dim, rope_theta=1e6,
        tie_word_embeddings=True, max_position_embeddings=32768,
    )  # fmt: skip
    return Qwen2ForCausalLM(config)


def _llama(hidden: int, heads: int, head_dim: int, layers: int) -> LlamaForCausalLM:
    """Llama-3.2's layout (8 kv heads, llama3 RoPE scaling, tied) at toy widths."""
    config = LlamaConfig(
        vocab_size=256, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=8, head_dim=head_dim, rope_theta=500000.0,
        rope_scaling=LLAMA3_ROPE, tie_word_embeddings=True, max_position_embeddings=131072,
    )  # fmt: skip
    return LlamaForCausalLM(config)


# The real ladders' head counts, kv heads and head_dim ratio, with head_dim 64 -> 128 shrunk to 8 -> 16 (4 -> 8).
LADDERS = {
    "qwen2.5-0.5b-1.5b": (lambda: _qwen(14 * 8, 14, 8, 2), lambda: _qwen(12 * 16, 12, 16, 3), 0.5),
    "llama-3.2-1b-3b": (lambda: _llama(32 * 4, 32, 4, 2), lambda: _llama(24 * 8, 24, 8, 3), 0.8),
}
IDS = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("ladder", LADDERS)
def test_exact_growth_refuses_fewer_heads_and_names_the_way_out(ladder: str) -> None:
    small, large, _ = LADDERS[ladder]
    with pytest.raises(GrowthError, match="num_attention_heads shrinks.*approximate=True"):
        comptlib.grow(small(), large())


@pytest.mark.parametrize("ladder", LADDERS)
def test_shared_heads_grow_approximately_with_a_measured_error(ladder: str) -> None:
    small, large, bound = LADDERS[ladder]
    torch.manual_seed(0)
    source = perturb(small(), 0.05)
    grower = comptlib.family_of(source).grower("exact", approximate=True)
    check = grower.check(source, grower.grow(source, large()), {"input_ids": IDS})
    assert not check.exact and 0 < check.max_rel < bound, check
    compt = comptlib.family_of(source).grower("compt")
    warm = compt.check(source, compt.grow(source, large()), {"input_ids": IDS})
    assert warm.max_rel > check.max_rel, (warm, check)  # the corner warm start is further off


@pytest.mark.parametrize(
    ("heads", "new_heads", "theta"),
    [((14, 2), (12, 2), 1e6), ((32, 8), (24, 8), 500000.0)],
    ids=["qwen2.5", "llama-3.2"],
)
def test_the_real_shapes_place_every_source_dim_once(heads, new_heads, theta) -> None:
    """At the real head_dim (64 -> 128): each source Q dim has its own target dim, each target head
    holds at most two source heads, and the first of them rotates at exactly its source frequencies."""
    freqs = lambda d: 1.0 / theta ** (torch.arange(0, d, 2).double() / d)  # noqa: E731
    first = rope_dim_map(freqs(64), freqs(128))
    plan = shared_head_plan(heads, new_heads, 64, 128, rope_map=first)
    assert plan.q_rows.unique().numel() == heads[0] * 64 and int(plan.q_rows.max()) < new_heads[0] * 128
    assert sorted(set((1 / plan.q_share).tolist())) == [1.0, 2.0]
    shared = int((plan.q_share == 0.5).sum()) // 64
    assert shared == 2 * (heads[0] - new_heads[0])  # one pair per source head too many
    assert not set(plan.q_gaps.tolist()) & set(plan.q_rows.tolist())
    assert plan.kv_rows.numel() == plan.kv_src.numel() and plan.kv_rows.unique().numel() == plan.kv_rows.numel()
    assert torch.allclose(freqs(128)[first[:32]], freqs(64))
