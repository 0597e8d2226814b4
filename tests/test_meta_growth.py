"""Growing into a target built on the meta device: allocated once, initialised by the family's rule, same function."""

import contextlib

import pytest
import torch
from test_portable import CASES, _output
from torchvision.models.resnet import BasicBlock
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

import comptlib
from benchmarks.growth_cost import QWEN25_05B, QWEN25_15B
from comptlib.families.convnet import resnet
from comptlib.families.decoder_lm import build_qwen2
from comptlib.families.timm_vit import build_timm_vit
from comptlib.families.vit import build_vit
from conftest import perturb


@pytest.mark.parametrize("case", CASES)
def test_a_meta_target_grows_into_the_same_function_as_a_built_one(case: str) -> None:
    small, large, options, inputs = CASES[case]
    torch.manual_seed(0)
    source = perturb(small())
    built = comptlib.grow(source, large(), **options).eval()
    with torch.device("meta"):
        empty = large()
    grown = comptlib.grow(source, empty, **options).eval()
    assert not any(t.is_meta for t in [*grown.parameters(), *grown.buffers()])
    assert torch.allclose(_output(grown, inputs), _output(built, inputs), atol=1e-5, rtol=1e-4), case


def test_a_meta_target_draws_its_free_entries_from_the_family_init() -> None:
    """New heads' rows keep torchvision's ViT init (xavier MLPs, zero head), not zeros or garbage."""
    with torch.device("meta"):
        empty = build_vit(64, 2)
    grown = comptlib.grow(perturb(build_vit(32, 1)), empty)
    fc1 = grown.encoder.layers[1].mlp[0].weight  # a new block's MLP reader: free entries only
    bound = (6 / sum(fc1.shape)) ** 0.5
    assert fc1.abs().max() <= bound and fc1.std() > bound / 3
    assert torch.isfinite(torch.cat([p.flatten() for p in grown.parameters()])).all()


def test_a_partly_meta_target_is_refused() -> None:
    target = build_vit(64, 2)
    with torch.device("meta"):
        target.heads = torch.nn.Sequential(torch.nn.Linear(64, 10))
    target.heads.head = target.heads[0]
    with pytest.raises(ValueError, match="wholly on meta"):
        comptlib.grow(build_vit(32, 1), target)


# Big enough for statistics: every free region of these holds thousands of entries.
RULES = {
    "vit (xavier, fan-in)": (lambda: build_vit(64, 1), lambda: build_vit(128, 2)),
    "qwen2 (Hugging Face normal)": (lambda: build_qwen2(64, 1), lambda: build_qwen2(128, 2)),
    "resnet (He normal)": (
        lambda: resnet(BasicBlock, [1, 1], [16, 32], 10),
        lambda: resnet(BasicBlock, [1, 2], [32, 64], 10),
    ),
    "timm vit (trunc normal)": (lambda: build_timm_vit(64, 1), lambda: build_timm_vit(128, 2)),
}


@pytest.mark.parametrize("case", RULES)
def test_a_meta_target_has_the_built_targets_written_entries_and_its_free_entries_follow_the_init_rule(case) -> None:
    """Free entries (those a built target keeps from its init) are drawn from the family's rule, not left empty
    or zeroed; every written entry is the built growth's, bit for bit."""
    small, large = RULES[case]
    torch.manual_seed(0)
    source, built = perturb(small()), large()
    init = {name: t.clone() for name, t in built.state_dict().items()}
    comptlib.grow(source, built)
    with torch.device("meta"):
        empty = large()
    grown = comptlib.grow(source, empty).state_dict()
    for name, tensor in built.state_dict().items():
        if not tensor.is_floating_point():
            continue
        free = tensor == init[name]  # unchanged by growth (a written entry equal to its init is a zero-measure event)
        assert torch.equal(grown[name][~free], tensor[~free]), name
        if int(free.sum()) >= 2000:
            want, got = init[name][free], grown[name][free]
            scale = want.std().item()
            assert got.std().item() == pytest.approx(scale, rel=0.1, abs=1e-6), name
            assert got.mean().item() == pytest.approx(want.mean().item(), abs=0.1 * scale + 1e-6), name


LLAMA32_1B = {
    "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "max_position_embeddings": 131072,
    "rope_theta": 500000.0, "tie_word_embeddings": True,
    "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192},
}  # fmt: skip
LLAMA32_3B = LLAMA32_1B | {"hidden_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 24, "head_dim": 128}
REAL = {
    "qwen2.5 0.5b -> 1.5b": (Qwen2Config, Qwen2ForCausalLM, QWEN25_05B, QWEN25_15B),
    "llama-3.2 1b -> 3b": (LlamaConfig, LlamaForCausalLM, LLAMA32_1B, LLAMA32_3B),
}


@pytest.mark.parametrize("ladder", REAL)
def test_real_configs_grow_on_meta_at_the_shape_level(ladder: str) -> None:
    """The public ladders at full size, no weights: a meta source grows into a meta target (the RoPE frequencies
    come from the configs), nothing is allocated, and the norms' eps follow the width."""
    config, model, small, large = REAL[ladder]
    with torch.device("meta"):
        source, target = model(config(**small)), model(config(**large))
    with pytest.raises(comptlib.GrowthError, match="num_attention_heads shrinks"):
        comptlib.grow(source, target)  # fewer, wider heads: exact growth is refused at the shape level too
    grown = comptlib.grow(source, target, approximate=True)
    assert grown is target and all(t.is_meta for t in [*grown.parameters(), *grown.buffers()])
    assert comptlib.family_of(grown).dims(grown)["hidden_size"] == large["hidden_size"]
    eps = source.config.rms_norm_eps * small["hidden_size"] / large["hidden_size"]
    assert grown.model.norm.variance_epsilon == pytest.approx(eps) == grown.config.rms_norm_eps
    assert grown.lm_head.weight is grown.model.embed_tokens.weight


def test_a_meta_source_cannot_grow_into_a_real_target() -> None:
    with torch.device("meta"):
        source = build_vit(32, 1)
    with pytest.raises(ValueError, match="meta device has no values"):
        comptlib.grow(source, build_vit(64, 2))


def test_a_chain_materialises_its_meta_models(digits) -> None:
    """Later models built on the meta device train like built ones: same shapes, the same teacher, and the
    inherited function right after growth (only the free entries' draws differ)."""
    from comptlib import Chain
    from comptlib.checkpoint import weights_hash

    def fit(meta: bool, **settings) -> Chain:
        torch.manual_seed(0)
        small = build_vit(16, 1)
        with torch.device("meta") if meta else contextlib.nullcontext():
            large = build_vit(32, 2)
        chain = Chain([small, large], budgets=[3, 2], unit="steps", progress=False, **settings).fit(digits[0])
        assert all(t.is_meta for t in large.parameters()) == meta  # the chain grew a copy
        return chain

    built, meta = fit(False), fit(True)
    assert weights_hash(meta.models_[0]) == weights_hash(built.models_[0])
    for a, b in zip(built.models_[1].state_dict().values(), meta.models_[1].state_dict().values()):
        assert a.shape == b.shape and not b.is_meta
    for chain in (built, meta):
        assert chain.history_[1]["growth"]["max_rel"] < 1e-5
    lora = fit(True, inherited="lora", lora_rank=2)  # its masks come from the grown student, not the meta template
    assert lora.history_[1]["growth"]["max_rel"] < 1e-5 and not any(t.is_meta for t in lora.models_[1].parameters())


def test_a_meta_target_grown_with_noise_is_drawn_whole_first_and_stays_exact() -> None:
    """Noise is scaled by each tensor's init, so with noise the target is initialised before any write."""
    torch.manual_seed(0)
    source, x = perturb(build_vit(32, 1)), torch.randn(2, 3, 8, 8)
    with torch.device("meta"):
        empty = build_vit(64, 2)
    grown = comptlib.grow(source, empty, noise=0.1)
    assert torch.allclose(source.eval()(x), grown.eval()(x), atol=1e-5)
    fc1 = grown.encoder.layers[0].mlp[0].weight  # a copied block's reader: its free part has the init plus noise
    assert fc1[64:].std() > 0
