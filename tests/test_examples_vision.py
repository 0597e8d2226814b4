"""The vision examples run end to end (``--smoke``) and print the chain-vs-alone table with its ratio."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

VISION = Path(__file__).resolve().parents[1] / "examples" / "vision"


def _example(name: str) -> ModuleType:
    """Import an example by path: ``examples/`` is a folder of scripts, not a package."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", VISION / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("name", "args", "models"),
    [
        ("convnet_chain", ["--family", "resnet"], ("resnet-8x1", "resnet-16x1", "resnet-32x2")),
        ("convnet_chain", ["--family", "convnext"], ("convnext-16x1", "convnext-32x1", "convnext-64x2")),
        ("vit_chain", [], ("vit-32x2", "vit-64x4", "vit-128x6")),
        ("clip_chain", [], ("clip-32x2", "clip-64x3", "clip-128x4")),
    ],
)
def test_smoke_prints_comparison(name: str, args: list[str], models: tuple[str, ...], capsys) -> None:
    _example(name).main(["--smoke", *args])
    out = capsys.readouterr().out
    for model in models:
        assert re.search(rf"^{re.escape(model)}\s", out, re.MULTILINE), f"no table row for {model}:\n{out}"
    ratio = re.search(r"acceleration ratio \(FLOPs\): ([0-9.]+)x", out)
    assert ratio, out
    assert float(ratio.group(1)) > 1.0  # the chain trains the larger models for fewer steps
