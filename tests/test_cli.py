"""The command line, run in-process with typer's CliRunner."""

import json

import pytest
from safetensors.torch import load_model
from typer.testing import CliRunner

from comptlib.cli import app
from comptlib.families.vit import build_vit

runner = CliRunner()


def test_version_and_help() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("comptlib ")
    result = runner.invoke(app, ["grow", "--help"])
    assert result.exit_code == 0 and "--family" in result.output and "comptlib grow" in result.output


def test_grow_runs_a_chain_and_writes_loadable_models(tmp_path) -> None:
    out = tmp_path / "run"
    args = ["grow", "--sizes", "16x1,32x2", "--budgets", "30,5", "--unit", "steps", "--out", str(out), "--no-progress"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "acceleration ratio" in result.output and "vit-32x2" in result.output
    report = json.loads((out / "report.json").read_text())["report"]
    assert report["acceleration_ratio"] > 1 and len(report["models"]) == 2
    model = build_vit(32, 2)
    load_model(model, str(out / "vit-32x2.safetensors"))  # a plain torchvision ViT loads the weights


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--family", "mlp"], "unknown family 'mlp'"),
        (["--sizes", "64"], "not WIDTHxDEPTH"),
        (["--sizes", "64x2,32x2"], "hidden_dim shrinks"),
        (["--budgets", "1,x"], "comma-separated numbers"),
        (["--budgets", "1,1"], "budgets has 2 entries for 3 models"),
    ],
)
def test_grow_reports_bad_input_clearly(args, message, tmp_path) -> None:
    result = runner.invoke(app, ["grow", *args, "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code != 0
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "report.json").exists()
