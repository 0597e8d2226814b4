"""Exact and compt growth of torchvision VisionTransformer, checked numerically."""

import pytest
import torch
from torchvision.models import VisionTransformer, vit_b_16, vit_l_16

import comptlib
from comptlib.families.vit import ViTGrower, build_vit
from comptlib.grower import GrowthError
from conftest import perturb


def vit(d: int, heads: int, mlp: int, layers: int, **kw) -> VisionTransformer:
    torch.manual_seed(d * 1000 + heads * 100 + layers)
    return VisionTransformer(16, 4, num_layers=layers, num_heads=heads, hidden_dim=d, mlp_dim=mlp, num_classes=7, **kw)


CASES = {
    "width x2": ((32, 2, 64, 2), (64, 4, 64, 2)),
    "width x4": ((32, 2, 64, 2), (128, 8, 64, 2)),
    "width 768->1024 ratio": ((48, 3, 96, 2), (64, 4, 96, 2)),
    "heads 6->12": ((48, 6, 96, 2), (96, 12, 96, 2)),
    "heads 12->16, head_dim fixed": ((96, 12, 96, 2), (128, 16, 96, 2)),
    "head_dim grows": ((32, 4, 64, 2), (64, 4, 64, 2)),
    "mlp size": ((32, 2, 64, 2), (32, 2, 100, 2)),
    "depth x2": ((32, 2, 64, 2), (32, 2, 64, 4)),
    "depth x1.5": ((32, 2, 64, 4), (32, 2, 64, 6)),
    "everything": ((32, 2, 64, 2), (80, 5, 200, 5)),
}


@pytest.mark.parametrize("noise", [0.0, 0.5])
@pytest.mark.parametrize("case", CASES)
def test_exact_growth_keeps_the_function(case: str, noise: float) -> None:
    small, large = vit(*CASES[case][0]), vit(*CASES[case][1])
    perturb(small)
    grower = ViTGrower("exact", noise=noise, seed=1)
    grower.grow(small, large)
    x = torch.randn(5, 3, 16, 16)
    report = grower.check(small, large, x)
    assert report.exact
    assert report.max_rel < 1e-5, report
    # The target really is the larger model and still trains in train mode.
    assert large.hidden_dim == CASES[case][1][0]
    assert large.training is True


def test_exact_growth_changes_free_entries_only_with_noise() -> None:
    small = perturb(vit(32, 2, 64, 2))
    a, b = vit(64, 4, 64, 2), vit(64, 4, 64, 2)
    b.load_state_dict(a.state_dict())
    ViTGrower("exact").grow(small, a)
    ViTGrower("exact", noise=1.0, seed=3).grow(small, b)
    assert not torch.equal(a.encoder.layers[0].mlp[0].weight, b.encoder.layers[0].mlp[0].weight)
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=1e-5, atol=1e-5)


def test_vit_b_16_grows_exactly_into_vit_l_16() -> None:
    torch.manual_seed(0)
    base, large = perturb(vit_b_16(), scale=0.02), vit_l_16()
    comptlib.grow(base, large, method="exact")
    report = ViTGrower("exact").check(base, large, torch.randn(1, 3, 224, 224))
    assert report.max_rel < 1e-5, report


def test_feature_map_maps_student_features_to_teacher_features() -> None:
    from comptlib.families.vit import vit_forward

    small, large = perturb(vit(32, 2, 64, 2)), vit(48, 3, 64, 3)
    grower = ViTGrower("exact")
    grower.grow(small, large)
    batch = (torch.randn(4, 3, 16, 16), torch.zeros(4, dtype=torch.long))
    small.eval(), large.eval()
    with torch.no_grad():
        t, s = vit_forward(small, batch).features, vit_forward(large, batch).features
    torch.testing.assert_close(s @ grower.feature_map(small, large), t, rtol=1e-5, atol=1e-5)


def test_compt_copies_q_to_q_k_to_k_v_to_v() -> None:
    small, large = perturb(vit(32, 2, 64, 2)), vit(64, 4, 128, 2)
    ViTGrower("compt").grow(small, large)
    for sb, tb in zip(small.encoder.layers, large.encoder.layers):
        for s_part, t_part in zip(sb.self_attention.in_proj_weight.chunk(3), tb.self_attention.in_proj_weight.chunk(3)):
            torch.testing.assert_close(t_part[:32, :32], s_part)
        for s_part, t_part in zip(sb.self_attention.in_proj_bias.chunk(3), tb.self_attention.in_proj_bias.chunk(3)):
            torch.testing.assert_close(t_part[:32], s_part)
    # What is outside the corner keeps the target's own init (not zero, not the source).
    assert large.encoder.layers[0].mlp[0].weight[64:, :].abs().sum() > 0


def test_compt_duplicates_blocks_l_to_2l_and_2l_plus_1() -> None:
    small, large = perturb(vit(32, 2, 64, 3)), vit(32, 2, 64, 6)
    ViTGrower("compt").grow(small, large)
    for j, tb in enumerate(large.encoder.layers):
        sb = small.encoder.layers[j // 2]
        torch.testing.assert_close(tb.self_attention.in_proj_weight, sb.self_attention.in_proj_weight)
        torch.testing.assert_close(tb.mlp[3].weight, sb.mlp[3].weight)


def test_compt_is_a_warm_start_not_exact() -> None:
    small, large = perturb(vit(32, 2, 64, 2)), vit(64, 4, 128, 4)
    grower = ViTGrower("compt")
    grower.grow(small, large)
    report = grower.check(small, large, torch.randn(2, 3, 16, 16))
    assert not report.exact and report.max_rel > 1e-3
    assert grower.feature_map(small, large) is None


@pytest.mark.parametrize(
    ("source", "target", "dim"),
    [
        ((64, 4, 64, 2), (32, 2, 64, 2), "hidden_dim"),
        ((32, 2, 64, 4), (32, 2, 64, 2), "num_layers"),
        ((32, 2, 128, 2), (32, 2, 64, 2), "mlp_dim"),
        ((32, 2, 64, 2), (64, 8, 64, 2), "head_dim"),
        ((32, 2, 64, 2), (32, 2, 64, 2), "not larger"),
    ],
)
def test_impossible_growth_names_the_dimension(source, target, dim) -> None:
    with pytest.raises(GrowthError, match=dim):
        ViTGrower("exact").validate(vit(*source), vit(*target))


def test_equal_dims_must_match() -> None:
    small = VisionTransformer(16, 4, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=7)
    other = VisionTransformer(16, 4, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=64, num_classes=9)
    with pytest.raises(GrowthError, match="num_classes"):
        ViTGrower().validate(small, other)
    patch = VisionTransformer(16, 8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=64, num_classes=7)
    with pytest.raises(GrowthError, match="patch_size"):
        ViTGrower().validate(small, patch)


def test_unknown_method_and_type_errors() -> None:
    with pytest.raises(ValueError, match="method"):
        ViTGrower("magic")
    with pytest.raises(TypeError, match="no comptlib family is registered for Linear"):
        comptlib.grow(torch.nn.Linear(2, 2), torch.nn.Linear(4, 4))


def test_build_vit_fits_digits() -> None:
    model = build_vit(32, 2)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)
