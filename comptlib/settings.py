"""Every setting of a chain, declared once: its type, default, range and help text.

:class:`Optim` and :class:`Runtime` group the optimiser and the runtime
settings (``Chain(optim=Optim(lr=3e-3))``), :class:`ChainSettings` checks the
rest of ``Chain``'s arguments. Each field is a :func:`setting`: its validator
refuses a wrong type, a non-finite number or a value out of range with a
:class:`~comptlib.errors.ConfigError` naming the field, and its ``help`` is
what the command line (``comptlib grow --help``) and the TOML schema show;
:mod:`comptlib.config` builds both from these declarations.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from comptlib.errors import ConfigError

Check = Callable[[str, Any], None]
"""A check of one value: ``check(field, value)`` raises a ConfigError naming ``field``."""


def setting(
    default: Any, help: str, check: Check | None = None, *, cli: type | str | None = None, converter: Any = None
) -> Any:
    """An attrs field checked by ``check``; its metadata holds the ``help`` and the CLI's type.

    ``cli`` is the flag's type (``float``, ``int``, ``str``, ``bool``), or
    ``"floats"`` / ``"names"`` for a comma-separated list; ``None``: no flag.
    """

    def validate(_: Any, attribute: attrs.Attribute, value: Any) -> None:
        if check is not None:
            check(attribute.name, value)

    metadata = {"help": help, "cli": cli, "check": check}
    return attrs.field(default=default, validator=validate, metadata=metadata, converter=converter)


# -- checks ---------------------------------------------------------------------
def number(field: str, value: Any) -> float:
    """A finite number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(field, "a number", value)
    if not math.isfinite(value):
        raise ConfigError(field, "finite", value)
    return value


def positive(field: str, value: Any) -> None:
    if not number(field, value) > 0:
        raise ConfigError(field, "positive", value)


def non_negative(field: str, value: Any) -> None:
    if number(field, value) < 0:
        raise ConfigError(field, "non-negative", value)


def fraction(field: str, value: Any) -> None:
    if not 0.0 <= number(field, value) <= 1.0:
        raise ConfigError(field, "in [0, 1]", value)


def integer(low: int | None = None) -> Check:
    """A whole number, at least ``low``."""

    def check(field: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(field, "a whole number", value)
        if low is not None and value < low:
            raise ConfigError(field, "positive" if low == 1 else f"at least {low}", value)

    return check


def flag(field: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(field, "True or False", value)


def text(field: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ConfigError(field, "a string", value)


def one_of(*choices: Any) -> Check:
    def check(field: str, value: Any) -> None:
        if value not in choices:
            raise ConfigError(field, "one of " + ", ".join(str(c) for c in choices), value)

    return check


def optional(inner: Check) -> Check:
    """``None``, or what ``inner`` accepts."""

    def check(field: str, value: Any) -> None:
        if value is not None:
            inner(field, value)

    return check


def each(inner: Check, length: int | None = None) -> Check:
    """A list (or tuple) whose every entry ``inner`` accepts, named ``field[i]``."""

    def check(field: str, value: Any) -> None:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ConfigError(field, "a list", value)
        if length is not None and len(value) != length:
            raise ConfigError(field, f"{length} entries", value)
        for i, v in enumerate(value):
            inner(f"{field}[{i}]", v)

    return check


def budget(field: str, value: Any) -> None:
    """A model's budget: positive, except the first model's, which may be 0 (trained elsewhere)."""
    (non_negative if field.endswith("[0]") else positive)(field, value)


def safe_name(field: str, value: Any) -> None:
    """A model name is a folder of the run directory: one plain path component."""
    text(field, value)
    if value in ("", ".", "..") or any(c in value for c in "/\\\0") or value != value.strip():
        raise ConfigError(field, "a plain file name (no '/', '\\', '..' or surrounding spaces)", value)


def unique_names(field: str, value: Any) -> None:
    optional(each(safe_name))(field, value)
    if value is not None and len(set(value)) != len(value):
        raise ConfigError(field, "distinct names (each model has its own folder)", value)


def open_fraction(field: str, value: Any) -> None:
    if not 0.0 < number(field, value) < 1.0:
        raise ConfigError(field, "in (0, 1)", value)


def _logger(field: str, value: Any) -> None:
    """A tracker's name, or a logger object (a :class:`~comptlib.callbacks.Callback`)."""
    from comptlib.callbacks import Callback
    from comptlib.loggers import LOGGERS

    if isinstance(value, str) and value not in LOGGERS or not isinstance(value, (str, Callback)):
        raise ConfigError(field, "one of " + ", ".join(LOGGERS) + " or a comptlib.loggers.Logger", value)


# -- the declarations -----------------------------------------------------------
SCHEDULES = ("cosine", "wsd")


class _Params:
    """scikit-learn's view of a frozen settings group: nested ``optim__lr`` keys, cloned as itself."""

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return attrs.asdict(self, recurse=False)

    def __sklearn_clone__(self) -> Any:
        return self  # frozen: nothing to copy


@attrs.frozen(kw_only=True)
class Optim(_Params):
    """The optimiser (a fresh AdamW per stage) and its per-stage schedule: warm-up, then cosine or WSD.

    ``warmup`` is a fraction of the stage's steps. Grown models train at
    ``lr * grown_lr_scale`` re-warmed over ``grown_warmup``; the defaults (the
    first model's peak, 5 %) won the ablation in ``docs/benchmarks.md``.
    ``schedule="wsd"`` (warmup-stable-decay) holds the peak and decays
    linearly to ``min_lr_ratio`` over the last ``decay`` of the stage's steps:
    the weights before the decay are a model to grow from
    (``Chain(grow_from="pre_decay")``), and the budget search evaluates
    decayed branches, as a stage told to stop there would end
    (:meth:`comptlib.stage.Stage.decay_branch`).
    """

    lr: float = setting(1e-3, "Peak learning rate of the first model.", positive, cli=float)
    weight_decay: float = setting(0.05, "AdamW weight decay, on matrices only.", non_negative)
    betas: tuple[float, float] = setting((0.9, 0.999), "AdamW betas.", each(fraction, length=2))
    warmup: float = setting(0.05, "Warm-up, a fraction of model 0's steps.", fraction)
    min_lr_ratio: float = setting(0.0, "Where the cosine decay ends, a fraction of the peak.", fraction)
    grad_clip: float | None = setting(
        1.0, "Clip the gradient norm at this value (None: no clipping).", optional(positive)
    )
    grown_lr_scale: float = setting(1.0, "Peak-LR multiplier of grown models.", positive)
    grown_warmup: float = setting(0.05, "Warm-up of grown models, a fraction of their steps.", fraction)
    schedule: str = setting(
        "cosine",
        "After the warm-up: cosine decay, or wsd (constant peak, then a linear decay).",
        one_of(*SCHEDULES),
        cli=str,
    )
    decay: float = setting(0.2, "With schedule=wsd: the decay's share of each stage's steps.", open_fraction, cli=float)

    def decay_start(self, total: int) -> int:
        """The step at which a stage of ``total`` steps starts decaying (``total``: never, under cosine)."""
        return total - int(round(self.decay * total)) if self.schedule == "wsd" else total

    def peak(self, grown: bool) -> tuple[float, float]:
        """The peak learning rate and warm-up fraction of a stage."""
        return (self.lr * self.grown_lr_scale, self.grown_warmup) if grown else (self.lr, self.warmup)


STRATEGIES = ("ddp", "fsdp")
GROW_FROM = ("final", "pre_decay")
PRECISIONS = ("fp32", "bf16", "fp16")
TEACHER_DTYPES = (None, "bf16")


def _teacher_dtype(field: str, value: Any) -> None:
    if value not in TEACHER_DTYPES:
        raise ConfigError(field, "None or 'bf16'", value)


@attrs.frozen(kw_only=True)
class Runtime(_Params):
    """Where and how the steps run; only ``precision`` and ``teacher_dtype`` change the numbers."""

    device: str = setting("auto", "auto, cpu or cuda[:N].", text, cli=str)
    precision: str = setting("fp32", "fp32, bf16 (autocast, GPU or CPU) or fp16 (GPU).", one_of(*PRECISIONS), cli=str)
    teacher_dtype: str | None = setting(None, "None or bf16: a bf16 copy of the teacher.", _teacher_dtype)
    compile: bool = setting(False, "torch.compile the training step.", flag, cli=bool)
    strategy: str = setting(
        "ddp", "Several processes: ddp (a replica each) or fsdp (sharded).", one_of(*STRATEGIES), cli=str
    )


UNITS = ("steps", "epochs")
NONFINITE = ("stop", "skip")


@attrs.frozen(kw_only=True)
class ChainSettings:
    """The settings of :class:`~comptlib.Chain` that are neither optimiser nor runtime, checked in one place."""

    budgets: Sequence[float] | None = setting(
        None,
        "Budget per model, smallest first, in the unit (comma-separated on the command line).",
        optional(each(budget)),
        cli=list,
    )
    unit: str = setting("epochs", "Budget unit: epochs or steps.", one_of(*UNITS), cli=str)
    baseline_budget: float | None = setting(None, "Each model's budget if trained alone.", optional(non_negative))
    first_trained: bool = setting(False, "Model 0 is trained already.", flag)
    eval_every: int = setting(
        0, "Evaluate every N steps (0: only after growth and at stage ends).", integer(0), cli=int
    )
    targets: Sequence[float | None] | None = setting(
        None,
        "Budget search: a held-out metric per model; a stage stops once it gets there (under WSD: a decayed branch).",
        optional(each(optional(number))),
    )
    seed: int = setting(0, "Random seed for models, data order and growth.", integer(), cli=int)
    names: Sequence[str] | None = setting(None, "Model names (folder names of the run directory).", unique_names)
    progress: bool = setting(True, "Show progress bars.", flag)
    copy: bool = setting(True, "Train copies of the models given.", flag)
    checkpoint_dir: str | None = setting(None, "Run directory for checkpoints.", optional(text))
    checkpoint_every: int = setting(0, "Mid-stage checkpoint every N steps.", integer(0), cli=int)
    resume: bool = setting(False, "Continue the run in checkpoint_dir.", flag)
    inherited: str = setting(
        "full", "full or lora: how a grown model trains its inherited weights.", one_of("full", "lora")
    )
    lora_rank: int = setting(8, "Rank of the inherited weights' LoRA update.", integer(1))
    on_nonfinite: str = setting(
        "stop",
        "On a non-finite loss or gradient: stop (DivergenceError) or skip the step.",
        one_of(*NONFINITE),
        cli=str,
    )
    max_skips: int = setting(0, "With on_nonfinite=skip: steps a stage may skip before it stops.", integer(0), cli=int)
    grow_from: str = setting(
        "final",
        "Grow each model from its predecessor's final weights, or (pre_decay, needs schedule=wsd) from its weights "
        "where its LR decay began; the teacher is the final model either way.",
        one_of(*GROW_FROM),
        cli=str,
    )
    shrink: float = setting(
        1.0, "Shrink-and-perturb after growth: multiply a grown model's matrices by this.", fraction, cli=float
    )
    perturb: float = setting(
        0.0, "Shrink-and-perturb after growth: add Gaussian noise of this std to its matrices.", non_negative, cli=float
    )
    growth_snr_db: float | None = setting(
        None,
        "Noise on the entries exact growth leaves free, at this signal-to-noise ratio in dB (e.g. 10); "
        "only for a grower given by name.",
        optional(number),
        cli=float,
    )
    loggers: Sequence[Any] | None = setting(
        None,
        "Experiment trackers, offline, in the run directory: tensorboard, wandb, mlflow (comma-separated).",
        optional(each(_logger)),
        cli="names",
    )


def declared(cls: type, name: str, **override: Any) -> Any:
    """``cls``'s field ``name`` declared again (same check, help and flag) in another group, e.g. the run config.

    ``override`` replaces the ``default``, ``help``, ``cli`` or ``converter``.
    """
    field = attrs.fields_dict(cls)[name]
    spec = {"default": field.default, **{k: field.metadata[k] for k in ("help", "cli", "check")}} | override
    return setting(spec.pop("default"), spec.pop("help"), spec.pop("check"), **spec)
