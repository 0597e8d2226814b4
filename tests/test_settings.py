"""Every setting declared once: checked finite and in range naming the field, in the API, the CLI and TOML."""

import pytest
import torch
from typer.testing import CliRunner

from comptlib import Chain, FeatureMSE, LogitKL
from comptlib.checkpoint import describe
from comptlib.cli import app
from comptlib.errors import ConfigError
from comptlib.families.convnet import ConvNeXtGrower
from comptlib.families.vit import build_vit
from comptlib.settings import Optim
from comptlib.transferer import FeatureMSEConfig


def family() -> list:
    torch.manual_seed(0)
    return [build_vit(16, 1), build_vit(32, 1)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": float("nan")}, r"lr must be finite, got nan"),
        ({"lr": "fast"}, r"lr must be a number, got 'fast'"),
        ({"optim__betas": (0.9, 2.0)}, r"betas\[1\] must be in \[0, 1\]"),
        ({"grad_clip": float("inf")}, r"grad_clip must be finite"),
        ({"budgets": 20}, r"budgets must be a list, got 20"),
        ({"budgets": [float("nan"), 4]}, r"budgets\[0\] must be finite, got nan"),
        ({"budgets": [4, 0]}, r"budgets\[1\] must be positive"),
        ({"checkpoint_every": -5}, r"checkpoint_every must be non-negative|checkpoint_every must be at least 0"),
        ({"eval_every": 2.5}, r"eval_every must be a whole number, got 2.5"),
        ({"seed": True}, r"seed must be a whole number"),
        ({"names": ["../x", "y"]}, r"names\[0\] must be a plain file name"),
        ({"names": ["x", "/abs/y"]}, r"names\[1\] must be a plain file name"),
        ({"names": ["", "y"]}, r"names\[0\] must be a plain file name"),
        ({"names": ["a", "a"]}, r"names must be distinct names"),
        ({"on_nonfinite": "ignore"}, r"on_nonfinite must be one of stop, skip"),
        ({"max_skips": -1}, r"max_skips must be at least 0"),
        ({"targets": [None, float("inf")], "eval_every": 5}, r"targets\[1\] must be finite"),
        ({"precision": "fp8"}, r"precision must be one of fp32, bf16, fp16"),
    ],
)
def test_bad_values_name_the_field(kwargs, message, digits) -> None:
    settings = {"budgets": [2, 2], "unit": "steps", "progress": False}
    with pytest.raises(ConfigError, match=message):
        Chain(family(), **settings).set_params(**kwargs).fit(digits[0])


def test_settings_are_checked_where_they_are_made() -> None:
    with pytest.raises(ConfigError, match="lr must be positive"):
        Optim(lr=-1.0)
    with pytest.raises(ConfigError, match="weight must be non-negative"):
        FeatureMSE(weight=-1.0)


runner = CliRunner()


def test_a_diverging_run_exits_1_with_no_nan_written(tmp_path) -> None:
    out = tmp_path / "out"
    args = ["--sizes", "16x1,32x1", "--budgets", "40,10", "--unit", "steps", "--lr", "1e6", "--no-progress"]
    result = runner.invoke(app, ["grow", *args, "--out", str(out)])
    assert result.exit_code == 1 and "vit-16x1 diverged at step" in " ".join(result.output.split())
    assert not (out / "report.json").exists() and not (out / "vit-16x1" / "stage.json").exists()
    metrics = out / "metrics.jsonl"
    assert not metrics.exists() or "NaN" not in metrics.read_text()


def test_the_signature_reads_structured_settings_not_reprs() -> None:
    assert repr(ConvNeXtGrower(approximate=True)) == repr(ConvNeXtGrower())  # why reprs could not be used
    assert describe(ConvNeXtGrower(approximate=True)) != describe(ConvNeXtGrower())
    assert describe(FeatureMSE(weight=2.0))["weight"] == 2.0
    assert describe(LogitKL(temperature=3.0)) != describe(LogitKL())


def test_a_transferer_config_builds_a_fresh_loss_module() -> None:
    config = FeatureMSEConfig(weight=3.0, projector="linear")
    loss = config.build()
    assert isinstance(loss, FeatureMSE) and loss.config == config and loss.proj is None
    loss.setup(*[_outputs(8)] * 2)
    assert loss.proj is not None and loss.fresh().proj is None and loss.fresh().config == config


def _outputs(width: int):
    from comptlib import Outputs

    f = torch.randn(4, width)
    return Outputs(loss=None, logits=f, features=f)
