"""Model families and their registry.

A family bundles what the chain needs to know about one kind of model: its
grower, its default transferer, its training objective (which also taps the
features a transferer distils) and its evaluation. A registry maps model
classes to families, so users add their own with :func:`register_family`
without editing comptlib, and packages add theirs through the
``comptlib.families`` entry-point group (:func:`discover_families`).

Built-in families register lazily (:func:`register_lazy`): looking up a
torchvision model imports neither transformers nor timm.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import torch
from torch import nn

from comptlib.grower import Grower
from comptlib.portable import Spec


@attrs.define
class Outputs:
    """What one forward pass of a model gives the chain.

    ``loss`` is the plain objective; ``logits`` and ``features`` are what
    transferers compare; ``mask`` marks valid positions for token-level terms.

    Examples
    --------
    A family's ``forward`` returns one; for a ViT the features are the class
    token after the final LayerNorm:

    >>> import torch
    >>> from comptlib import family_of
    >>> from comptlib.families.vit import build_vit
    >>> vit = build_vit(32, 1)
    >>> out = family_of(vit).forward(vit, (torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])))
    >>> tuple(out.logits.shape), tuple(out.features.shape), out.loss.dim(), out.mask
    ((4, 10), (4, 32), 0, None)
    """

    loss: torch.Tensor | None
    logits: torch.Tensor
    features: torch.Tensor
    mask: torch.Tensor | None = None


Forward = Callable[[nn.Module, Any], Outputs]
Evaluate = Callable[[nn.Module, Iterable[Any], torch.device], dict[str, float]]


@attrs.frozen
class Family:
    """One family of models: how to grow, distil, train and evaluate them.

    ``dims`` returns the named sizes of a model (``hidden_dim``, ``num_layers``
    ...) that must not shrink along a chain. ``metric`` names the key of
    ``evaluate``'s result that the chain reports, and ``higher_is_better`` how
    to read it. ``transferer`` is called with no arguments for each link's
    default distillation loss (it may return None: no distillation). ``spec`` gives the :class:`~comptlib.portable.Spec`
    that rebuilds a model (saved in its safetensors header, for :func:`comptlib.load`);
    ``None`` where ``save_pretrained`` saves everything. ``sample_means`` says that every metric of
    ``evaluate`` is a mean over the samples it read (accuracy, mean loss): several processes then
    split the held-out set and weigh each rank's metrics by its samples. Leave it False for whole-set
    metrics (CLIP's retrieval) or means over tokens: every rank then evaluates the whole set.
    :func:`register_family` shows a whole family built and registered.

    Examples
    --------
    >>> import comptlib
    >>> from comptlib.families.vit import build_vit
    >>> vit = comptlib.list_families()["vit"]
    >>> vit.grower.__name__, vit.metric, vit.higher_is_better, vit.transferer()
    ('ViTGrower', 'accuracy', True, None)
    >>> comptlib.list_families()["decoder_lm"].transferer()  # doctest: +ELLIPSIS
    LogitKL(weight=1.0, schedule='linear', ...)
    >>> vit.dims(build_vit(64, 3))["num_heads"]
    4
    """

    name: str
    model_types: tuple[type[nn.Module], ...] = attrs.field(validator=attrs.validators.min_len(1))
    grower: type[Grower]
    transferer: Callable[[], Any]
    forward: Forward
    evaluate: Evaluate
    dims: Callable[[nn.Module], Mapping[str, int]]
    metric: str = "accuracy"
    higher_is_better: bool = True
    spec: Callable[[nn.Module], Spec] | None = None
    sample_means: bool = False


ENTRY_POINT_GROUP = "comptlib.families"
"""The entry-point group through which installed packages add families (and their recipes)."""

_REGISTRY: dict[type[nn.Module], Family] = {}
_LAZY: dict[str, str] = {}  # a model class's path -> the module whose import registers its family
_DISCOVERED: set[str] = set()  # entry points already loaded


def class_path(cls: type) -> str:
    """A class's full import path, e.g. ``torchvision.models.vision_transformer.VisionTransformer``.

    The registry tells classes apart by it, not by their (often shared) names.
    """
    return f"{cls.__module__}.{cls.__qualname__}"


def register_lazy(path: str, module: str) -> None:
    """Import ``module`` (which registers a family) the first time a model of the class at ``path`` is looked up.

    ``path`` is the class's :func:`class_path`. This keeps a lookup from
    importing the libraries of every other family.
    """
    _LAZY[path] = module


def discover_families() -> None:
    """Load the families installed packages declare in the ``comptlib.families`` entry-point group.

    Each entry point names a module whose import registers its families
    (with :func:`register_family`) and recipes (with
    :func:`comptlib.recipes.register_recipe`), or a :class:`Family`, or a
    function to call that does so. Each is loaded once.
    """
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in _DISCOVERED:
            continue
        loaded = entry.load()
        if isinstance(loaded, Family):
            register_family(loaded)
        elif callable(loaded):
            loaded()
        _DISCOVERED.add(entry.name)


def register_family(family: Family, *, replace: bool = False) -> Family:
    """Register ``family`` for each of its model types; returns it.

    Raises ValueError if a type is already taken, unless ``replace=True``.

    Examples
    --------
    A two-layer MLP whose hidden width grows. New hidden units read the input
    and write nothing (zero output columns), so growth keeps the function:

    >>> import torch
    >>> import torch.nn.functional as F
    >>> from torch import nn
    >>> import comptlib
    >>> from comptlib import FeatureMSE, Family, Grower, GrowthError, Outputs, register_family
    >>> class MLP(nn.Sequential):
    ...     def __init__(self, hidden: int) -> None:
    ...         super().__init__(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 2))
    >>> class MLPGrower(Grower):
    ...     def validate(self, source, target):
    ...         if target[0].out_features <= source[0].out_features:
    ...             raise GrowthError(f"hidden must grow: {source[0].out_features} -> {target[0].out_features}")
    ...
    ...     @torch.no_grad()
    ...     def grow(self, source, target):
    ...         h = source[0].out_features
    ...         target[0].weight[:h], target[0].bias[:h] = source[0].weight, source[0].bias
    ...         target[2].weight[:, :h], target[2].weight[:, h:] = source[2].weight, 0.0
    ...         target[2].bias.copy_(source[2].bias)
    ...         return target
    >>> def forward(model, batch):
    ...     x, y = batch
    ...     features = model[1](model[0](x))
    ...     logits = model[2](features)
    ...     return Outputs(loss=F.cross_entropy(logits, y), logits=logits, features=features)
    >>> family = register_family(Family(
    ...     name="doc-mlp", model_types=(MLP,), grower=MLPGrower, transferer=FeatureMSE, forward=forward,
    ...     evaluate=lambda model, loader, device: {}, dims=lambda m: {"hidden": m[0].out_features}))
    >>> comptlib.family_of(MLP(8)) is family
    True
    >>> small = MLP(8)
    >>> large = comptlib.grow(small, MLP(16))
    >>> x = torch.randn(5, 4)
    >>> torch.allclose(small(x), large(x), atol=1e-6)
    True
    """
    for cls in family.model_types:
        taken = _REGISTRY.get(cls)
        if taken is not None and taken.name != family.name and not replace:
            raise ValueError(
                f"{cls.__name__} is already registered to family {taken.name!r} (as {class_path(cls)}); pass replace=True"
            )
    for cls in family.model_types:
        _REGISTRY[cls] = family
    return family


def family_of(model: nn.Module) -> Family:
    """The family registered for ``model``'s class (or its nearest registered base class).

    Classes are matched as classes, not by name: timm's and torchvision's
    ``VisionTransformer`` are two families. Installed entry points are loaded when no
    built-in family matches. Raises TypeError, naming the class's full path
    and the registered ones, when there is none.

    Examples
    --------
    >>> from torch import nn
    >>> from comptlib import family_of
    >>> from comptlib.families.convnet import resnet
    >>> from torchvision.models.resnet import BasicBlock
    >>> family_of(resnet(BasicBlock, [1, 1, 1], [8, 16, 32])).name
    'resnet'
    >>> family_of(nn.Linear(2, 2))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    TypeError: no comptlib family is registered for Linear (torch.nn.modules.linear.Linear); registered types: ...
    """
    import comptlib.families  # noqa: F401  (declares the built-in families, lazily)

    for discover in (False, True):
        if discover:
            discover_families()
        for cls in type(model).__mro__:
            if cls not in _REGISTRY and class_path(cls) in _LAZY:
                importlib.import_module(_LAZY[class_path(cls)])
            if cls in _REGISTRY:
                return _REGISTRY[cls]
    known = ", ".join(sorted({class_path(c) for c in _REGISTRY} | set(_LAZY)))
    raise TypeError(
        f"no comptlib family is registered for {type(model).__name__} ({class_path(type(model))}); "
        f"registered types: {known}. Use comptlib.register_family to add one."
    )


def list_families() -> dict[str, Family]:
    """All families by name: the built-in ones (those whose library is installed), the installed entry
    points' and any added with :func:`register_family`.

    Examples
    --------
    >>> import comptlib
    >>> {"vit", "resnet", "convnext", "clip", "decoder_lm"} <= set(comptlib.list_families())
    True
    >>> comptlib.list_families()["decoder_lm"].metric
    'bits_per_byte'
    """
    from comptlib.families import import_builtin

    import_builtin()
    discover_families()
    return {f.name: f for f in _REGISTRY.values()}


def families() -> dict[str, Family]:
    """Deprecated: :func:`list_families` (``comptlib.families`` is also the package of the built-in families)."""
    warnings.warn("comptlib.families() is deprecated; use comptlib.list_families()", DeprecationWarning, stacklevel=2)
    return list_families()
