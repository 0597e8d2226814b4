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
    to read it.
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
    """
    for cls in family.model_types:
        taken = _REGISTRY.get(cls)
        if taken is not None and taken.name != family.name and not replace:
            raise ValueError(f"{cls.__name__} is already registered to family {taken.name!r}; pass replace=True")
    for cls in family.model_types:
        _REGISTRY[cls] = family
    return family


def family_of(model: nn.Module) -> Family:
    """The family registered for ``model``'s class (or its nearest registered base class)."""
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
    """All registered families by name."""
    import comptlib.families  # noqa: F401

    return {f.name: f for f in _REGISTRY.values()}
