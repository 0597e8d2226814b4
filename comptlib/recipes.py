"""Built-in runs: for each family, a size ladder, real offline data, budgets and settings.

``comptlib grow --family NAME`` and the examples start from these. A size is
``WIDTHxDEPTH``; what width and depth mean is the family's own (hidden size
and layers for transformers, base channels and blocks per stage for ConvNets).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import attrs
from torch import nn

from comptlib.errors import ConfigError

Loaders = tuple[Any, Any]


def parse_size(text: str) -> tuple[int, int]:
    """``"64x4"`` -> ``(64, 4)``; ValueError naming the size otherwise."""
    try:
        width, depth = (int(v) for v in text.strip().lower().split("x"))
    except ValueError:
        raise ValueError(f"size {text!r} is not WIDTHxDEPTH, e.g. 64x4") from None
    if width < 1 or depth < 1:
        raise ValueError(f"size {text!r} needs a positive width and depth")
    return width, depth


@attrs.frozen
class Recipe:
    """A default chain for one family: how to build a size, which data, which budgets."""

    family: str
    sizes: tuple[str, ...]
    budgets: tuple[float, ...]
    unit: str = attrs.field(validator=attrs.validators.in_(("steps", "epochs")))
    lr: float = attrs.field(validator=attrs.validators.gt(0))
    batch_size: int = attrs.field(validator=attrs.validators.gt(0))
    build: Callable[[int, int], nn.Module]
    loaders: Callable[[int, int], Loaders]  # (batch_size, seed) -> (train, val)
    data: str
    grower_options: dict[str, Any] = attrs.field(factory=dict)
    user_data: str | None = None  # what --data may point at: "images" (an image folder) or "text"
    image_size: int = 0
    presets: dict[str, dict[str, int]] = attrs.field(factory=dict)  # named sizes: keyword arguments of build
    tokenizer: Any = None  # language recipes: a Hugging Face tokenizer instead of bytes (see with_bpe)

    def size(self, text: str) -> dict[str, int]:
        """Keyword arguments of ``build`` for a size: a preset name or ``WIDTHxDEPTH``."""
        if text in self.presets:
            return self.presets[text]
        try:
            width, depth = parse_size(text)
        except ValueError:
            if self.presets:
                raise ValueError(
                    f"size {text!r} is neither WIDTHxDEPTH nor a preset ({', '.join(self.presets)})"
                ) from None
            raise
        return {"width": width, "depth": depth}

    def data_loaders(
        self,
        batch_size: int,
        seed: int,
        path: str | None = None,
        *,
        text_column: str = "text",
        max_bytes: int | None = None,
        val_path: str | None = None,
        image_size: int | None = None,
    ) -> tuple[Any, Any, dict[str, Any]]:
        """Train and held-out loaders, and what the models must be built with (``num_classes``).

        ``path`` replaces the built-in data: an image folder (one sub-folder per
        class) for image recipes, a text file or folder for language recipes
        (with a tokenizer, also a token file, a ``datasets`` folder or
        jsonl/parquet files, whose ``text_column`` holds the text). Text is
        read up to ``max_bytes`` (built-in text too); by default 2,000,000
        bytes without a tokenizer, all of it with one (tokenized once, then
        memory-mapped). The held-out data is ``val_path``, or the folder's
        ``val/`` (``validation/``, ``test/``) beside its ``train/``
        (:func:`comptlib.data.splits`), else a split of the training data.
        A user's images are resized to ``image_size`` squares, by default the
        size of the first training image, read as one channel when all are
        grey, and the models built for that size and those channels.
        """
        if path is None and (max_bytes is None or self.user_data != "text"):
            return (*self.loaders(batch_size, seed), {})
        from comptlib import data

        path = path or "stdlib"
        if self.user_data == "images":
            size, channels = data.image_format(path)
            size = image_size or size
            options = {"val_root": val_path, "seed": seed, "channels": channels}
            train, val, classes = data.image_folder_loaders(path, size, batch_size, **options)
            built = {"num_classes": classes, "image_size": size}
            return train, val, built | ({"in_channels": channels} if channels != 3 else {})
        if self.user_data == "text":
            path, val_path = data.splits(path, val_path) if path != "stdlib" else (path, val_path)
        if self.user_data == "text" and self.tokenizer is not None:
            from comptlib.text import lm_loaders

            options = {"text_column": text_column, "max_bytes": max_bytes, "val_source": val_path, "seed": seed}
            return (*lm_loaders(path, self.tokenizer, batch_size=batch_size, **options), {})
        if self.user_data == "text":
            cap = max_bytes or data.DEFAULT_TEXT_BYTES
            return (*data.text_loaders(batch_size, seed=seed, source=path, max_bytes=cap, val_source=val_path), {})
        raise ValueError(f"data: the {self.family} recipe reads only its built-in data ({self.data})")

    def grower(self, method: str) -> Any:
        """What ``Chain(grower=...)`` gets: the method name, or the family's grower built with the recipe's options."""
        if not self.grower_options:
            return method
        from comptlib.family import list_families

        return list_families()[self.family].grower(method, **self.grower_options)

    def models(self, sizes: tuple[str, ...] | None = None, **options: Any) -> list[nn.Module]:
        """Fresh models for ``sizes`` (default: the recipe's ladder), built with ``options`` (``num_classes``)."""
        if "image_size" not in inspect.signature(self.build).parameters:  # ConvNets take any size
            options = {k: v for k, v in options.items() if k != "image_size"}
        return [self.build(**self.size(s), **options) for s in sizes or self.sizes]


def vit_patch(image_size: int) -> int:
    """The patch size for a user's images: the smallest divisor (at least 2) of ``image_size`` that makes at
    most 8x8 patches (8 px: 2, 28 px: 4, 32 px: 4, 224 px: 28). A size with none (a prime) is refused."""
    patch = next(p for p in range(2, image_size + 1) if image_size % p == 0 and image_size // p <= 8)
    if patch == image_size:
        raise ConfigError(
            f"image_size: {image_size} px has no patch size that divides it into a grid; "
            "give an --image-size with small divisors (e.g. 28, 32, 64)"
        )
    return patch


def _vit_at(default_size: int, default_patch: int) -> Callable[..., nn.Module]:
    def build(
        width: int, depth: int, num_classes: int = 10, image_size: int = default_size, in_channels: int = 3
    ) -> nn.Module:
        from comptlib.families.vit import build_vit

        if width % 16:
            raise ConfigError(f"sizes: ViT width {width} must be a multiple of 16 (head_dim 16)")
        patch = default_patch if image_size == default_size else vit_patch(image_size)
        options = {
            "image_size": image_size,
            "patch_size": patch,
            "num_classes": num_classes,
            "in_channels": in_channels,
        }
        return build_vit(width, depth, **options)

    return build


_vit = _vit_at(8, 2)


def _resnet(width: int, depth: int, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    from torchvision.models.resnet import BasicBlock

    from comptlib.families.convnet import resnet

    widths = [width, 2 * width, 4 * width]
    return resnet(BasicBlock, [depth] * 3, widths, num_classes=num_classes, in_channels=in_channels)


def _convnext(width: int, depth: int, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    from comptlib.families.convnet import convnext

    widths = [width, 2 * width, 4 * width]
    return convnext(widths, [depth, depth, 3 * depth], num_classes=num_classes, in_channels=in_channels)


def _lm(builder: str) -> Callable[..., nn.Module]:
    def build(width: int, depth: int, vocab_size: int = 256) -> nn.Module:
        from comptlib.families import decoder_lm

        if width % 16:
            raise ConfigError(f"sizes: {builder} width {width} must be a multiple of 16 (head_dim 16)")
        return getattr(decoder_lm, f"build_{builder}")(width, depth, vocab_size=vocab_size)

    return build


def _clip_on(tokenizer: str) -> Callable[[int, int], nn.Module]:
    """A CLIP builder for the vocabulary of ``comptlib.image_text``'s tokenizer function ``tokenizer``."""

    def build(width: int, depth: int) -> nn.Module:
        from comptlib import image_text
        from comptlib.families.clip import build_clip

        if width % 16:
            raise ConfigError(f"sizes: CLIP width {width} must be a multiple of 16 (head_dim 16)")
        vocab = getattr(image_text, tokenizer)().vocab_size
        return build_clip(width, depth, vocab_size=vocab, patch_size=8)

    return build


def _emoji(batch_size: int, seed: int) -> Loaders:
    from comptlib.image_text import emoji_loaders

    return emoji_loaders(batch_size, 32, seed, 0.2)


def _glyphs(batch_size: int, seed: int) -> Loaders:
    from comptlib.image_text import glyph_loaders

    return glyph_loaders(batch_size, 32, seed)


def _paper_vit(
    width: int, depth: int, num_heads: int, mlp_dim: int, num_classes: int = 10, in_channels: int = 3
) -> nn.Module:
    from comptlib.families.vit import build_vit

    options = {"image_size": 224, "patch_size": 16, "num_classes": num_classes, "in_channels": in_channels}
    return build_vit(width, depth, num_heads=num_heads, mlp_dim=mlp_dim, **options)


_PAPER_VITS = {
    "vit-t": {"width": 192, "depth": 12, "num_heads": 3, "mlp_dim": 768},
    "vit-s": {"width": 384, "depth": 12, "num_heads": 6, "mlp_dim": 1536},
    "vit-b": {"width": 768, "depth": 12, "num_heads": 12, "mlp_dim": 3072},
    "vit-l": {"width": 1024, "depth": 24, "num_heads": 16, "mlp_dim": 4096},
}
"""The paper's ViT-T/S/B/L/16 (torchvision's shapes for S, B and L)."""


def _digits(image_size: int) -> Callable[[int, int], Loaders]:
    def loaders(batch_size: int, seed: int) -> Loaders:
        from comptlib.data import digits_loaders

        return digits_loaders(batch_size, image_size=image_size, seed=seed)

    return loaders


def _fashion(batch_size: int, seed: int) -> Loaders:
    from comptlib.data import fashion_mnist_loaders

    return fashion_mnist_loaders(batch_size, seed=seed)


_FASHION = "Fashion-MNIST 28x28 (60,000 training images, crop and flip; the 10,000 test images held out)"


def _text(batch_size: int, seed: int) -> Loaders:
    from comptlib.data import text_loaders

    return text_loaders(batch_size, seed=seed)


_LM = {
    "budgets": (300.0, 56.0, 38.0),
    "unit": "steps",
    "lr": 3e-3,
    "batch_size": 32,
    "loaders": _text,
    "user_data": "text",
}
_LM_DATA = "CPython standard library source, byte-level"

RECIPES: dict[str, Recipe] = {
    "vit": Recipe(
        "vit",
        ("32x2", "64x4", "128x6"),
        (32.0, 6.0, 4.0),
        "epochs",
        3e-3,
        64,
        _vit,
        _digits(8),
        "digits 8x8",
        user_data="images",
        image_size=8,
    ),
    "vit-paper": Recipe(
        "vit",
        tuple(_PAPER_VITS),
        (128.0, 24.0, 16.0, 16.0),
        "epochs",
        1e-3,
        2,
        _paper_vit,
        _digits(224),
        "digits upsampled to 224x224 (a stand-in: the paper used CC3M)",
        user_data="images",
        image_size=224,
        presets=_PAPER_VITS,
    ),
    "resnet": Recipe(
        "resnet",
        ("8x1", "16x1", "32x2"),
        (16.0, 3.0, 2.0),
        "epochs",
        3e-3,
        64,
        _resnet,
        _digits(32),
        "digits 32x32",
        user_data="images",
        image_size=32,
    ),
    "convnext": Recipe(
        "convnext",
        ("16x1", "32x1", "64x2"),
        (16.0, 3.0, 2.0),
        "epochs",
        2e-3,
        64,
        _convnext,
        _digits(32),
        "digits 32x32",
        grower_options={"approximate": True},  # ConvNeXt width cannot grow exactly: see families/convnet.py
        user_data="images",
        image_size=32,
    ),
    "clip": Recipe(
        "clip",
        ("32x2", "64x3", "128x4"),
        (300.0, 56.0, 38.0),
        "steps",
        2e-3,
        64,
        _clip_on("emoji_tokenizer"),
        _emoji,
        "Noto Color Emoji 32x32 with their Unicode names (~1,300 pairs)",
    ),
    "clip-glyphs": Recipe(
        "clip",
        ("32x2", "64x3", "128x4"),
        (600.0, 112.0, 75.0),
        "steps",
        2e-3,
        64,
        _clip_on("glyph_tokenizer"),
        _glyphs,
        "4,099 Unicode glyphs 32x32 in up to 11 DejaVu/STIX faces, with their Unicode names (410 characters held out)",
    ),
    "fashion-vit": Recipe(
        "vit",
        ("64x2", "80x3", "96x4"),  # about 2x parameters a step, in width and depth; 128x5 makes a fourth
        (8.0, 1.5, 1.0),
        "epochs",
        2e-3,
        128,
        _vit_at(28, 4),
        _fashion,
        _FASHION,
        user_data="images",
        image_size=28,
    ),
    "fashion-resnet": Recipe(
        "resnet",
        ("16x1", "16x2", "24x2"),  # about 2x parameters a step
        (8.0, 1.5, 1.0),
        "epochs",
        3e-3,
        128,
        _resnet,
        _fashion,
        _FASHION,
        user_data="images",
        image_size=28,
    ),
    "llama": Recipe("decoder_lm", ("32x2", "64x3", "128x4"), build=_lm("llama"), data=_LM_DATA, **_LM),
    "qwen2": Recipe("decoder_lm", ("32x2", "64x3", "128x4"), build=_lm("qwen2"), data=_LM_DATA, **_LM),
    "gpt2": Recipe("decoder_lm", ("32x2", "64x3", "128x4"), build=_lm("gpt2"), data=_LM_DATA, **_LM),
}
"""Recipes by CLI name; the budgets keep the paper's 128:24:16 proportions."""


def register_recipe(name: str, recipe: Recipe, *, replace: bool = False) -> Recipe:
    """Add ``recipe`` under ``name`` (what ``comptlib grow --family NAME`` runs); returns it.

    Third-party families call it next to :func:`~comptlib.register_family`,
    typically from the module their ``comptlib.families`` entry point names.
    Raises ValueError if the name is taken, unless ``replace=True``.
    """
    if name in RECIPES and RECIPES[name] is not recipe and not replace:
        raise ValueError(f"recipe {name!r} is already registered (family {RECIPES[name].family!r}); pass replace=True")
    RECIPES[name] = recipe
    return recipe


def list_recipes() -> dict[str, Recipe]:
    """Every recipe by name: the built-in ones and those installed packages register (entry points loaded)."""
    from comptlib.family import discover_families

    discover_families()
    return dict(RECIPES)


def with_tokenizer(recipe: Recipe, tokenizer: Any, name: str, *, max_bytes: int | None = None) -> Recipe:
    """A language recipe on ``tokenizer`` (a Hugging Face tokenizer with an EOS token) instead of bytes.

    Its built-in data is the same first ``max_bytes`` of stdlib source
    (default: the recipe's 2,000,000), files separated by EOS, tokenized once
    and cached; ``--data`` goes through :func:`comptlib.text.lm_loaders`;
    models get the tokenizer's vocabulary. Bits per byte stay comparable with
    the byte-level recipe's: the same text, its last 10 % (of tokens here, of
    bytes there) held out. ``name`` describes the tokenizer in reports.
    """
    from comptlib import data, text

    if recipe.user_data != "text":
        raise ValueError(f"tokenizer: the {recipe.family} recipe is not a language recipe")
    max_bytes = max_bytes or data.DEFAULT_TEXT_BYTES

    def loaders(batch_size: int, seed: int) -> Loaders:
        return text.lm_loaders("stdlib", tokenizer, batch_size=batch_size, max_bytes=max_bytes, seed=seed)

    return attrs.evolve(
        recipe,
        build=functools.partial(recipe.build, vocab_size=len(tokenizer)),
        loaders=loaders,
        data=f"CPython standard library source, {name}",
        tokenizer=tokenizer,
    )


def with_bpe(recipe: Recipe, vocab_size: int = 4096, *, max_bytes: int | None = None) -> Recipe:
    """:func:`with_tokenizer` with a byte-level BPE trained (once, then cached) on the same stdlib text."""
    from comptlib import data, text

    tokenizer = text.stdlib_bpe(vocab_size, max_bytes=max_bytes or data.DEFAULT_TEXT_BYTES)
    return with_tokenizer(recipe, tokenizer, f"byte-level BPE of {len(tokenizer):,} tokens", max_bytes=max_bytes)
