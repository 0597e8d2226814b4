"""The extending guide's worked example (examples/extending/resmlp_family.py) does what docs/extending.md says."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

import comptlib
from comptlib import Chain, GrowthError, family_of
from conftest import perturb

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "extending" / "resmlp_family.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    """Import the example by path (``examples/`` is a folder of scripts); importing it registers the family."""
    spec = importlib.util.spec_from_file_location("example_resmlp_family", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_family_is_registered(example) -> None:
    assert family_of(example.ResMLP(16, 1)) is example.RESMLP
    assert comptlib.families()["resmlp"] is example.RESMLP


@pytest.mark.parametrize(("width", "depth", "hidden"), [(64, 2, None), (48, 5, 100), (32, 2, 96)])
def test_exact_growth_keeps_the_function(example, width: int, depth: int, hidden: int | None) -> None:
    torch.manual_seed(0)
    small = perturb(example.ResMLP(32, 2))
    grower = family_of(small).grower("exact", noise=0.1)
    large = grower.grow(small, example.ResMLP(width, depth, hidden=hidden))
    x = torch.randn(8, 3, 8, 8)
    assert grower.check(small, large, x).max_rel < 1e-5
    fmap = grower.feature_map(small, large)
    torch.testing.assert_close(large.features(x) @ fmap, small.features(x), atol=1e-5, rtol=1e-5)


def test_compt_growth_is_a_warm_start(example) -> None:
    torch.manual_seed(0)
    small = perturb(example.ResMLP(32, 2))
    grower = family_of(small).grower("compt")
    report = grower.check(small, grower.grow(small, example.ResMLP(64, 4)), torch.randn(8, 3, 8, 8))
    assert not report.exact and report.max_rel > 1e-2
    assert grower.feature_map(small, example.ResMLP(64, 4)) is None


def test_impossible_growth_names_the_dimension(example) -> None:
    with pytest.raises(GrowthError, match="depth shrinks: 3 -> 2"):
        comptlib.grow(example.ResMLP(32, 3), example.ResMLP(64, 2))
    with pytest.raises(ValueError, match=r"models\[1\].*width shrinks"):
        Chain([example.ResMLP(64, 2), example.ResMLP(32, 2)], budgets=[1, 1], unit="steps").validate([1])


def test_the_example_chains_and_starts_each_grown_model_at_its_predecessor(example, capsys) -> None:
    chain = example.main(["--smoke"])
    assert "acceleration ratio (FLOPs)" in capsys.readouterr().out
    assert chain.report_["family"] == "resmlp" and chain.report_["acceleration_ratio"] > 1
    for before, after in zip(chain.history_, chain.history_[1:]):
        assert after["val"][0]["accuracy"] == before["val"][-1]["accuracy"]  # right after growth
    assert all(len(record["transfer_loss"]) == record["steps"] for record in chain.history_[1:])
