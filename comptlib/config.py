"""A run's configuration: from flags or a TOML file, validated before anything runs."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import attrs

from comptlib.errors import ConfigError
from comptlib.recipes import RECIPES, Recipe


def _check_sizes(family: str, sizes: tuple[str, ...]) -> None:
    if not sizes:
        raise ConfigError("sizes: give at least one WIDTHxDEPTH")
    for size in sizes:
        try:
            RECIPES[family].size(size)
        except ValueError as err:
            raise ConfigError(f"sizes: {err}") from None


def _sizes(instance: RunConfig, _: Any, value: tuple[str, ...]) -> None:
    _check_sizes(instance.family, value)


def _budgets(instance: RunConfig, _: attrs.Attribute, value: tuple[float, ...]) -> None:
    if len(value) != len(instance.sizes):
        raise ConfigError(f"budgets: {len(value)} entries for {len(instance.sizes)} sizes")
    if not all(math.isfinite(b) and b >= 0 for b in value):
        raise ConfigError(f"budgets: must be finite and not negative, got {list(value)}")


def _in(*choices: str):
    def check(_: Any, attribute: attrs.Attribute, value: str) -> None:
        if value not in choices:
            raise ConfigError(f"{attribute.name}: {value!r} is not one of {', '.join(choices)}")

    return check


def _positive(_: Any, attribute: attrs.Attribute, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{attribute.name}: must be positive and finite, got {value}")


def _non_negative(_: Any, attribute: attrs.Attribute, value: int) -> None:
    if value < 0:
        raise ConfigError(f"{attribute.name}: must not be negative, got {value}")


def _number(name: str, kind: type = float):
    """A converter to ``kind`` whose error names the field (attrs converters do not know it)."""

    def convert(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{name}: must be a number, got {value!r}")
        try:
            number = kind(value)
        except ValueError:
            raise ConfigError(f"{name}: must be a number, got {value!r}") from None
        if kind is int and isinstance(value, float) and value != number:
            raise ConfigError(f"{name}: must be a whole number, got {value!r}")
        return number

    return convert


def _numbers(name: str, optional: bool = False):
    """A converter to a tuple of floats whose error names the field."""
    one = _number(name)

    def convert(value: Any) -> tuple[float, ...] | None:
        if value is None and optional:
            return None
        if isinstance(value, (str, bytes, int, float)) or not hasattr(value, "__iter__"):
            raise ConfigError(f"{name}: must be a list of numbers (one per model), got {value!r}")
        return tuple(one(v) for v in value)

    return convert


def _targets(instance: RunConfig, _: attrs.Attribute, value: tuple[float, ...] | None) -> None:
    if value is not None and len(value) != len(instance.sizes) - 1:
        raise ConfigError(
            f"targets: {len(value)} entries for {len(instance.sizes) - 1} grown models (one per size but the first)"
        )
    if value is not None and not all(math.isfinite(t) for t in value):
        raise ConfigError(f"targets: must be finite, got {list(value)}")


@attrs.frozen(kw_only=True)
class RunConfig:
    """Everything ``comptlib grow`` needs to run a chain; fields default to the family's recipe."""

    family: str = attrs.field(validator=_in(*RECIPES))
    sizes: tuple[str, ...] = attrs.field(converter=tuple, validator=_sizes)
    budgets: tuple[float, ...] = attrs.field(converter=_numbers("budgets"), validator=_budgets)
    unit: str = attrs.field(validator=_in("steps", "epochs"))
    method: str = attrs.field(default="exact", validator=_in("exact", "compt"))
    transfer: bool = True
    lr: float = attrs.field(converter=_number("lr"), validator=_positive)
    batch_size: int = attrs.field(converter=_number("batch_size", int), validator=_positive)
    seed: int = attrs.field(default=0, converter=_number("seed", int), validator=_non_negative)
    device: str = "auto"
    data: str | None = None
    checkpoint_every: int = attrs.field(default=50, converter=_number("checkpoint_every", int), validator=_non_negative)
    precision: str = attrs.field(default="fp32", validator=_in("fp32", "bf16", "fp16"))
    compile: bool = False
    strategy: str = attrs.field(default="ddp", validator=_in("ddp", "fsdp"))
    num_workers: int = attrs.field(default=0, converter=_number("num_workers", int), validator=_non_negative)
    targets: tuple[float, ...] | None = attrs.field(default=None, converter=_numbers("targets", optional=True), validator=_targets)
    eval_every: int = attrs.field(default=0, converter=_number("eval_every", int), validator=_non_negative)

    @property
    def recipe(self) -> Recipe:
        return RECIPES[self.family]

    @classmethod
    def resolve(cls, file: Path | None = None, **flags: Any) -> RunConfig:
        """Recipe defaults, overridden by the TOML ``file``, overridden by ``flags`` that are not None."""
        values: dict[str, Any] = {}
        if file is not None:
            values = _read_toml(file)
        values |= {k: v for k, v in flags.items() if v is not None}
        family = values.get("family", "vit")
        if family not in RECIPES:
            raise ConfigError(f"family: {family!r} is not one of {', '.join(RECIPES)}")
        recipe = RECIPES[family]
        defaults = {
            "family": family,
            "sizes": recipe.sizes,
            "budgets": recipe.budgets,
            "unit": recipe.unit,
            "lr": recipe.lr,
            "batch_size": recipe.batch_size,
        }
        if "sizes" in values:
            _check_sizes(family, tuple(values["sizes"]))
        if "sizes" in values and "budgets" not in values and len(values["sizes"]) != len(recipe.budgets):
            raise ConfigError(f"budgets: give one per size ({len(values['sizes'])} sizes)")
        unknown = set(values) - {f.name for f in attrs.fields(cls)}
        if unknown:
            raise ConfigError(
                f"{sorted(unknown)[0]}: unknown field; fields are {', '.join(f.name for f in attrs.fields(cls))}"
            )
        try:
            return cls(**(defaults | values))
        except (TypeError, ValueError) as err:
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(str(err)) from None

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config: {path} does not exist")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"config: {path} is not UTF-8 text (byte {err.start}); TOML files are UTF-8") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config: {path} is not valid TOML: {err}") from None
    return data.get("chain", data)
