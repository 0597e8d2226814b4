"""What rebuilds a saved model exactly, with no pickle: a JSON entry in ``model.safetensors``'s own header.

Weights alone do not make a model: a grown torchvision ViT's LayerNorms have
an eps its constructor never sets. The ``comptlib.model`` metadata entry of
the safetensors file (:data:`METADATA_KEY`, read with ``safetensors.safe_open(...).metadata()``;
one file, so weights and recipe are written in one atomic rename) holds the model's class, a
builder and its arguments (a family's :class:`Spec`), and every plain module
attribute (an eps, a dropout rate) that differs from what that builder makes.
:func:`load` rebuilds from it and loads the weights; a ``save_pretrained``
folder needs none of this (its ``config.json`` has it all) and loads with
``from_pretrained``.
"""

from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from comptlib.errors import ComptError

METADATA_KEY = "comptlib.model"
FORMAT = 1
_PLAIN = (bool, int, float, str, type(None))


@attrs.frozen
class Spec:
    """A model's builder (an import path: a class or a function) and its keyword arguments.

    Arguments are JSON values or classes (a ResNet's block type); what the
    builder leaves at its default, :func:`describe` records as a changed
    attribute.
    """

    build: str
    kwargs: dict[str, Any] = attrs.Factory(dict)

    def __call__(self) -> nn.Module:
        return _resolve(self.build)(**self.kwargs)


def path_of(obj: Any) -> str:
    """The import path of a class or function (``torchvision.models.resnet.Bottleneck``)."""
    return f"{obj.__module__}.{obj.__qualname__}"


def _resolve(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _encode(value: Any) -> Any:
    if isinstance(value, type):
        return {"$class": path_of(value)}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        return _resolve(value["$class"]) if set(value) == {"$class"} else {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _plain(value: Any) -> bool:
    return isinstance(value, _PLAIN) or (isinstance(value, tuple) and all(isinstance(v, _PLAIN) for v in value))


def _attributes(module: nn.Module) -> dict[str, Any]:
    return {k: v for k, v in vars(module).items() if not k.startswith("_") and k != "training" and _plain(v)}


def _changed(model: nn.Module, built: nn.Module) -> dict[str, dict[str, Any]]:
    """Per module name, the plain attributes of ``model`` that ``built`` does not have."""
    fresh = dict(built.named_modules())
    out: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        base = _attributes(fresh[name])
        diff = {k: v for k, v in _attributes(module).items() if base.get(k, object()) != v}
        if diff:
            out[name] = diff
    return out


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def describe(model: nn.Module) -> dict[str, Any] | None:
    """The rebuild recipe of ``model`` (a JSON-able dict), or None (with a warning) when its family cannot rebuild it.

    The builder runs on the meta device, so this costs no memory; a rebuilt
    model whose modules or weight shapes differ is refused rather than saved.
    """
    from comptlib.family import family_of

    try:
        spec_of = family_of(model).spec
    except TypeError:
        spec_of = None
    if spec_of is None:
        return None
    spec = spec_of(model)
    with torch.device("meta"):
        built = spec()
    if _shapes(built) != _shapes(model) or [n for n, _ in built.named_modules()] != [
        n for n, _ in model.named_modules()
    ]:
        warnings.warn(
            f"{type(model).__name__}: {spec.build} does not rebuild this model's modules; "
            f"no {METADATA_KEY} metadata is saved, so comptlib.load cannot rebuild it",
            stacklevel=2,
        )
        return None
    return {
        "format": FORMAT,
        "class": path_of(type(model)),
        "build": spec.build,
        "kwargs": _encode(spec.kwargs),
        "attributes": _changed(model, built),
    }


class LoadError(ComptError, ValueError):
    """A folder or file that :func:`load` cannot rebuild a model from, saying what is missing."""


def load(path: str | Path) -> nn.Module:
    """Rebuild a model saved by comptlib and load its weights, running no pickled code; in eval mode.

    ``path`` is a stage folder, a ``save_pretrained`` folder, or a
    ``.safetensors`` file saved by :func:`comptlib.io.save_model`.

    >>> import tempfile, torch, comptlib
    >>> from comptlib.families.vit import build_vit
    >>> from comptlib.io import save_model
    >>> small = build_vit(16, 1)
    >>> large = comptlib.grow(small, build_vit(32, 2)).eval()  # sets LayerNorm eps the constructor does not
    >>> folder = tempfile.mkdtemp()
    >>> _ = save_model(large, f"{folder}/model.safetensors")
    >>> x = torch.randn(2, 3, 8, 8)
    >>> torch.equal(comptlib.load(folder)(x), large(x))
    True
    """
    from comptlib.checkpoint import load_weights

    path = Path(path)
    if path.is_dir():
        if (path / "model").is_dir():  # a stage folder holding a save_pretrained folder
            path = path / "model"
        if (path / "config.json").exists():
            return _from_pretrained(path)
        path = path / "model.safetensors"
    from safetensors import safe_open

    if not path.is_file():
        raise LoadError(f"{path} is missing")
    with safe_open(str(path), "pt") as f:
        entry = (f.metadata() or {}).get(METADATA_KEY)
    if entry is None:
        raise LoadError(
            f"{path} has no {METADATA_KEY} metadata: it was not saved by comptlib with a rebuildable family"
        )
    info = json.loads(entry)
    if info.get("format") != FORMAT:
        raise LoadError(f"{path}: format {info.get('format')!r}, this comptlib reads format {FORMAT}")
    model = Spec(info["build"], _decode(info["kwargs"]))()
    modules = dict(model.named_modules())
    for name, changed in info["attributes"].items():
        for key, value in changed.items():
            setattr(modules[name], key, tuple(value) if isinstance(getattr(modules[name], key), tuple) else value)
    load_weights(path, model)
    return model.eval()


def _from_pretrained(folder: Path) -> nn.Module:
    import transformers

    config = json.loads((folder / "config.json").read_text())
    names = config.get("architectures") or []
    if not names or not hasattr(transformers, names[0]):
        raise LoadError(f"{folder}/config.json names no transformers class in 'architectures': {names}")
    return getattr(transformers, names[0]).from_pretrained(folder).eval()
