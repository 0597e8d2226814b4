"""Transferers: zero when features agree, gradients reach student and projector only, schedules."""

import pytest
import torch
from torchvision.models import VisionTransformer

from comptlib import FeatureMSE, LogitKL, Outputs, WeightedSum
from comptlib.families.vit import ViTGrower, vit_forward
from comptlib.transferer import freeze
from conftest import perturb


def outputs(features: torch.Tensor, logits: torch.Tensor | None = None, mask=None) -> Outputs:
    return Outputs(loss=None, logits=features if logits is None else logits, features=features, mask=mask)


def test_feature_mse_is_zero_when_features_agree_and_positive_otherwise() -> None:
    f = torch.randn(8, 16)
    loss = FeatureMSE()
    loss.setup(outputs(f), outputs(f))
    assert loss(outputs(f), outputs(f)).item() == 0.0
    assert loss(outputs(f), outputs(torch.randn(8, 16))).item() > 0.0


def test_feature_mse_normalises_so_scale_does_not_matter() -> None:
    f = torch.randn(8, 16)
    assert FeatureMSE()(outputs(3.0 * f), outputs(f)).item() < 1e-10
    assert FeatureMSE(normalize=False)(outputs(3.0 * f), outputs(f)).item() > 1.0


def test_logit_kl_is_zero_for_equal_logits_and_matches_manual_kl() -> None:
    logits = torch.randn(6, 10)
    kl = LogitKL(temperature=2.0)
    assert kl(outputs(logits), outputs(logits)).abs().item() < 1e-6
    s, t = torch.randn(6, 10), torch.randn(6, 10)
    p_t, log_s = torch.softmax(t / 2, -1), torch.log_softmax(s / 2, -1)
    manual = (p_t * (p_t.log() - log_s)).sum(-1).mean() * 4
    torch.testing.assert_close(kl(outputs(s), outputs(t)), manual)


def test_masked_positions_do_not_count() -> None:
    s, t = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    t_changed = t.clone()
    t_changed[0, 3:] += 100.0  # padding: must not matter
    for term in (FeatureMSE(), LogitKL()):
        a = term(outputs(s, mask=mask), outputs(t, mask=mask))
        b = term(outputs(s, mask=mask), outputs(t_changed, mask=mask))
        torch.testing.assert_close(a, b)


def test_projector_gets_gradients_teacher_gets_none() -> None:
    torch.manual_seed(0)
    teacher = perturb(VisionTransformer(8, 2, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10))
    student = VisionTransformer(8, 2, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=32, num_classes=10)
    freeze(teacher)
    batch = (torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,)))
    s_out = vit_forward(student, batch)
    with torch.no_grad():
        t_out = vit_forward(teacher, batch)
    loss = FeatureMSE(projector="auto")
    loss.setup(s_out, t_out)  # different widths, no feature map: a trainable projector
    assert loss.proj is not None and loss.proj.weight.shape == (16, 32)
    loss(s_out, t_out).backward()
    assert loss.proj.weight.grad is not None and loss.proj.weight.grad.abs().sum() > 0
    assert student.encoder.layers[0].mlp[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not teacher.training


def test_exact_growth_feature_map_gives_zero_loss_without_a_projector() -> None:
    teacher = perturb(VisionTransformer(8, 2, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10))
    student = VisionTransformer(8, 2, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=32, num_classes=10)
    grower = ViTGrower("exact")
    grower.grow(teacher, student)
    batch = (torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,)))
    teacher.eval(), student.eval()
    s_out, t_out = vit_forward(student, batch), vit_forward(teacher, batch)
    loss = FeatureMSE()
    loss.setup(s_out, t_out, grower.feature_map(teacher, student))
    assert loss.proj is None and list(loss.parameters()) == []
    assert loss(s_out, t_out).item() < 1e-9
    with pytest.raises(ValueError, match="feature map"):
        FeatureMSE(projector="fixed").setup(s_out, t_out, None)


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [("constant", [2.0, 2.0, 2.0]), ("linear", [2.0, 1.0, 0.0]), ("cosine", [2.0, 1.0, 0.0])],
)
def test_weight_schedules(schedule: str, expected: list[float]) -> None:
    term = LogitKL(weight=2.0, schedule=schedule)
    assert [term.weight_at(s, 10) for s in (0, 5, 10)] == pytest.approx(expected, abs=1e-9)
    assert LogitKL(weight=2.0, schedule="linear", decay_steps=4).weight_at(4, 100) == 0.0


def test_weighted_sum_adds_weighted_terms() -> None:
    s, t = torch.randn(4, 8), torch.randn(4, 8)
    a, b = FeatureMSE(weight=3.0), LogitKL(weight=0.5)
    total = WeightedSum([a, b])(outputs(s), outputs(t))
    torch.testing.assert_close(total, a(outputs(s), outputs(t)) + b(outputs(s), outputs(t)))


def test_bad_transferer_arguments() -> None:
    with pytest.raises(ValueError, match="schedule"):
        FeatureMSE(schedule="step")
    with pytest.raises(ValueError, match="projector"):
        FeatureMSE(projector="mlp")
    with pytest.raises(ValueError, match="temperature"):
        LogitKL(temperature=0)
    with pytest.raises(ValueError, match="label space"):
        LogitKL()(outputs(torch.randn(2, 3)), outputs(torch.randn(2, 4)))
