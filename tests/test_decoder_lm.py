"""Decoder-LM family: exact and compt growth of Llama, Qwen2, Mistral and GPT-2, LM objective and evaluation."""

from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import comptlib
import comptlib.families.decoder_lm as decoder_lm
from comptlib import GrowthError, LogitKL
from comptlib.families.decoder_lm import DecoderLMGrower, evaluate_lm, lm_forward
from comptlib.ops.heads import gqa_placement

torch.set_flush_denormal(True)
VOCAB = 64
TOL = 1e-5


def llama(
    hidden: int = 32,
    inter: int = 48,
    layers: int = 2,
    heads: int = 4,
    kv: int = 2,
    head_dim: int = 8,
    vocab: int = VOCAB,
    **kw,
) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=head_dim,
        max_position_embeddings=64,
        bos_token_id=None,
        eos_token_id=None,
        **kw,
    )
    return LlamaForCausalLM(cfg)


def qwen2(hidden: int = 32, inter: int = 48, layers: int = 2, heads: int = 4, kv: int = 2) -> Qwen2ForCausalLM:
    cfg = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=8,
        max_position_embeddings=64,
        bos_token_id=None,
        eos_token_id=None,
    )
    return Qwen2ForCausalLM(cfg)


def gpt2(hidden: int = 32, layers: int = 2, heads: int = 2, inner: int | None = None, **kw) -> GPT2LMHeadModel:
    cfg = GPT2Config(
        vocab_size=VOCAB,
        n_embd=hidden,
        n_layer=layers,
        n_head=heads,
        n_inner=inner,
        n_positions=32,
        bos_token_id=None,
        eos_token_id=None,
        **kw,
    )
    return GPT2LMHeadModel(cfg)


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Make every weight non-trivial: norm gammas away from 1, biases away from 0."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.mul_(1 + 0.3 * torch.randn(p.shape, generator=gen)).add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def batch(seq: int = 12, pad: bool = True) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (3, seq), generator=gen)
    mask = torch.ones_like(ids)
    if pad:
        mask[1, -4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def grown(source: torch.nn.Module, target: torch.nn.Module, **kw) -> tuple[torch.nn.Module, DecoderLMGrower]:
    grower = DecoderLMGrower(**kw)
    grower.grow(source, target)
    return target.eval(), grower


def assert_exact(source: torch.nn.Module, target: torch.nn.Module, grower: DecoderLMGrower) -> None:
    check = grower.check(source, target, batch())
    assert check.exact and check.max_rel < TOL, check


LLAMA_CASES = {
    "hidden_x2": ({}, {"hidden": 64}),
    "hidden_64_to_96": ({"hidden": 64}, {"hidden": 96}),
    "intermediate": ({}, {"inter": 80}),
    "heads_same_group": ({}, {"hidden": 64, "heads": 8, "kv": 4}),
    "gqa_group_2_to_4": ({}, {"hidden": 64, "heads": 8, "kv": 2}),
    "gqa_group_2_to_1": ({}, {"hidden": 64, "heads": 8, "kv": 8}),
    "head_dim_x2_rope": ({}, {"hidden": 64, "head_dim": 16}),
    "depth_x2": ({}, {"layers": 4}),
    "depth_x1.5": ({}, {"layers": 3}),
    "all": ({}, {"hidden": 96, "inter": 100, "layers": 3, "heads": 6, "kv": 3, "head_dim": 16}),
}


@pytest.mark.parametrize("case", LLAMA_CASES)
def test_llama_exact(case: str) -> None:
    small, big = LLAMA_CASES[case]
    torch.manual_seed(0)
    source, target = perturb(llama(**small)), llama(**big)
    target, grower = grown(source, target)
    assert_exact(source, target, grower)


def test_exact_with_noise_stays_exact() -> None:
    torch.manual_seed(0)
    source, target = perturb(llama()), llama(hidden=64, heads=8, kv=2, layers=3)
    target, grower = grown(source, target, noise=0.5, seed=3)
    assert_exact(source, target, grower)


def test_qwen2_width_and_depth_with_biases() -> None:
    torch.manual_seed(0)
    source = perturb(qwen2())
    assert source.model.layers[0].self_attn.q_proj.bias.abs().min() > 0
    target, grower = grown(source, qwen2(hidden=48, inter=64, layers=3, heads=6, kv=3))
    assert_exact(source, target, grower)


def test_mistral_shares_the_llama_layout() -> None:
    torch.manual_seed(0)
    cfg = {
        "vocab_size": VOCAB,
        "intermediate_size": 48,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "sliding_window": None,
        "bos_token_id": None,
        "eos_token_id": None,
    }
    source = perturb(MistralForCausalLM(MistralConfig(hidden_size=32, num_hidden_layers=2, **cfg)))
    target = MistralForCausalLM(MistralConfig(hidden_size=48, num_hidden_layers=3, **cfg))
    target, grower = grown(source, target)
    assert_exact(source, target, grower)


@pytest.mark.parametrize(
    "big",
    [
        {"hidden": 48, "heads": 3, "layers": 3},  # width x1.5, heads, depth; head_dim 16 kept
        {"hidden": 48, "heads": 2, "inner": 160},  # head_dim 16 -> 24 (no RoPE: exact)
    ],
)
def test_gpt2_exact(big: dict) -> None:
    torch.manual_seed(0)
    source, target = perturb(gpt2()), gpt2(**big)
    target, grower = grown(source, target)
    assert_exact(source, target, grower)
    assert target.config.layer_norm_epsilon == pytest.approx(source.config.layer_norm_epsilon * 32 / 48)


def test_gpt2_layer_scaled_attention_with_depth() -> None:
    """GPT-2's 1/(layer_idx+1) attention scaling changes where blocks move; Q absorbs it."""
    torch.manual_seed(0)
    source = perturb(gpt2(scale_attn_by_inverse_layer_idx=True))
    target, grower = grown(source, gpt2(hidden=48, heads=3, layers=4, scale_attn_by_inverse_layer_idx=True))
    assert_exact(source, target, grower)


@pytest.mark.parametrize("make", [lambda **kw: llama(tie_word_embeddings=True, **kw), gpt2])
def test_tied_embeddings_stay_tied_and_exact(make) -> None:
    torch.manual_seed(0)
    source = perturb(make())
    target = make(hidden=48, layers=3)
    target, grower = grown(source, target)
    embed = target.get_input_embeddings().weight
    assert target.lm_head.weight is embed
    assert target.lm_head.weight.data_ptr() == embed.data_ptr()
    assert_exact(source, target, grower)


def test_greedy_generation_matches() -> None:
    torch.manual_seed(0)
    source = perturb(llama())
    target, _ = grown(source, llama(hidden=64, heads=8, kv=2, layers=3))
    prompt = batch(pad=False)["input_ids"][:2, :5]
    kw = {"max_new_tokens": 10, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(source.generate(prompt, **kw), target.generate(prompt, **kw))


@pytest.mark.parametrize("make", [llama, gpt2])
def test_save_and_reload(make, tmp_path) -> None:
    torch.manual_seed(0)
    source = perturb(make())
    target, _ = grown(source, make(hidden=48, layers=3))
    target.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    inputs = batch()
    with torch.no_grad():
        expected, got = source(**inputs).logits, reloaded(**inputs).logits
    assert (expected - got).abs().max() <= TOL * expected.abs().max()


def test_feature_map_and_lm_forward() -> None:
    torch.manual_seed(0)
    source = perturb(llama())
    target, grower = grown(source, llama(hidden=48, layers=3))
    inputs = batch()
    with torch.no_grad():
        s, t = lm_forward(source, inputs), lm_forward(target, inputs)
        logits = source.lm_head(s.features)
    assert torch.equal(s.mask, inputs["attention_mask"])
    assert torch.allclose(logits, s.logits, atol=1e-6)  # features are the post-norm states the lm_head reads
    assert torch.allclose(t.features @ grower.feature_map(source, target), s.features, atol=1e-5)
    assert torch.allclose(t.loss, s.loss, atol=1e-5)
    kl = LogitKL(temperature=1.0)
    assert kl.divergence(t, s).abs() < 1e-6


def test_lm_forward_masks_padding() -> None:
    torch.manual_seed(0)
    model = perturb(llama())
    inputs = batch()
    altered = {k: v.clone() for k, v in inputs.items()}
    altered["input_ids"][1, -4:] = (altered["input_ids"][1, -4:] + 1) % VOCAB  # padded tokens only
    with torch.no_grad():
        assert torch.allclose(lm_forward(model, inputs).loss, lm_forward(model, altered).loss)


def test_evaluate_lm_bits_per_byte() -> None:
    torch.manual_seed(0)
    model = perturb(llama())
    inputs = batch()
    predicted = int(inputs["attention_mask"][:, 1:].sum())
    plain = evaluate_lm(model, [inputs], torch.device("cpu"))
    assert plain["bits_per_byte"] == pytest.approx(plain["bits_per_token"])
    assert plain["perplexity"] == pytest.approx(math.exp(plain["loss"]))
    assert plain["bits_per_token"] == pytest.approx(plain["loss"] / math.log(2))
    with_bytes = evaluate_lm(model, [{**inputs, "num_bytes": torch.tensor(2 * predicted)}], torch.device("cpu"))
    assert with_bytes["bits_per_byte"] == pytest.approx(plain["bits_per_token"] / 2)
    assert model.training is False
    with pytest.raises(ValueError, match="num_bytes"):
        evaluate_lm(model, [inputs, {**inputs, "num_bytes": torch.tensor(5)}], torch.device("cpu"))


def test_compt_llama_corner_copy_and_duplication() -> None:
    torch.manual_seed(0)
    source = perturb(llama())
    target, grower = grown(source, llama(hidden=48, heads=6, kv=3, layers=4), method="compt")
    assert grower.feature_map(source, target) is None
    for j, layer in enumerate(target.model.layers):
        src = source.model.layers[j // 2].self_attn
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            s, t = getattr(src, name).weight, getattr(layer.self_attn, name).weight
            assert torch.equal(t[: s.shape[0], : s.shape[1]], s), (j, name)


def test_compt_gpt2_splits_packed_qkv() -> None:
    torch.manual_seed(0)
    source = perturb(gpt2())
    target, _ = grown(source, gpt2(hidden=48, heads=3, layers=4), method="compt")
    for j, block in enumerate(target.transformer.h):
        src = source.transformer.h[j // 2].attn.c_attn
        for s_w, t_w, s_b, t_b in zip(
            src.weight.chunk(3, -1),
            block.attn.c_attn.weight.chunk(3, -1),
            src.bias.chunk(3),
            block.attn.c_attn.bias.chunk(3),
        ):
            assert torch.equal(t_w[:32, :32], s_w) and torch.equal(t_b[:32], s_b)  # Q->Q, K->K, V->V


def test_compt_stack_depth() -> None:
    torch.manual_seed(0)
    source = perturb(llama(layers=2))
    target, _ = grown(source, llama(layers=4), method="compt", depth="stack")
    for j, layer in enumerate(target.model.layers):
        assert torch.equal(layer.mlp.down_proj.weight, source.model.layers[j % 2].mlp.down_proj.weight)


def test_approximate_head_dim_under_rope() -> None:
    torch.manual_seed(0)
    source = perturb(llama())
    with pytest.raises(GrowthError, match="head_dim"):
        DecoderLMGrower().grow(source, llama(head_dim=12))
    target, grower = grown(source, llama(head_dim=12), approximate=True)
    assert grower.approximate is True and not grower.exact
    check = grower.check(source, target, batch())
    assert not check.exact and 0 < check.max_rel < 1


@pytest.mark.parametrize(
    ("source", "target", "error", "match"),
    [
        (lambda: llama(), lambda: llama(hidden=16), GrowthError, "hidden_size shrinks"),
        (lambda: llama(), lambda: llama(layers=1), GrowthError, "num_hidden_layers shrinks"),
        (lambda: llama(), lambda: llama(hidden=48, vocab=80), GrowthError, "vocab_size"),
        (lambda: llama(), lambda: gpt2(hidden=48), TypeError, "same model class"),
        (lambda: llama(), lambda: llama(hidden=48, tie_word_embeddings=True), GrowthError, "tie_word_embeddings"),
        (
            lambda: llama(hidden=36, heads=9, kv=3),
            lambda: llama(hidden=40, heads=10, kv=5),
            GrowthError,
            "num_key_value_heads",
        ),
        (lambda: llama(), lambda: llama(), GrowthError, "not larger"),
    ],
    ids=["shrink", "depth_shrink", "vocab", "mixed", "tie", "gqa", "same"],
)
def test_bad_growths_raise(source, target, error, match) -> None:
    with pytest.raises(error, match=match):
        DecoderLMGrower().validate(source(), target())


def test_gqa_placement_keeps_kv_heads() -> None:
    for q, kv, new_q, new_kv in [(4, 2, 8, 2), (4, 2, 8, 4), (4, 2, 8, 8), (6, 2, 8, 4)]:
        q_pos, kv_src = gqa_placement(q, kv, new_q, new_kv)
        assert q_pos.unique().numel() == q
        assert torch.equal(kv_src[q_pos // (new_q // new_kv)], torch.arange(q) // (q // kv))


def test_family_registration_and_grow() -> None:
    torch.manual_seed(0)
    source = perturb(llama())
    family = comptlib.family_of(source)
    assert family is decoder_lm.DECODER_LM and family.metric == "bits_per_byte" and not family.higher_is_better
    transferer = family.transferer()
    assert isinstance(transferer, LogitKL) and transferer.schedule == "linear" and transferer.temperature == 1.0
    assert family.dims(source)["head_dim"] == 8
    target = comptlib.grow(source, llama(hidden=48)).eval()
    inputs = batch()
    with torch.no_grad():
        assert torch.allclose(source(**inputs).logits, target(**inputs).logits, atol=1e-5)
    with pytest.raises(ValueError, match="stack"):
        DecoderLMGrower("exact", depth="stack")
