"""Real image-text pairs that work offline, a word tokenizer, and CLIP-style loaders.

The built-in pairs are emoji: every named single-codepoint symbol of Google's
Noto Color Emoji font (Debian's ``fonts-noto-color-emoji``), rendered with
Pillow, captioned with its Unicode name ("closed umbrella"): about 1,300 pairs
whose captions share words ("face", "cat", "arrow"...), so a model can
generalise to held-out captions. A larger set, on which larger models have
more to learn, is glyphs: about 4,100 characters (letters of many scripts,
digits, punctuation, arrows, Braille, box drawing...) drawn in each of up to
eleven faces of the DejaVu and STIX fonts that matplotlib ships, captioned
with their Unicode names ("latin small letter a with acute", "braille pattern
dots-258"); each training pass draws every character in a random face. Users bring their own pairs as a CSV in the
format of open_clip (the code of the CoM-PT paper): columns ``filepath`` and
``title``, tab- or comma-separated.

Batches are dicts of ``pixel_values``, ``input_ids`` and ``attention_mask``;
held-out batches also carry ``prompt_ids``/``prompt_mask``, each caption in
every zero-shot template, so :func:`comptlib.families.clip.evaluate_clip`
needs nothing but the loader.
"""

from __future__ import annotations

import csv
import functools
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs
import numpy as np
import torch
from torch.utils.data import DataLoader

from comptlib.data import Rows

FONT_ENV = "COMPTLIB_EMOJI_FONT"
"""Environment variable that points at a ``NotoColorEmoji.ttf`` anywhere."""

_FONT_FILE = Path("usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
FONT_CACHE = Path("~/.cache/comptlib/emoji")
"""Where :data:`EMOJI_INSTALL` unpacks the Debian package, without root."""

EMOJI_INSTALL = (
    "mkdir -p ~/.cache/comptlib/emoji /tmp/emoji-deb && cd /tmp/emoji-deb && apt-get download fonts-noto-color-emoji && "
    "dpkg-deb -x fonts-noto-color-emoji_*.deb ~/.cache/comptlib/emoji"
)
"""The install step: no root, nothing installed system-wide (``apt-get install fonts-noto-color-emoji`` works too)."""

TEMPLATES: tuple[str, ...] = ("{}", "an emoji of {}", "a picture of a {}")
"""Zero-shot prompts; class embeddings average the normalised embeddings of all templates (CLIP's prompt ensembling)."""

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
"""Special ids of :class:`WordTokenizer`. The end-of-text id is not 2: Hugging Face CLIP text models whose
``eos_token_id`` is 2 pool at the largest id of each sequence (the pre-2023 behaviour), any other
``eos_token_id`` pools at its first occurrence, which is what this tokenizer appends."""

_STRIKE = 109  # NotoColorEmoji is a CBDT bitmap font with one strike: 136x128 pixels at size 109
_CANVAS = 136
_EMOJI_RANGES = (range(0x80, 0x3400), range(0x1F000, 0x1FB00))  # every single-codepoint emoji lives here
_WORD = re.compile(r"[a-z0-9]+|[^a-z0-9\s]")


@attrs.frozen
class ImagePairs:
    """Images (uint8, ``(N, 3, S, S)``) and one caption each.

    ``views`` (``(N, V, 3, S, S)``, optional) are other renderings of each
    image, ``num_views`` how many of them each has: a training pass shows each
    pair in one of its views, drawn at random (``images`` is view 0).
    """

    images: torch.Tensor
    captions: tuple[str, ...]
    views: torch.Tensor | None = None
    num_views: torch.Tensor | None = None

    def __attrs_post_init__(self) -> None:
        if len(self.images) != len(self.captions):
            raise ValueError(f"{len(self.images)} images but {len(self.captions)} captions")

    def __len__(self) -> int:
        return len(self.captions)


def emoji_font_path() -> Path:
    """The Noto Color Emoji font: ``$COMPTLIB_EMOJI_FONT``, the Debian path, or the user cache.

    Raises FileNotFoundError with the install command when none exists.
    """
    if FONT_ENV in os.environ:
        path = Path(os.environ[FONT_ENV]).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{FONT_ENV}={os.environ[FONT_ENV]} is not a file")
        return path
    candidates = (Path("/") / _FONT_FILE, FONT_CACHE.expanduser() / _FONT_FILE)
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        "the emoji image-text data needs Noto Color Emoji (Debian package fonts-noto-color-emoji), "
        f"looked in {', '.join(map(str, candidates))}. Install it without root with:\n    {EMOJI_INSTALL}\n"
        f"or point {FONT_ENV} at a NotoColorEmoji.ttf"
    )


def _font():
    from PIL import ImageFont

    # The basic layout engine: raqm fails on codepoints a font lacks, and single codepoints need no shaping.
    return ImageFont.truetype(str(emoji_font_path()), _STRIKE, layout_engine=ImageFont.Layout.BASIC)


@functools.lru_cache(maxsize=1)
def emoji_characters() -> tuple[str, ...]:
    """Every single-codepoint symbol the font draws, in codepoint order.

    Kept: named symbols (Unicode category ``So``) with a glyph. Left out:
    regional indicator letters and hair components, which are parts of
    flags and people rather than pictures of their own.
    """
    font = _font()
    chars = []
    for code in (c for r in _EMOJI_RANGES for c in r):
        char = chr(code)
        name = unicodedata.name(char, "")
        if unicodedata.category(char) != "So" or "REGIONAL INDICATOR" in name or name.startswith("EMOJI COMPONENT"):
            continue
        _, top, _, bottom = font.getbbox(char)
        if bottom > top:  # a missing glyph has no height
            chars.append(char)
    return tuple(chars)


def emoji_captions() -> tuple[str, ...]:
    """The caption of every emoji: its lower-case Unicode name."""
    return tuple(unicodedata.name(c).lower() for c in emoji_characters())


def _to_tensor(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)


@functools.lru_cache(maxsize=2)
def load_emoji(image_size: int = 32) -> ImagePairs:
    """Every emoji rendered on white and downscaled to ``image_size`` (a few seconds; cached per process)."""
    from PIL import Image, ImageDraw

    if image_size < 4:
        raise ValueError(f"image_size must be >= 4, got {image_size}")
    font, chars = _font(), emoji_characters()
    images = []
    for char in chars:
        glyph = Image.new("RGBA", (_CANVAS, _CANVAS), (255, 255, 255, 0))
        ImageDraw.Draw(glyph).text((0, (_CANVAS - 128) // 2), char, font=font, embedded_color=True)
        image = Image.new("RGBA", glyph.size, (255, 255, 255, 255))
        image.alpha_composite(glyph)
        images.append(_to_tensor(image.resize((image_size, image_size), Image.Resampling.LANCZOS)))
    return ImagePairs(torch.stack(images), emoji_captions())


GLYPH_FACES: tuple[str, ...] = (
    "DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSerif", "DejaVuSerif-Bold", "DejaVuSerif-Italic",
    "DejaVuSansMono", "DejaVuSansMono-Bold", "STIXGeneral", "STIXGeneralBol", "STIXGeneralItalic",
)  # fmt: skip
"""The font faces glyphs are drawn in: the TrueType files matplotlib ships (``matplotlib/mpl-data/fonts/ttf``)."""

GLYPH_TEMPLATES: tuple[str, ...] = ("{}", "the character {}", "a glyph of {}")
"""Zero-shot prompts of the glyph pairs."""


def _face_path(face: str) -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / f"{face}.ttf"


_MIN_FACES = 4
_INK = 200
"""A view is drawn if some pixel is darker than this (a mapped glyph may be empty, or too faint at 32 px)."""


def _glyph_candidates() -> tuple[str, ...]:
    """Named letters, digits, punctuation marks and symbols of the Basic Multilingual Plane that at least
    four of :data:`GLYPH_FACES` map (their character maps say which), in codepoint order."""
    from matplotlib.ft2font import FT2Font

    counts: dict[int, int] = {}
    for face in GLYPH_FACES:
        for code in FT2Font(str(_face_path(face))).get_charmap():
            counts[code] = counts.get(code, 0) + 1
    chars = []
    for code in sorted(c for c, n in counts.items() if n >= _MIN_FACES and 0x20 < c < 0x10000):
        char = chr(code)
        if unicodedata.name(char, "") and unicodedata.category(char)[0] in "LNPS":
            chars.append(char)
    return tuple(chars)


@functools.lru_cache(maxsize=2)
def load_glyphs(image_size: int = 32) -> ImagePairs:
    """Every glyph in every face that draws it, black on white, centred and downscaled to ``image_size``.

    Kept: the characters that at least four faces draw with visible ink.
    ``images`` is each character in the first face that has it; ``views``
    holds all its faces (a few seconds to draw; cached per process).
    """
    from matplotlib.ft2font import FT2Font
    from PIL import Image, ImageDraw, ImageFont

    if image_size < 4:
        raise ValueError(f"image_size must be >= 4, got {image_size}")
    chars, canvas = _glyph_candidates(), 2 * image_size
    size = 3 * image_size // 2
    faces = [(set(FT2Font(str(_face_path(f))).get_charmap()), ImageFont.truetype(str(_face_path(f)), size))
             for f in GLYPH_FACES]  # fmt: skip
    views = torch.full((len(chars), len(faces), 3, image_size, image_size), 255, dtype=torch.uint8)
    num_views = torch.zeros(len(chars), dtype=torch.long)
    for i, char in enumerate(chars):
        for charmap, font in faces:
            if ord(char) not in charmap:
                continue
            image = Image.new("L", (canvas, canvas), 255)
            left, top, right, bottom = font.getbbox(char)
            at = ((canvas - (right - left)) // 2 - left, (canvas - (bottom - top)) // 2 - top)
            ImageDraw.Draw(image).text(at, char, font=font, fill=0)
            view = _to_tensor(image.resize((image_size, image_size), Image.Resampling.LANCZOS))
            if int(view.min()) < _INK:
                views[i, num_views[i]] = view
                num_views[i] += 1
    keep = num_views >= _MIN_FACES
    captions = tuple(unicodedata.name(c).lower() for c, k in zip(chars, keep.tolist()) if k)
    views = views[keep]
    return ImagePairs(views[:, 0].clone(), captions, views, num_views[keep])


def glyph_captions() -> tuple[str, ...]:
    """The caption of every glyph: its lower-case Unicode name."""
    return load_glyphs().captions


@functools.lru_cache(maxsize=1)
def glyph_tokenizer() -> WordTokenizer:
    """The tokenizer of the glyph data: every word of every glyph caption and of the zero-shot templates."""
    return WordTokenizer.from_texts(glyph_captions() + tuple(t.format("") for t in GLYPH_TEMPLATES))


def glyph_loaders(
    batch_size: int = 64, image_size: int = 32, seed: int = 0, val_fraction: float = 0.1
) -> tuple[DataLoader, DataLoader]:
    """Loaders over the ~4,100 glyph pairs with :func:`glyph_tokenizer`: a seeded 10 % of the characters held
    out, each in its first face; training draws every character in a random one of its faces each time."""
    pairs = load_glyphs(image_size)
    options = {"val_fraction": val_fraction, "seed": seed, "templates": GLYPH_TEMPLATES}
    return image_text_loaders(pairs, glyph_tokenizer(), batch_size, **options)


def load_pairs_csv(path: str | os.PathLike[str], image_size: int = 32) -> ImagePairs:
    """Image-text pairs from a CSV with columns ``filepath`` and ``title`` (open_clip's format).

    The separator (tab or comma) is detected; relative image paths are read
    from the CSV's folder. Images are centre-cropped to a square and resized.
    """
    from PIL import Image

    path = Path(path)
    text = path.read_text(encoding="utf-8")
    dialect = csv.Sniffer().sniff(text.split("\n", 1)[0], delimiters="\t,")
    rows = list(csv.DictReader(text.splitlines(), dialect=dialect))
    missing = {"filepath", "title"} - set(rows[0] if rows else ())
    if missing:
        raise ValueError(f"{path}: needs columns 'filepath' and 'title', missing {sorted(missing)}")
    images = []
    for row in rows:
        with Image.open(path.parent / row["filepath"]) as image:
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            square = image.convert("RGB").crop((left, top, left + side, top + side))
            images.append(_to_tensor(square.resize((image_size, image_size), Image.Resampling.LANCZOS)))
    return ImagePairs(torch.stack(images), tuple(row["title"] for row in rows))


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class WordTokenizer:
    """Lower-case words and punctuation marks as ids from a fixed vocabulary, plus pad, end and unknown.

    Built from the captions themselves, so it needs no download and is the
    same on every run (the vocabulary is sorted).

    >>> tok = WordTokenizer.from_texts(["closed umbrella", "umbrella with rain drops"])
    >>> tok.encode("closed umbrella"), tok.encode("open umbrella")
    ([3, 6, 1], [2, 6, 1])
    """

    def __init__(self, words: Sequence[str]) -> None:
        self.words = tuple(words)
        self.ids = {w: i for i, w in enumerate(self.words, start=3)}

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> WordTokenizer:
        return cls(sorted({w for t in texts for w in _words(t)}))

    @property
    def vocab_size(self) -> int:
        return len(self.words) + 3

    def encode(self, text: str) -> list[int]:
        """The ids of ``text``'s words, then :data:`EOS_ID`."""
        return [self.ids.get(w, UNK_ID) for w in _words(text)] + [EOS_ID]

    def __call__(self, texts: Sequence[str], max_length: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` padded to the longest text; longer ones keep their end token."""
        encoded = [
            ids[: max_length - 1] + ids[-1:] if len(ids) > max_length else ids for ids in map(self.encode, texts)
        ]
        length = max(map(len, encoded))
        input_ids = torch.full((len(encoded), length), PAD_ID, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        return input_ids, mask


@functools.lru_cache(maxsize=1)
def emoji_tokenizer() -> WordTokenizer:
    """The tokenizer of the emoji data: every word of every emoji caption and of the zero-shot templates.

    It covers held-out captions too, as a pretrained vocabulary would; words
    seen only there keep their untrained embeddings.
    """
    return WordTokenizer.from_texts(emoji_captions() + tuple(t.format("") for t in TEMPLATES))


def image_text_loaders(
    pairs: ImagePairs,
    tokenizer: WordTokenizer,
    batch_size: int = 64,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    max_length: int = 32,
    templates: Sequence[str] = TEMPLATES,
) -> tuple[DataLoader, DataLoader]:
    """Shuffled training and fixed-order held-out loaders of dict batches over ``pairs``.

    The split is random but seeded. Pixels are standardised per channel with
    the training split's statistics. Training batches drop the last partial
    batch: the contrastive loss needs full batches of negatives. With
    ``pairs.views``, a training pair shows one of its views at random.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))
    n_val = max(int(round(len(pairs) * val_fraction)), 1)
    val, train = order[:n_val], order[n_val:]
    if len(train) < batch_size:
        raise ValueError(f"{len(pairs)} pairs leave {len(train)} for training, fewer than batch_size={batch_size}")
    pixels = pairs.images.float() / 255.0
    mean, std = pixels[train].mean((0, 2, 3), keepdim=True), pixels[train].std((0, 2, 3), keepdim=True)
    pixels = (pixels - mean) / std

    def rows(index: torch.Tensor, with_prompts: bool) -> Rows:
        captions = [pairs.captions[i] for i in index.tolist()]
        input_ids, mask = tokenizer(captions, max_length)
        columns = {"pixel_values": pixels[index], "input_ids": input_ids, "attention_mask": mask}
        if with_prompts:
            prompts = [t.format(c) for c in captions for t in templates]
            prompt_ids, prompt_mask = tokenizer(prompts, max_length)
            columns["prompt_ids"] = prompt_ids.view(len(captions), len(templates), -1)
            columns["prompt_mask"] = prompt_mask.view(len(captions), len(templates), -1)
        return Rows(**columns)

    training = rows(train, False)
    if pairs.views is not None:
        views = (pairs.views[train].float() / 255.0 - mean.unsqueeze(1)) / std.unsqueeze(1)
        training = RandomViews(training, views, pairs.num_views[train])
    gen = torch.Generator().manual_seed(seed)
    return (
        DataLoader(training, batch_size=batch_size, shuffle=True, drop_last=True, generator=gen),
        DataLoader(rows(val, True), batch_size=256),
    )


class RandomViews(torch.utils.data.Dataset):
    """Rows whose ``pixel_values`` are one of each row's views, drawn afresh at every access (torch's RNG)."""

    def __init__(self, rows: Rows, views: torch.Tensor, num_views: torch.Tensor) -> None:
        self.rows, self.views, self.num_views = rows, views, num_views

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        view = int(torch.randint(int(self.num_views[index]), ()))
        return self.rows[index] | {"pixel_values": self.views[index, view]}


def emoji_loaders(
    batch_size: int = 64, image_size: int = 32, seed: int = 0, val_fraction: float = 0.1
) -> tuple[DataLoader, DataLoader]:
    """Loaders over the ~1,300 emoji pairs with :func:`emoji_tokenizer` (build models with its ``vocab_size``)."""
    return image_text_loaders(
        load_emoji(image_size), emoji_tokenizer(), batch_size, val_fraction=val_fraction, seed=seed
    )
