"""Training inherited weights through low-rank adapters (Chain(inherited="lora"))."""

import copy

import torch

from comptlib import Chain
from comptlib.families.decoder_lm import DecoderLMGrower, build_llama
from comptlib.families.vit import ViTGrower, build_vit
from comptlib.inherit import inherited_masks
from conftest import perturb


def test_masks_mark_exactly_what_came_from_the_source() -> None:
    small, large = perturb(build_vit(32, 1)), build_vit(48, 2)
    masks = inherited_masks(ViTGrower("exact", noise=0.5), small, large)
    fc1 = masks["encoder.layers.encoder_layer_0.mlp.0.weight"]
    assert fc1[:64, :32].all() and not fc1[64:].any() and not fc1[:, 32:].any()
    assert not masks["encoder.layers.encoder_layer_1.mlp.0.weight"].any()  # a new identity block
    fc2 = masks["encoder.layers.encoder_layer_0.mlp.3.weight"]
    assert fc2[:, :64].all() and not fc2[:, 64:].any()  # new rows are means of source rows: inherited too
    assert all(not p.isnan().any() for p in large.parameters())  # the probe grew copies


def test_a_lora_stage_moves_inherited_entries_by_a_low_rank_update_only() -> None:
    torch.manual_seed(0)
    models = [build_llama(32, 2), build_llama(64, 2)]
    from comptlib.data import text_loaders

    train, val = text_loaders(8, seq_len=32, max_bytes=60_000)
    chain = Chain(models, budgets=[20, 15], unit="steps", inherited="lora", lora_rank=2, progress=False)
    chain.fit(train, val)
    grown = DecoderLMGrower("exact", seed=0).grow(chain.models_[0], copy.deepcopy(models[1]))
    masks = inherited_masks(DecoderLMGrower(), chain.models_[0], models[1])
    final = chain.models_[1]
    assert type(final).__name__ == "LlamaForCausalLM"
    assert not any("parametrizations" in name for name, _ in final.named_parameters())
    name = "model.layers.0.mlp.up_proj.weight"
    delta = (final.get_parameter(name) - grown.get_parameter(name)).detach()
    mask = masks[name]
    inherited = (delta * mask)[mask.any(1)][:, mask.any(0)]
    assert torch.linalg.matrix_rank(inherited, atol=1e-5).item() <= 2
    assert torch.linalg.matrix_rank(delta * ~mask, atol=1e-5).item() > 2  # new entries train fully
