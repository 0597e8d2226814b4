"""The FLOPs ledger against known figures, and the acceleration ratio arithmetic."""

import pytest
import torch
from torchvision.models import vit_b_16

from comptlib.families.vit import build_vit
from comptlib.ledger import Ledger, StageCost, flops_of


def test_vit_b_16_forward_is_17_6_gmacs_in_train_and_eval_mode() -> None:
    model = vit_b_16()
    x = torch.randn(1, 3, 224, 224)
    for mode in (True, False):  # eval mode exercises MultiheadAttention's fused fast path
        model.train(mode)
        with torch.no_grad():
            macs = flops_of(lambda: model(x)) / 2
        assert macs / 1e9 == pytest.approx(17.56, rel=0.01)


def test_training_step_costs_three_forwards() -> None:
    model = build_vit(64, 2)
    x = torch.randn(8, 3, 8, 8)
    with torch.no_grad():
        forward = flops_of(lambda: model(x))
    step = flops_of(lambda: model(x).sum().backward())
    assert step / forward == pytest.approx(3.0, rel=0.02)


def test_acceleration_ratio_is_independent_over_chain_flops() -> None:
    ledger = Ledger(
        (
            StageCost("small", student_flops=3.0, teacher_flops=0.0, samples=100),
            StageCost("large", student_flops=30.0, teacher_flops=1.0, samples=20),
        )
    )
    assert ledger.chain_flops == 3.0 * 100 + 31.0 * 20
    assert ledger.independent_flops(100) == (3.0 + 30.0) * 100
    assert ledger.acceleration_ratio(100) == pytest.approx(3300 / 920)
    with pytest.raises(ValueError, match="baseline_samples"):
        ledger.acceleration_ratio(0)
    assert ledger.to_dict(100)["stages"][1]["total"] == 620.0
