"""Users register their own family without editing comptlib, and the chain uses it."""

import attrs
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import comptlib
from comptlib import Chain, Family, Grower, GrowthError, LogitKL, Outputs, register_family
from comptlib.family import family_of
from comptlib.ops import Canvas


class MLP(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, hidden), nn.Linear(hidden, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class MLPGrower(Grower):
    """New hidden units read anything and write nothing: exact."""

    def validate(self, source: nn.Module, target: nn.Module) -> None:
        if target.fc1.out_features <= source.fc1.out_features:
            raise GrowthError(f"hidden shrinks or stays: {source.fc1.out_features} -> {target.fc1.out_features}")

    @torch.no_grad()
    def grow(self, source: nn.Module, target: nn.Module) -> nn.Module:
        h, gen = source.fc1.out_features, self._generator()
        self._corner(target.fc1.weight, source.fc1.weight, gen)
        self._corner(target.fc1.bias, source.fc1.bias, gen)
        out = Canvas(target.fc2.weight)
        out.put((slice(None), slice(0, h)), source.fc2.weight)
        out.put((slice(None), slice(h, None)), 0.0)
        self._write(target.fc2.weight, out, gen)
        target.fc2.bias.copy_(source.fc2.bias)
        return target


def mlp_forward(model: nn.Module, batch) -> Outputs:
    x, y = batch
    features = torch.relu(model.fc1(x))
    logits = model.fc2(features)
    return Outputs(loss=F.cross_entropy(logits, y), logits=logits, features=features)


def mlp_evaluate(model: nn.Module, loader, device) -> dict[str, float]:
    with torch.no_grad():
        x, y = next(iter(loader))
        return {"accuracy": (model(x).argmax(-1) == y).float().mean().item()}


@pytest.fixture(scope="module", autouse=True)
def mlp_family():
    return register_family(
        Family(
            name="toy-mlp",
            model_types=(MLP,),
            grower=MLPGrower,
            transferer=LogitKL,
            forward=mlp_forward,
            evaluate=mlp_evaluate,
            dims=lambda m: {"hidden": m.fc1.out_features},
        )
    )


def test_registered_family_grows_exactly_and_chains() -> None:
    torch.manual_seed(0)
    small, large = MLP(4), MLP(9)
    assert family_of(small).name == "toy-mlp"
    comptlib.grow(small, large)
    x = torch.randn(5, 4)
    torch.testing.assert_close(small(x), large(x))
    x = torch.randn(256, 4)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(x, y), batch_size=256)
    chain = Chain([MLP(4), MLP(8), MLP(16)], budgets=[60, 20, 20], unit="steps", lr=1e-2, progress=False)
    chain.fit(loader, val)
    assert chain.report_["family"] == "toy-mlp" and chain.report_["acceleration_ratio"] > 1
    assert chain.history_[1]["val"][0]["accuracy"] == pytest.approx(chain.history_[0]["val"][-1]["accuracy"])


def test_a_registered_type_cannot_be_taken_silently(mlp_family) -> None:
    other = Family(
        name="other",
        model_types=(MLP,),
        grower=MLPGrower,
        transferer=LogitKL,
        forward=mlp_forward,
        evaluate=mlp_evaluate,
        dims=lambda m: {},
    )
    with pytest.raises(ValueError, match="MLP is already registered to family 'toy-mlp'"):
        register_family(other)
    assert family_of(MLP(2)) is mlp_family


def test_comptlib_families_stays_callable_once_the_package_is_imported() -> None:
    import comptlib.families.vit  # rebinds comptlib.families from the function to the package

    assert isinstance(comptlib.families(), dict) and "vit" in comptlib.families()
    assert comptlib.families.vit.build_vit is not None  # and the package still works as one


def test_looking_up_a_torchvision_model_imports_no_other_library() -> None:
    import subprocess
    import sys

    code = (
        "import sys, comptlib\n"
        "from comptlib.families.vit import build_vit\n"
        "assert comptlib.family_of(build_vit(32, 1)).name == 'vit'\n"
        "print(sorted(m for m in ('transformers', 'timm') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_list_families_has_every_builtin_family() -> None:
    names = set(comptlib.list_families())
    assert {"vit", "resnet", "convnext", "clip", "decoder_lm", "toy-mlp"} <= names


def test_the_deprecated_spellings_still_work() -> None:
    from comptlib.family import families

    with pytest.warns(DeprecationWarning, match="list_families"):
        assert families().keys() == comptlib.list_families().keys()
    with pytest.warns(DeprecationWarning):
        assert "vit" in comptlib.families()


def test_an_unregistered_model_is_named_by_its_full_class_path() -> None:
    class Unknown(nn.Linear):
        pass

    with pytest.raises(
        TypeError,
        match=r"Unknown \(test_registry\..*Unknown\).*torchvision\.models\.vision_transformer\.VisionTransformer",
    ):
        family_of(Unknown(2, 2))


def test_registry_clashes_name_the_class_path(mlp_family) -> None:
    other = attrs.evolve(mlp_family, name="other")
    with pytest.raises(ValueError, match=r"already registered to family 'toy-mlp' \(as test_registry\.MLP\)"):
        register_family(other)


class PluginModel(nn.Module):
    """A model class that only an entry point's family knows."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, hidden), nn.Linear(hidden, 3)


def test_entry_points_register_families_and_recipes(monkeypatch, mlp_family) -> None:
    import importlib.metadata

    from comptlib import family as family_module
    from comptlib import recipes
    from comptlib.recipes import Recipe, list_recipes, register_recipe

    plugin = attrs.evolve(mlp_family, name="plugin-mlp", model_types=(PluginModel,))
    recipe = Recipe(
        "plugin-mlp",
        ("4x1", "8x1"),
        (10.0, 2.0),
        "steps",
        1e-2,
        8,
        lambda width, depth: PluginModel(width),
        lambda batch_size, seed: ([], []),
        "nothing",
    )

    def register() -> None:
        register_family(plugin)
        register_recipe("plugin-mlp", recipe)

    class Entry:
        name = "plugin"

        def load(self):
            return register

    def entry_points(*, group: str):
        assert group == "comptlib.families"
        return [Entry()]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    monkeypatch.setattr(family_module, "_DISCOVERED", set())
    monkeypatch.setattr(family_module, "_REGISTRY", dict(family_module._REGISTRY))
    monkeypatch.setattr(recipes, "RECIPES", dict(recipes.RECIPES))
    assert family_of(PluginModel(4)) is plugin  # found through the entry point, loaded on the miss
    assert list_recipes()["plugin-mlp"] is recipe and "vit" in list_recipes()
    with pytest.raises(ValueError, match="already registered"):
        register_recipe("plugin-mlp", attrs.evolve(recipe, lr=1.0))
