"""Model families and their registry.

A family bundles what the chain needs to know about one kind of model: its
grower, its default transferer, its training objective (which also taps the
features a transferer distils) and its evaluation. A registry maps model
classes to families, so users add their own with :func:`register_family`
without editing comptlib.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import torch
from torch import nn

from comptlib.grower import Grower


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
    default distillation loss. :func:`register_family` shows a whole family
    built and registered.

    Examples
    --------
    >>> import comptlib
    >>> from comptlib.families.vit import build_vit
    >>> vit = comptlib.families()["vit"]
    >>> vit.grower.__name__, vit.metric, vit.higher_is_better, vit.transferer()
    ('ViTGrower', 'accuracy', True, FeatureMSE(weight=500.0, schedule='constant', decay_steps=None, normalize=True, projector='auto'))
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


_REGISTRY: dict[type[nn.Module], Family] = {}


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
            raise ValueError(f"{cls.__name__} is already registered to family {taken.name!r}; pass replace=True")
    for cls in family.model_types:
        _REGISTRY[cls] = family
    return family


def family_of(model: nn.Module) -> Family:
    """The family registered for ``model``'s class (or its nearest registered base class).

    Raises TypeError, listing the registered types, when there is none.

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
    TypeError: no comptlib family is registered for Linear; registered types: ...
    """
    import comptlib.families  # noqa: F401  (registers the built-in families)

    for cls in type(model).__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls]
    known = ", ".join(sorted({c.__name__ for c in _REGISTRY}))
    raise TypeError(
        f"no comptlib family is registered for {type(model).__name__}; "
        f"registered types: {known}. Use comptlib.register_family to add one."
    )


def families() -> dict[str, Family]:
    """All registered families by name: the built-in ones and any added with :func:`register_family`.

    Examples
    --------
    >>> import comptlib
    >>> {"vit", "resnet", "convnext", "clip", "decoder_lm"} <= set(comptlib.families())
    True
    >>> comptlib.families()["decoder_lm"].metric
    'bits_per_byte'
    """
    import comptlib.families  # noqa: F401

    return {f.name: f for f in _REGISTRY.values()}
