"""timm VisionTransformer: exact and compt growth through its role map, on models built from timm's constructor."""

from __future__ import annotations

import pytest
import torch

import comptlib
from comptlib import GrowthError, family_of
from conftest import perturb

timm_vit = pytest.importorskip("timm.models.vision_transformer")
from comptlib.families.timm_vit import TimmViTGrower, build_timm_vit, timm_vit_forward  # noqa: E402


def vit(d: int, heads: int, mlp_ratio: float, depth: int, **kw) -> torch.nn.Module:
    torch.manual_seed(d * 1000 + heads * 100 + depth)
    return timm_vit.VisionTransformer(
        img_size=16, patch_size=4, embed_dim=d, depth=depth, num_heads=heads, mlp_ratio=mlp_ratio, num_classes=7, **kw
    )


CASES = {
    "width x2": ((32, 2, 2.0, 2), (64, 4, 1.0, 2)),
    "width x1.5, heads, mlp, depth": ((32, 2, 2.0, 2), (48, 3, 3.0, 3)),
    "head_dim grows": ((32, 4, 2.0, 2), (64, 4, 1.0, 2)),
    "mlp only": ((32, 2, 2.0, 2), (32, 2, 4.0, 2)),
    "depth x2.5": ((32, 2, 2.0, 2), (32, 2, 2.0, 5)),
}
OPTIONS = {
    "default": {},
    "avg pool, fc_norm": {"global_pool": "avg"},
    "registers": {"reg_tokens": 2},
    "no_embed_class": {"no_embed_class": True},
    "no class token": {"class_token": False, "global_pool": "avg"},
    "pre_norm (tiled)": {"pre_norm": True},
}


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("case", CASES)
def test_exact_growth_keeps_the_function(case: str, option: str) -> None:
    (source, target), kw = CASES[case], OPTIONS[option]
    if kw.get("pre_norm") and target[0] % source[0]:
        pytest.skip("a tiled stream needs an integer width ratio")
    small, large = perturb(vit(*source, **kw)), vit(*target, **kw)
    grower = family_of(small).grower("exact", noise=0.3, seed=1)
    grower.grow(small, large)
    report = grower.check(small, large, torch.randn(3, 3, 16, 16))
    assert report.exact and report.max_rel < 1e-5, report
    assert large.training


@pytest.mark.parametrize("option", ["default", "pre_norm (tiled)"])
def test_feature_map_maps_student_features_to_teacher_features(option: str) -> None:
    kw = OPTIONS[option]
    small, large = perturb(vit(32, 2, 2.0, 2, **kw)), vit(64, 4, 2.0, 3, **kw)
    grower = TimmViTGrower("exact")
    grower.grow(small, large)
    batch = (torch.randn(4, 3, 16, 16), torch.zeros(4, dtype=torch.long))
    small.eval(), large.eval()
    with torch.no_grad():
        teacher, student = timm_vit_forward(small, batch).features, timm_vit_forward(large, batch).features
    torch.testing.assert_close(student @ grower.feature_map(small, large), teacher, rtol=1e-5, atol=1e-5)


def test_compt_splits_qkv_and_duplicates_blocks() -> None:
    small, large = perturb(vit(32, 2, 2.0, 2)), vit(64, 4, 2.0, 4)
    grower = TimmViTGrower("compt")
    grower.grow(small, large)
    for j, tb in enumerate(large.blocks):
        sb = small.blocks[j // 2]
        for s_part, t_part in zip(sb.attn.qkv.weight.chunk(3), tb.attn.qkv.weight.chunk(3)):
            torch.testing.assert_close(t_part[:32, :32], s_part)
    report = grower.check(small, large, torch.randn(2, 3, 16, 16))
    assert not report.exact and report.max_rel > 1e-3
    assert grower.feature_map(small, large) is None


def test_compt_copies_what_exact_growth_refuses() -> None:
    small, large = perturb(vit(32, 2, 2.0, 2, init_values=0.1)), vit(64, 4, 2.0, 2, init_values=0.1)
    with pytest.raises(GrowthError, match="layer scale"):
        TimmViTGrower("exact").validate(small, large)
    TimmViTGrower("compt").grow(small, large)
    torch.testing.assert_close(large.blocks[0].ls1.gamma[:32], small.blocks[0].ls1.gamma)


@pytest.mark.parametrize(
    ("source", "target", "kw", "match"),
    [
        ((64, 4, 2.0, 2), (32, 2, 2.0, 2), {}, "embed_dim shrinks"),
        ((32, 2, 2.0, 2), (64, 8, 2.0, 2), {}, "head_dim shrinks"),
        ((32, 2, 2.0, 2), (48, 3, 2.0, 2), {"pre_norm": True}, "integer multiple"),
        ((32, 2, 2.0, 2), (64, 4, 2.0, 2), {"global_pool": "max"}, "global_pool"),
        ((32, 2, 2.0, 2), (64, 4, 2.0, 2), {"qk_norm": True}, "QK norm"),
    ],
)
def test_impossible_growth_names_the_dimension(source, target, kw, match) -> None:
    with pytest.raises(GrowthError, match=match):
        TimmViTGrower("exact").validate(vit(*source, **kw), vit(*target, **kw))


def test_timm_and_torchvision_vits_are_two_families() -> None:
    from comptlib.families.vit import build_vit

    assert family_of(build_timm_vit(32, 2)).name == "timm_vit"
    assert family_of(build_vit(32, 2)).name == "vit"
    with pytest.raises(TypeError, match="torchvision VisionTransformer"):
        comptlib.grow(build_vit(32, 2), build_timm_vit(64, 2))


def test_a_timm_chain_starts_each_grown_model_at_its_predecessor(digits) -> None:
    train, val = digits
    chain = comptlib.Chain(
        [build_timm_vit(32, 1), build_timm_vit(64, 2)], budgets=[8, 2], unit="steps", lr=3e-3, progress=False
    ).fit(train, val)
    assert chain.report_["family"] == "timm_vit"
    assert chain.history_[1]["val"][0]["accuracy"] == pytest.approx(chain.history_[0]["val"][-1]["accuracy"])
