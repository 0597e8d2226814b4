"""A run's configuration (``comptlib grow``): from flags or a TOML file, validated before anything runs.

:class:`RunConfig` is the TOML schema and the source of the CLI's options: its
fields are the declarations of :mod:`comptlib.settings` (same checks, same
help) plus what only a run from the command line has (family, sizes, data).
"""

from __future__ import annotations

import functools
import json
import tomllib
from pathlib import Path
from typing import Any

import attrs

from comptlib.errors import ConfigError
from comptlib.grower import METHODS
from comptlib.recipes import Recipe, list_recipes
from comptlib.settings import (
    ChainSettings,
    Optim,
    Runtime,
    declared,
    each,
    flag,
    integer,
    number,
    optional,
    setting,
    text,
)

__all__ = ["ConfigError", "RunConfig"]


def _family(field: str, value: Any) -> None:
    recipes = list_recipes()  # read at run time: recipes registered later, or by entry points, count
    if value not in recipes:
        raise ConfigError(f"{field}: {value!r} is not one of {', '.join(recipes)}")


def _sizes(recipe: Recipe, sizes: Any) -> None:
    each(text)("sizes", sizes)
    if not sizes:
        raise ConfigError("sizes: give at least one WIDTHxDEPTH")
    for size in sizes:
        try:
            recipe.size(size)
        except ValueError as err:
            raise ConfigError(f"sizes: {err}") from None


def _method(field: str, value: Any) -> None:
    if value not in METHODS:
        raise ConfigError(field, "one of " + ", ".join(METHODS), value)


def _tuple(value: Any) -> Any:
    """TOML and flags give lists; the config keeps tuples (anything else is left for the check to name)."""
    return tuple(value) if isinstance(value, list) else value


@attrs.frozen(kw_only=True)
class RunConfig:
    """Everything ``comptlib grow`` needs to run a chain; recipe fields default to the family's recipe.

    Each field is a TOML key of ``[chain]`` and a ``--flag`` of the CLI.
    """

    family: str = setting("vit", "The recipe: " + ", ".join(list_recipes()) + ".", _family, cli=str)
    sizes: tuple[str, ...] = setting(
        None, "Sizes, smallest first, WIDTHxDEPTH,... (default: the recipe's).", cli="names", converter=_tuple
    )
    budgets: tuple[float, ...] = declared(ChainSettings, "budgets", cli="floats", converter=_tuple)
    unit: str = declared(ChainSettings, "unit", default=None)
    method: str = setting("exact", "Growth: exact (function-preserving) or compt (the paper's).", _method, cli=str)
    transfer: bool = setting(
        True,
        "Distil from the predecessor with the family's default transfer (none for ViTs and ResNets).",
        flag,
        cli=bool,
    )
    lr: float = declared(Optim, "lr", default=None)
    batch_size: int = setting(None, "Batch size.", integer(1), cli=int)
    seed: int = declared(ChainSettings, "seed")
    device: str = declared(Runtime, "device")
    data: str | None = setting(
        None, "Your data instead of the built-in: an image folder, or a text file or folder.", optional(text), cli=str
    )
    checkpoint_every: int = declared(ChainSettings, "checkpoint_every", default=50)
    precision: str = declared(Runtime, "precision")
    compile: bool = declared(Runtime, "compile")
    strategy: str = declared(Runtime, "strategy")
    num_workers: int = setting(0, "Data-loading worker processes per rank.", integer(0), cli=int)
    targets: tuple[float, ...] | None = setting(
        None,
        "Budget search: a held-out metric per grown model (e.g. 0.95,0.96); each stage stops once it gets there, "
        "its budget only a cap (evaluated every --eval-every steps, 10 if not given; with --schedule wsd each "
        "check is of a decayed branch, as a run stopped there would end).",
        optional(each(number)),
        cli="floats",
        converter=_tuple,
    )
    eval_every: int = declared(
        ChainSettings,
        "eval_every",
        help="Evaluate every N steps (default: 10 with --targets, else only at stage ends).",
    )
    on_nonfinite: str = declared(ChainSettings, "on_nonfinite")
    max_skips: int = declared(ChainSettings, "max_skips")
    schedule: str = declared(Optim, "schedule")
    decay: float = declared(Optim, "decay")
    grow_from: str = declared(ChainSettings, "grow_from")
    shrink: float = declared(ChainSettings, "shrink")
    perturb: float = declared(ChainSettings, "perturb")
    growth_snr_db: float | None = declared(ChainSettings, "growth_snr_db")
    tokenizer: str | None = setting(
        None,
        "Language recipes: bpe (a byte-level BPE trained on the stdlib corpus, cached) or a tokenizer.json "
        "or Hugging Face tokenizer folder, e.g. from comptlib tokenizer train (default: bytes).",
        optional(text),
        cli=str,
    )
    vocab_size: int | None = setting(
        None, "With --tokenizer bpe: its vocabulary size (default 4096).", optional(integer(257)), cli=int
    )
    text_column: str = setting(
        "text", "With --tokenizer: the column of jsonl/parquet/csv or datasets data that holds the text.", text, cli=str
    )
    max_bytes: int | None = setting(
        None,
        "Language recipes: read at most this many bytes of text (default 2,000,000); the output says what was read.",
        optional(integer(1)),
        cli=int,
    )
    val_data: str | None = setting(
        None,
        "Your held-out data: an image folder or a text file or folder (default: val/, validation/ or test/ beside "
        "--data's train/, else a split of --data).",
        optional(text),
        cli=str,
    )
    image_size: int | None = setting(
        None,
        "Image recipes on your --data: the square size images are resized to and the models built for "
        "(default: the first image's larger side; a ViT's patch is the smallest divisor making at most 8x8 patches).",
        optional(integer(2)),
        cli=int,
    )
    log_to: tuple[str, ...] | None = declared(ChainSettings, "loggers", cli="names", converter=_tuple)

    def __attrs_post_init__(self) -> None:
        _sizes(self.recipe_base, self.sizes)
        _data_options(self)
        if len(self.budgets) != len(self.sizes):
            raise ConfigError(f"budgets: {len(self.budgets)} entries for {len(self.sizes)} sizes")
        if self.targets is not None and len(self.targets) != len(self.sizes) - 1:
            raise ConfigError(
                f"targets: {len(self.targets)} entries for {len(self.sizes) - 1} grown models (one per size but the first)"
            )

    @property
    def recipe_base(self) -> Recipe:
        """The family's recipe as registered, before ``tokenizer`` changes its data."""
        return list_recipes()[self.family]

    @property
    def recipe(self) -> Recipe:
        """The recipe this run trains: the family's, on ``tokenizer`` when one is given."""
        if self.tokenizer is None:
            return self.recipe_base
        return _tokenized(self.family, self.tokenizer, self.vocab_size or 4096, self.max_bytes)

    @property
    def data_name(self) -> str:
        """The data as reports name it: the user's path (and tokenizer), or the recipe's description."""
        if self.data is None:
            return self.recipe.data
        return self.data if self.tokenizer is None else f"{self.data} ({self.recipe.data.split(', ')[-1]})"

    @classmethod
    def resolve(cls, file: Path | None = None, **flags: Any) -> RunConfig:
        """Recipe defaults, overridden by the TOML ``file``, overridden by ``flags`` that are not None.

        Every error is a :class:`ConfigError` in the CLI's style (``field: ...``).
        """
        try:
            return cls._resolve(_read_toml(file) if file is not None else {}, flags)
        except ConfigError as err:
            raise ConfigError(err.for_cli()) from None

    @classmethod
    def _resolve(cls, values: dict[str, Any], flags: dict[str, Any]) -> RunConfig:
        values = values | {k: v for k, v in flags.items() if v is not None}
        unknown = set(values) - {f.name for f in attrs.fields(cls)}
        if unknown:
            raise ConfigError(
                f"{sorted(unknown)[0]}: unknown field; fields are {', '.join(f.name for f in attrs.fields(cls))}"
            )
        family = values.get("family", "vit")
        _family("family", family)
        recipe = list_recipes()[family]
        defaults = {"sizes": recipe.sizes, "budgets": recipe.budgets, "unit": recipe.unit}
        defaults |= {"lr": recipe.lr, "batch_size": recipe.batch_size}
        if "sizes" in values and "budgets" not in values:
            _sizes(recipe, _tuple(values["sizes"]))
            if len(values["sizes"]) != len(recipe.budgets):
                raise ConfigError(f"budgets: give one per size ({len(values['sizes'])} sizes)")
        return cls(**(defaults | values))

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    def group(self, cls: type) -> dict[str, Any]:
        """The fields that are ``cls``'s settings (an :class:`Optim`, :class:`Runtime`...), to build it with."""
        names = {f.name for f in attrs.fields(cls)}
        return {k: v for k, v in self.to_dict().items() if k in names}


def toml_template(family: str = "vit") -> str:
    """A ``[chain]`` TOML file with every field, at ``family``'s values, each under its help: the config schema.

    Generated from the same declarations as the CLI's flags, so the two never
    disagree; ``comptlib config > chain.toml`` writes it for editing.
    """
    config = RunConfig.resolve(family=family)
    lines = [f"# comptlib grow --config FILE: the {family} recipe's run, every field at its value.", "[chain]"]
    for field in attrs.fields(RunConfig):
        value = getattr(config, field.name)
        lines.append(f"# {field.metadata['help']}")
        lines.append(f"{field.name} = {_toml(value)}" if value is not None else f"# {field.name} = (not set)")
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    """A TOML literal for a config value (str, bool, int, float or a list of them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    return repr(value)


def _data_options(cfg: RunConfig) -> None:
    """Options about the data make sense only with their data: a language recipe, a tokenizer, an image --data."""
    if cfg.val_data is not None and cfg.data is None:
        raise ConfigError("val_data: a held-out set for your --data; give --data too")
    if cfg.image_size is not None and (cfg.data is None or cfg.recipe_base.user_data != "images"):
        raise ConfigError("image_size: the size your --data images are resized to; give an image --data")
    given = [name for name in ("tokenizer", "max_bytes") if getattr(cfg, name) is not None]
    if cfg.text_column != "text":
        given.append("text_column")
    if given and cfg.recipe_base.user_data != "text":
        language = ", ".join(n for n, r in list_recipes().items() if r.user_data == "text")
        raise ConfigError(f"{given[0]}: the {cfg.family} recipe does not read text; language recipes are {language}")
    if cfg.vocab_size is not None and cfg.tokenizer != "bpe":
        raise ConfigError("vocab_size: only with --tokenizer bpe (a saved tokenizer has its own vocabulary)")
    if cfg.text_column != "text" and cfg.tokenizer is None:
        raise ConfigError("text_column: columns of jsonl/parquet/datasets data are read with a --tokenizer")
    if cfg.tokenizer not in (None, "bpe") and not Path(cfg.tokenizer).exists():
        raise ConfigError(f"tokenizer: no tokenizer.json or tokenizer folder at {cfg.tokenizer} (or give bpe)")


@functools.lru_cache(maxsize=8)
def _tokenized(family: str, tokenizer: str, vocab_size: int, max_bytes: int | None) -> Recipe:
    """The family's recipe on a trained BPE (``"bpe"``) or a saved tokenizer; built once per process."""
    from comptlib.recipes import with_bpe, with_tokenizer
    from comptlib.text import load_tokenizer

    recipe = list_recipes()[family]
    if tokenizer == "bpe":
        return with_bpe(recipe, vocab_size, max_bytes=max_bytes)
    try:
        loaded = load_tokenizer(tokenizer)
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(f"tokenizer: {tokenizer} is not a tokenizer.json or tokenizer folder ({err})") from None
    if loaded.eos_token_id is None:
        raise ConfigError(f"tokenizer: {tokenizer} has no EOS token to separate documents")
    return with_tokenizer(recipe, loaded, f"tokenizer {tokenizer} ({len(loaded):,} tokens)", max_bytes=max_bytes)


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
