"""Feature-space transfer: inverse distillation from a small teacher.

A :class:`Transferer` turns the outputs of the frozen predecessor (teacher)
and of the grown model (student) into a weighted loss. It owns the trainable
projector when feature sizes differ, or uses the grower's fixed feature map
after exact growth, and it has a weight schedule.

Settings and state are kept apart: a transferer's hyper-parameters are a
frozen :class:`TransferConfig` (``transferer.config``, what the checkpoint
signature and ``get_params`` read; ``config.build()`` makes a fresh loss
module), its state is the projector that :meth:`Transferer.setup` builds.
"""

from __future__ import annotations

import abc
import copy
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from comptlib.errors import ConfigError
from comptlib.family import Outputs
from comptlib.settings import flag, fraction, integer, non_negative, one_of, optional, positive, setting

SCHEDULES: tuple[str, ...] = ("constant", "linear", "cosine")
PROJECTORS: tuple[str, ...] = ("auto", "linear", "fixed")


@attrs.frozen(kw_only=True)
class TransferConfig:
    """The hyper-parameters every transferer has: its weight and the weight's schedule."""

    weight: float = setting(1.0, "Loss weight.", non_negative)
    schedule: str = setting("constant", "constant, linear or cosine decay of the weight.", one_of(*SCHEDULES))
    decay_steps: int | None = setting(None, "Steps the decay runs over (None: the stage).", optional(integer(1)))
    decay_fraction: float | None = setting(
        None, "Or the share of the stage the decay runs over (Knowledge Inheritance: 0.4).", optional(fraction)
    )

    def __attrs_post_init__(self) -> None:
        if self.decay_steps is not None and self.decay_fraction is not None:
            raise ConfigError("decay_fraction: give decay_steps or decay_fraction, not both")

    def span(self, total: int) -> int:
        """The steps the weight decays over in a stage of ``total`` steps."""
        if self.decay_steps is not None:
            return self.decay_steps
        if self.decay_fraction is not None:
            return max(int(round(self.decay_fraction * total)), 1)
        return max(total, 1)


@attrs.frozen(kw_only=True)
class FeatureMSEConfig(TransferConfig):
    weight: float = setting(500.0, "Loss weight (the paper's 500).", non_negative)
    normalize: bool = setting(True, "L2-normalise both features first.", flag)
    projector: str = setting("auto", "auto, linear or fixed (the grower's feature map).", one_of(*PROJECTORS))
    width_reference: int | None = setting(
        None,
        "Scale the loss by feature width D / this (e.g. 512): the weight then means the same at every width.",
        optional(integer(1)),
    )

    def build(self) -> FeatureMSE:
        return FeatureMSE(**attrs.asdict(self))


@attrs.frozen(kw_only=True)
class LogitKLConfig(TransferConfig):
    temperature: float = setting(2.0, "Softmax temperature.", positive)

    def build(self) -> LogitKL:
        return LogitKL(**attrs.asdict(self))


def no_transfer() -> None:
    """The default link of the image classifiers whose growth is exact (ViTs, ResNets): no distillation at all.

    Measured on Fashion-MNIST (``benchmarks/floor.py``, 3 seeds, every model
    at the same steps alone and grown): growing without a transfer ended 0.5
    to 9.5 points above the paper's constant ``FeatureMSE(weight=500)`` on
    ResNets and ViTs, and within about one seed-std of a feature MSE decaying to 0
    over 40 % of the stage, without that loss's teacher forwards. ConvNeXt,
    whose width grows only approximately, keeps the paper's loss: without it
    the grown 64x2 of the digits example ended 1.9 points lower (one seed).
    """
    return None


def freeze(teacher: nn.Module) -> nn.Module:
    """Put ``teacher`` in eval mode with every parameter frozen; returns it."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _valid(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Flatten per-position outputs to rows, keeping only the positions ``mask`` marks valid."""
    if mask is None or x.dim() < 3:
        return x.reshape(-1, x.shape[-1])
    return x[mask.bool()]


class Transferer(nn.Module, abc.ABC):
    """Abstract base: ``weight(step) * divergence(student, teacher)``.

    ``schedule`` is ``"constant"``, ``"linear"`` (decay to 0, Knowledge
    Inheritance style) or ``"cosine"``; the decay runs over ``decay_steps``,
    or ``decay_fraction`` of the stage (Knowledge Inheritance: linear to 0
    over the first 40 %), or the whole stage when both are ``None``. Subclasses implement
    :meth:`divergence`, and :meth:`setup` when they own trainable parts.

    Examples
    --------
    A cosine-distance transferer, and the linear schedule:

    >>> import torch
    >>> import torch.nn.functional as F
    >>> from comptlib import Outputs, Transferer
    >>> class Cosine(Transferer):
    ...     def divergence(self, student, teacher):
    ...         return (1 - F.cosine_similarity(student.features, teacher.features, dim=-1)).mean()
    >>> cos = Cosine(weight=2.0, schedule="linear")
    >>> a = Outputs(loss=None, logits=torch.zeros(2, 3), features=torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    >>> b = Outputs(loss=None, logits=torch.zeros(2, 3), features=torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    >>> [cos.weight_at(step, total=4) for step in range(5)]
    [2.0, 1.5, 1.0, 0.5, 0.0]
    >>> cos(a, b, step=0, total=4).item(), cos(a, b, step=2, total=4).item()
    (1.0, 0.5)
    """

    Config: ClassVar[type[TransferConfig]] = TransferConfig

    def __init__(self, weight: float = 1.0, schedule: str = "constant", decay_steps: int | None = None, **hyper: Any):
        super().__init__()
        self.config = self.Config(weight=weight, schedule=schedule, decay_steps=decay_steps, **hyper)

    def __getattr__(self, name: str) -> Any:
        """A setting reads as an attribute (``transferer.weight``, ``.temperature``), from ``config``."""
        try:
            return super().__getattr__(name)  # parameters, buffers and submodules
        except AttributeError:
            config = self.__dict__.get("config")
            if config is None or name not in attrs.fields_dict(type(config)):
                raise
            return getattr(config, name)

    # scikit-learn: Chain(transferer=...) exposes transferer__weight and friends
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return attrs.asdict(self.config, recurse=False)

    def set_params(self, **params: Any) -> Transferer:
        self.config = attrs.evolve(self.config, **params)
        return self

    def fresh(self) -> Transferer:
        """A new loss module with these settings and none of this one's state (its projector)."""
        build = getattr(self.config, "build", None)
        return build() if build is not None else copy.deepcopy(self)

    def __sklearn_clone__(self) -> Transferer:
        return self.fresh()

    def weight_at(self, step: int, total: int) -> float:
        """The loss weight at ``step`` of a stage of ``total`` steps."""
        c = self.config
        if c.schedule == "constant":
            return c.weight
        frac = min(step / c.span(total), 1.0)
        if c.schedule == "linear":
            return c.weight * (1.0 - frac)
        return c.weight * 0.5 * (1.0 + math.cos(math.pi * frac))

    def extra_repr(self) -> str:
        own = attrs.asdict(self.config, recurse=False)
        shared = [f.name for f in attrs.fields(TransferConfig)]
        settings = {k: own.pop(k) for k in shared} | own  # the shared ones first
        return ", ".join(f"{k}={v!r}" for k, v in settings.items())

    def setup(self, student: Outputs, teacher: Outputs, feature_map: torch.Tensor | None = None) -> None:
        """Build projectors from the shapes of a first batch of outputs (no-op by default)."""

    @abc.abstractmethod
    def divergence(self, student: Outputs, teacher: Outputs) -> torch.Tensor:
        """The unweighted distillation loss for one batch."""

    def forward(self, student: Outputs, teacher: Outputs, step: int = 0, total: int = 1) -> torch.Tensor:
        w = self.weight_at(step, total)
        if w == 0.0:
            return student.logits.new_zeros(())
        return w * self.divergence(student, teacher)


class FeatureMSE(Transferer):
    """MSE between (L2-normalised) final features: CoM-PT's default, weight 500.

    ``projector="auto"`` uses no projector when sizes agree, the grower's fixed
    map after exact growth, and a trainable ``Linear`` otherwise;
    ``"linear"`` always trains one, ``"fixed"`` requires the map.

    Examples
    --------
    Right after exact growth the student's features map exactly onto the
    teacher's, so the loss starts at zero and needs no projector:

    >>> import torch
    >>> from comptlib import FeatureMSE, family_of
    >>> from comptlib.families.vit import build_vit
    >>> _ = torch.manual_seed(0)
    >>> small = build_vit(32, 2)
    >>> grower = family_of(small).grower()
    >>> large = grower.grow(small, build_vit(64, 2)).eval()
    >>> batch = (torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))
    >>> forward = family_of(small).forward
    >>> student, teacher = forward(large, batch), forward(small.eval(), batch)
    >>> mse = FeatureMSE()  # weight 500 on L2-normalised features, as in the paper
    >>> mse.setup(student, teacher, grower.feature_map(small, large))
    >>> mse.proj is None, mse(student, teacher).item() < 1e-9
    (True, True)

    Without a map (e.g. after ``"compt"`` growth) a trainable projector is built:

    >>> trained = FeatureMSE(projector="linear")
    >>> trained.setup(student, teacher)
    >>> trained.proj
    Linear(in_features=64, out_features=32, bias=False)
    """

    Config = FeatureMSEConfig

    def __init__(
        self,
        weight: float = 500.0,
        *,
        normalize: bool = True,
        projector: str = "auto",
        schedule: str = "constant",
        decay_steps: int | None = None,
        decay_fraction: float | None = None,
        width_reference: int | None = None,
    ) -> None:
        super().__init__(
            weight,
            schedule,
            decay_steps,
            decay_fraction=decay_fraction,
            normalize=normalize,
            projector=projector,
            width_reference=width_reference,
        )
        self.proj: nn.Linear | None = None
        self.register_buffer("fixed_map", None)

    def setup(self, student: Outputs, teacher: Outputs, feature_map: torch.Tensor | None = None) -> None:
        ds, dt = student.features.shape[-1], teacher.features.shape[-1]
        projector = self.config.projector
        if projector == "fixed" and feature_map is None:
            raise ValueError("projector='fixed' needs a feature map, which only exact growth provides")
        use_map = feature_map is not None and projector in ("auto", "fixed")
        if use_map:
            if tuple(feature_map.shape) != (ds, dt):
                raise ValueError(f"feature map has shape {tuple(feature_map.shape)}, expected ({ds}, {dt})")
            self.fixed_map = feature_map.to(student.features)
        elif ds != dt or projector == "linear":
            self.proj = nn.Linear(ds, dt, bias=False).to(student.features)

    def divergence(self, student: Outputs, teacher: Outputs) -> torch.Tensor:
        s = _valid(student.features, student.mask)
        t = _valid(teacher.features, student.mask).detach()
        if self.fixed_map is not None:
            s = s @ self.fixed_map
        elif self.proj is not None:
            s = self.proj(s)
        if s.shape[-1] != t.shape[-1]:
            raise ValueError(f"student features have {s.shape[-1]} dims, teacher {t.shape[-1]}; call setup first")
        if self.config.normalize:
            s, t = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
        loss = F.mse_loss(s, t)
        # the mean over D entries of unit vectors shrinks as 1/D: times D / reference, a row's squared distance
        return loss * (t.shape[-1] / self.config.width_reference) if self.config.width_reference else loss


class LogitKL(Transferer):
    """KL(teacher || student) on temperature-softened logits, scaled by T^2.

    Knowledge Inheritance's loss; the language-model family's default (weight
    1, temperature 1, linear decay). Per-token logits are compared only where
    the student's ``mask`` is set.

    Examples
    --------
    >>> import torch
    >>> from comptlib import LogitKL, Outputs
    >>> kl = LogitKL(temperature=2.0)
    >>> mask = torch.tensor([[1, 1, 0]])  # the third token is padding
    >>> logits = torch.randn(1, 3, 5)
    >>> other = logits.clone()
    >>> other[0, 2] += torch.randn(5)  # differs only at the padded position
    >>> student = Outputs(loss=None, logits=logits, features=torch.zeros(1, 3, 2), mask=mask)
    >>> teacher = Outputs(loss=None, logits=other, features=torch.zeros(1, 3, 2))
    >>> kl(student, teacher).item()
    0.0
    >>> kl(student, Outputs(loss=None, logits=-logits, features=teacher.features)).item() > 0
    True
    """

    Config = LogitKLConfig

    def __init__(
        self,
        weight: float = 1.0,
        *,
        temperature: float = 2.0,
        schedule: str = "constant",
        decay_steps: int | None = None,
        decay_fraction: float | None = None,
    ) -> None:
        super().__init__(weight, schedule, decay_steps, decay_fraction=decay_fraction, temperature=temperature)

    def divergence(self, student: Outputs, teacher: Outputs) -> torch.Tensor:
        s = _valid(student.logits, student.mask)
        t = _valid(teacher.logits, student.mask).detach()
        if s.shape[-1] != t.shape[-1]:
            raise ValueError(f"student has {s.shape[-1]} logits, teacher {t.shape[-1]}: the label space must match")
        tau = self.config.temperature
        log_s = F.log_softmax(s.float() / tau, dim=-1)
        log_t = F.log_softmax(t.float() / tau, dim=-1)
        return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * tau**2


class WeightedSum(Transferer):
    """The sum of several transferers, each with its own weight and schedule.

    Examples
    --------
    Feature MSE at a constant weight plus a logit KL that decays to 0:

    >>> import torch
    >>> from comptlib import FeatureMSE, LogitKL, Outputs, WeightedSum
    >>> both = WeightedSum([FeatureMSE(weight=500), LogitKL(weight=1.0, schedule="linear")])
    >>> s = Outputs(loss=None, logits=torch.randn(4, 10), features=torch.randn(4, 8))
    >>> t = Outputs(loss=None, logits=torch.randn(4, 10), features=torch.randn(4, 8))
    >>> both.setup(s, t)  # equal feature sizes: no projector
    >>> mse, kl = both.terms
    >>> torch.allclose(both(s, t, step=3, total=10), mse(s, t, 3, 10) + kl(s, t, 3, 10))
    True
    >>> torch.allclose(both(s, t, step=10, total=10), mse(s, t))  # the KL term has decayed away
    True
    """

    def __init__(self, terms: Sequence[Transferer]) -> None:
        super().__init__(1.0)
        if not terms:
            raise ValueError("WeightedSum needs at least one term")
        self.terms = nn.ModuleList(terms)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"terms": list(self.terms)}

    def set_params(self, **params: Any) -> WeightedSum:
        self.terms = nn.ModuleList(params.get("terms", self.terms))
        return self

    def fresh(self) -> WeightedSum:
        return WeightedSum([term.fresh() for term in self.terms])

    def setup(self, student: Outputs, teacher: Outputs, feature_map: torch.Tensor | None = None) -> None:
        for term in self.terms:
            term.setup(student, teacher, feature_map)

    def divergence(self, student: Outputs, teacher: Outputs) -> torch.Tensor:
        return sum(term.divergence(student, teacher) for term in self.terms)

    def forward(self, student: Outputs, teacher: Outputs, step: int = 0, total: int = 1) -> torch.Tensor:
        return sum(term(student, teacher, step, total) for term in self.terms)
