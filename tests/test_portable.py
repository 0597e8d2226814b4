"""Saved stages reload to the same function in a fresh process, with no pickle; model cards and the rebuild recipe."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torchvision.models.resnet import BasicBlock

import comptlib
from comptlib.checkpoint import save_stage
from comptlib.families.clip import build_clip
from comptlib.families.convnet import convnext, resnet
from comptlib.families.decoder_lm import build_gpt2, build_llama, build_qwen2
from comptlib.families.timm_vit import build_timm_vit
from comptlib.families.vit import build_vit
from comptlib.portable import METADATA_KEY
from conftest import perturb

IMAGES = {"x": torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))}
TOKENS = {"input_ids": torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(0))}
GREY = {"x": torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))}
PAIRS = TOKENS | {"pixel_values": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))}

# name: (source, target, grower options, inputs)
CASES = {
    "vit": (lambda: build_vit(16, 1), lambda: build_vit(32, 2), {}, IMAGES),
    "resnet": (
        lambda: resnet(BasicBlock, [1, 1], [8, 16], 10),
        lambda: resnet(BasicBlock, [1, 2], [12, 16], 10),
        {},
        IMAGES,
    ),
    "convnext": (
        lambda: convnext([8, 16], [1, 1], 10),
        lambda: convnext([16, 32], [1, 2], 10),
        {"approximate": True},
        IMAGES,
    ),
    "vit grey": (lambda: build_vit(16, 1, in_channels=1), lambda: build_vit(32, 2, in_channels=1), {}, GREY),
    "resnet grey": (
        lambda: resnet(BasicBlock, [1], [8], 10, in_channels=1),
        lambda: resnet(BasicBlock, [2], [12], 10, in_channels=1),
        {},
        GREY,
    ),
    "convnext grey": (
        lambda: convnext([8, 16], [1, 1], 10, in_channels=1),
        lambda: convnext([8, 16], [1, 2], 10, in_channels=1),
        {},
        GREY,
    ),
    "timm_vit": (lambda: build_timm_vit(16, 1), lambda: build_timm_vit(32, 2), {}, IMAGES),
    "llama": (lambda: build_llama(32, 1), lambda: build_llama(64, 2), {}, TOKENS),
    "qwen2": (lambda: build_qwen2(32, 1), lambda: build_qwen2(64, 2), {}, TOKENS),
    "gpt2": (lambda: build_gpt2(32, 1), lambda: build_gpt2(64, 2), {}, TOKENS),
    "clip": (lambda: build_clip(32, 1, vocab_size=100), lambda: build_clip(64, 2, vocab_size=100), {}, PAIRS),
}

RELOAD = """
import sys, torch, comptlib
from pathlib import Path
from safetensors.torch import load_file, save_file
from comptlib.grower import _primary_output
root = Path(sys.argv[1])
outputs = {}
for case in sys.argv[2:]:
    inputs = load_file(str(root / case / "inputs.safetensors"))
    model = comptlib.load(root / case)
    with torch.no_grad():
        outputs[case] = _primary_output(model(*inputs.values()) if "x" in inputs else model(**inputs)).contiguous()
save_file(outputs, str(root / "reloaded.safetensors"))
"""


def _output(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    from comptlib.grower import _primary_output

    with torch.no_grad():
        return _primary_output(model(*inputs.values()) if "x" in inputs else model(**inputs))


def _record(name: str) -> dict:
    return {
        "name": name,
        "parent": f"{name}-small",
        "steps": 0,
        "budget": 0,
        "flops": 1.0,
        "val": [{"step": 0, "loss": 1.0}],
        "settings": {"grower": {"class": "G", "method": "exact"}, "data": "fingerprint"},
        "growth": {"max_abs": 0.0, "max_rel": 0.0},
    }


def test_every_family_reloads_to_the_same_function_in_a_fresh_process(tmp_path: Path) -> None:
    expected = {}
    for name, (small, large, options, inputs) in CASES.items():
        torch.manual_seed(0)
        source = perturb(small())
        grower = comptlib.family_of(source).grower("exact", **options)
        target = grower.grow(source, large()).eval()
        expected[name] = _output(target, inputs)
        save_stage(tmp_path / name, target, _record(name), {})
        save_file({k: v.contiguous() for k, v in inputs.items()}, str(tmp_path / name / "inputs.safetensors"))
    subprocess.run([sys.executable, "-c", RELOAD, str(tmp_path), *CASES], check=True, timeout=600)
    reloaded = load_file(str(tmp_path / "reloaded.safetensors"))
    for name, out in expected.items():
        assert torch.equal(reloaded[name], out), name


def test_grown_vit_eps_is_in_the_safetensors_header(tmp_path: Path) -> None:
    target = comptlib.grow(perturb(build_vit(16, 1)), build_vit(32, 2)).eval()
    save_stage(tmp_path, target, _record("vit"), {})
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        spec = json.loads(f.metadata()[METADATA_KEY])
    assert spec["class"] == "torchvision.models.vision_transformer.VisionTransformer"
    assert spec["attributes"]["encoder.ln"] == {"eps": target.encoder.ln.eps}
    assert not (tmp_path / "README.md").exists()  # cards go with save_pretrained folders


def test_a_save_pretrained_stage_has_a_model_card_with_its_lineage(tmp_path: Path) -> None:
    save_stage(tmp_path, build_llama(32, 1), _record("llama"), {})
    card = (tmp_path / "model" / "README.md").read_text()
    front = card.split("---")[1]
    for key in ("parent:", "growth:", "data_fingerprint:", "held_out:", "flops:", "budget:", '"max_rel": 0.0'):
        assert key in front, key


def test_weights_without_the_recipe_name_what_is_missing(tmp_path: Path) -> None:
    from safetensors.torch import save_model

    save_model(build_vit(16, 1), str(tmp_path / "model.safetensors"))
    with pytest.raises(comptlib.ComptError, match="no comptlib.model metadata"):
        comptlib.load(tmp_path)


def test_a_grown_stage_records_how_far_growth_moved_its_function(digits) -> None:
    from comptlib import Chain
    from comptlib.card import model_card
    from comptlib.families.vit import build_vit

    torch.manual_seed(0)
    models = [build_vit(16, 1), build_vit(32, 2)]
    exact = Chain(models, budgets=[10, 2], unit="steps", progress=False).fit(*digits)
    warm = Chain(models, grower="compt", budgets=[10, 2], unit="steps", progress=False).fit(*digits)
    assert exact.history_[1]["growth"]["max_rel"] < 1e-5 < warm.history_[1]["growth"]["max_rel"]
    card = model_card(exact.history_[1] | {"settings": {"grower": {"class": "ViTGrower", "method": "exact"}}})
    assert '"max_rel"' in card and "not measured" not in card
