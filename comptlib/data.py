"""Real datasets that work offline, and loader helpers.

Nothing here downloads: the digits come with scikit-learn, the text is the
CPython standard library's own source. Any PyTorch
``DataLoader`` works with :class:`comptlib.Chain`; these are the built-in
defaults for examples, tests and ``comptlib grow``.
"""

from __future__ import annotations

import functools
import math
import os
import sysconfig
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from comptlib.errors import DataError, MissingDataError


def load_digits(
    image_size: int = 8, *, val_fraction: float = 0.2, seed: int = 0
) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's 1,797 handwritten digits as 3-channel image tensors, split train/val.

    Images are standardised and, for ``image_size > 8``, upsampled bilinearly,
    so they fit torchvision models that expect RGB input. The split is
    stratified-free but seeded and therefore reproducible.
    """
    from sklearn.datasets import load_digits as _sk_digits

    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8 (the digits are 8x8), got {image_size}")
    bunch = _sk_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
    images = (images - images.mean()) / images.std()
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = images.expand(-1, 3, -1, -1).contiguous()
    labels = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_val = int(round(len(labels) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    return TensorDataset(images[train], labels[train]), TensorDataset(images[val], labels[val])


def digits_loaders(
    batch_size: int = 64, *, image_size: int = 8, val_fraction: float = 0.2, seed: int = 0
) -> tuple[DataLoader, DataLoader]:
    """Shuffled training and fixed-order validation loaders over :func:`load_digits`.

    >>> train, val = digits_loaders(batch_size=32)
    >>> images, labels = next(iter(train))
    >>> tuple(images.shape), labels.dtype
    ((32, 3, 8, 8), torch.int64)
    """
    train, val = load_digits(image_size, val_fraction=val_fraction, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=True, generator=gen),
        DataLoader(val, batch_size=256),
    )


FASHION_MNIST_ENV = "COMPTLIB_FASHION_MNIST"
_FASHION_MNIST_PLACES = (
    "~/.cache/comptlib/fashion-mnist/usr/share/datasets/fashion-mnist",  # unpacked by the README's set-up
    "/usr/share/datasets/fashion-mnist",  # apt-get install dataset-fashion-mnist
)
FASHION_MNIST_INSTALL = (
    "mkdir -p ~/.cache/comptlib/fashion-mnist && cd /tmp && apt-get download dataset-fashion-mnist && "
    "dpkg-deb -x dataset-fashion-mnist_*.deb ~/.cache/comptlib/fashion-mnist"
)
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


def fashion_mnist_dir() -> Path:
    """Where Fashion-MNIST's idx.gz files are: ``$COMPTLIB_FASHION_MNIST``, the comptlib cache, or Debian's place."""
    if FASHION_MNIST_ENV in os.environ:
        places = [os.environ[FASHION_MNIST_ENV]]
    else:
        places = list(_FASHION_MNIST_PLACES)
    for place in places:
        path = Path(place).expanduser()
        if (path / "train-images-idx3-ubyte.gz").is_file():
            return path
    raise MissingDataError(
        f"data: no Fashion-MNIST in {' or '.join(places)}; get Debian's dataset-fashion-mnist: {FASHION_MNIST_INSTALL}"
    )


def _idx(path: Path) -> torch.Tensor:
    """An idx file (gzip-compressed, big-endian, unsigned bytes) as a uint8 tensor of its shape."""
    import gzip

    data = gzip.decompress(path.read_bytes())
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise DataError(f"data: {path} is not an idx file of unsigned bytes")
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    body = data[4 + 4 * dims :]
    if len(body) != math.prod(shape):
        raise DataError(f"data: {path} is truncated: {len(body)} bytes for shape {shape}")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).view(shape)


def load_fashion_mnist(root: str | os.PathLike[str] | None = None) -> tuple[TensorDataset, TensorDataset]:
    """Fashion-MNIST's 60,000 training and 10,000 test images (28x28, 10 classes) as 1-channel uint8 tensors.

    The test set is the held-out split, always the same one. Read from
    Debian's ``dataset-fashion-mnist`` files (see :func:`fashion_mnist_dir`).
    """
    root = Path(root) if root is not None else fashion_mnist_dir()
    splits = []
    for prefix in ("train", "t10k"):
        images = _idx(root / f"{prefix}-images-idx3-ubyte.gz")[:, None]
        labels = _idx(root / f"{prefix}-labels-idx1-ubyte.gz").long()
        if len(images) != len(labels):
            raise DataError(f"data: {root}: {len(images)} {prefix} images but {len(labels)} labels")
        splits.append(TensorDataset(images, labels))
    return splits[0], splits[1]


class Images(Dataset):
    """uint8 images as standardised 3-channel float tensors, with optional random crop and flip.

    Augmentation draws from the global torch RNG in the loading process, so
    a seeded, checkpointed run sees the same crops again when resumed.
    """

    MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST's training-set statistics, in [0, 1]

    def __init__(self, data: TensorDataset, *, augment: bool = False, pad: int = 2) -> None:
        self.images, self.labels = data.tensors
        self.augment, self.pad = augment, pad

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = (self.images[index].float() / 255.0 - self.MEAN) / self.STD
        if self.augment:
            size = image.shape[-1]
            padded = F.pad(image, (self.pad,) * 4)
            top, left = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
            image = padded[:, top : top + size, left : left + size]
            if torch.rand(()) < 0.5:
                image = image.flip(-1)
        return image.expand(3, -1, -1), self.labels[index]


def fashion_mnist_loaders(
    batch_size: int = 128, *, augment: bool = True, train_size: int | None = None, seed: int = 0
) -> tuple[DataLoader, DataLoader]:
    """Shuffled (optionally augmented: 2 px random crop, horizontal flip) training and fixed test-set loaders.

    ``train_size`` keeps a seeded random subset of the 60,000 training images
    (a data-limited regime); the 10,000 test images are always the held-out set.
    """
    train, test = load_fashion_mnist()
    if train_size is not None:
        if not 0 < train_size <= len(train):
            raise ValueError(f"train_size must be in [1, {len(train)}], got {train_size}")
        keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:train_size]
        train = TensorDataset(*(t[keep] for t in train.tensors))
    gen = torch.Generator().manual_seed(seed)
    return (
        DataLoader(Images(train, augment=augment), batch_size, shuffle=True, drop_last=True, generator=gen),
        DataLoader(Images(test), batch_size=500),
    )


HELD_OUT_SPLITS = ("val", "validation", "test")
"""Folders beside ``train/`` that hold the held-out set (torchvision's and Hugging Face ``imagefolder``'s names)."""


def splits(root: str | os.PathLike[str], val_root: str | os.PathLike[str] | None = None) -> tuple[Path, Path | None]:
    """The training data and the held-out data of a user's folder: ``val_root`` if given, else ``root/val/``
    (or ``validation/``, ``test/``) when ``root`` has ``train/``; None: split the training data."""
    root = Path(root)
    train = root / "train" if (root / "train").is_dir() else root
    if val_root is not None:
        if not Path(val_root).exists():
            raise MissingDataError(f"val_data: no folder or file at {val_root}")
        return train, Path(val_root)
    held_out = [root / name for name in HELD_OUT_SPLITS if train != root and (root / name).is_dir()]
    return train, held_out[0] if held_out else None


GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
"""PIL modes read as one channel; any other (RGB, RGBA, P, CMYK...) is read as three."""


def image_format(root: str | os.PathLike[str]) -> tuple[int, int]:
    """``(size, channels)`` of a user's training images: the models are built for them.

    The size is the larger side of the first image; the channels are 1 when
    every image is grey, else 3 (only the headers are read).
    """
    from PIL import Image

    train, _ = splits(root)
    images = [p for p in sorted(train.glob("*/*")) if p.is_file()]
    if not images:
        missing = f"data: no image folder at {root}" if not train.is_dir() else f"data: {train} holds no class folders"
        raise MissingDataError(missing)
    check_images(images[:1])
    with Image.open(images[0]) as image:
        size = max(image.size)
    for path in images:
        try:
            with Image.open(path) as image:
                if image.mode not in GREY_MODES:
                    return size, 3
        except Exception:  # check_images names the bad file when the loaders are built
            return size, 3
    return size, 1


def _image_folder(root: Path, transform: Any, mode: str = "RGB") -> Any:
    from torchvision import datasets

    if not root.is_dir():
        raise MissingDataError(f"data: no image folder at {root}")
    try:
        folder = datasets.ImageFolder(str(root), transform=transform, loader=functools.partial(read_image, mode=mode))
    except FileNotFoundError as err:  # no class folders, or a class folder without images
        raise DataError(f"data: {root}: {err}") from None
    if len(folder.classes) < 2:
        raise DataError(
            f"data: {root} has {len(folder.classes)} class folder ({folder.classes[0]}): a classifier needs 2"
        )
    check_images(path for path, _ in folder.samples)
    return folder


def image_folder_loaders(
    root: str | os.PathLike[str],
    image_size: int,
    batch_size: int = 64,
    *,
    val_fraction: float = 0.2,
    val_root: str | os.PathLike[str] | None = None,
    seed: int = 0,
    channels: int = 3,
) -> tuple[DataLoader, DataLoader, int]:
    """Loaders over a user's image folder (``root/<class>/<image>``, as torchvision's ``ImageFolder``).

    Images are resized to ``image_size`` squares, read as ``channels`` (1:
    grey, 3: RGB; :func:`image_format` says which a folder holds) and standardised. The
    held-out set is ``val_root``, or ``root/val/<class>/`` (``validation/``,
    ``test/``) beside ``root/train/<class>/``, with the same classes; else a
    random but seeded ``val_fraction`` of the images. Returns ``(train, val, num_classes)``.
    """
    from torchvision import transforms

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    norm = transforms.Normalize([0.5] * channels, [0.5] * channels)
    transform = transforms.Compose([transforms.Resize((image_size, image_size)), transforms.ToTensor(), norm])
    mode = "L" if channels == 1 else "RGB"
    train_root, held_out = splits(root, val_root)
    folder = _image_folder(train_root, transform, mode)
    if held_out is None:
        order = torch.randperm(len(folder), generator=torch.Generator().manual_seed(seed)).tolist()
        n_val = max(int(round(len(folder) * val_fraction)), 1)
        train, val = Subset(folder, order[n_val:]), Subset(folder, order[:n_val])
    else:
        train, val = folder, _image_folder(held_out, transform, mode)
        if val.classes != folder.classes:
            raise DataError(
                f"data: the held-out {held_out} has classes {val.classes}, the training {train_root} {folder.classes}"
            )
    if len(train) < batch_size:
        raise DataError(f"data: {root} has {len(folder)} images, too few for batches of {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    loaders = DataLoader(train, batch_size, shuffle=True, drop_last=True, generator=gen), DataLoader(val, 256)
    return (*loaders, len(folder.classes))


def check_images(paths: Iterable[str | os.PathLike[str]]) -> None:
    """Open every image and check its structure (PIL ``verify``), before anything trains; DataError names a bad file.

    ``verify`` reads the file without decoding all its pixels, so a large
    folder is checked in seconds; a file that passes it and still fails to
    decode later is named by :func:`read_image`.
    """
    from PIL import Image

    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as err:  # PIL raises many types for a bad file: name the file, say why
            raise DataError(f"data: {path} is not a readable image ({err or type(err).__name__})") from None


def read_image(path: str, mode: str = "RGB") -> Any:
    """A PIL image in ``mode`` (as torchvision's loader, which always makes RGB), with an error that names the file.

    A DataLoader would bury the file's name in a traceback.
    """
    from PIL import Image

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert(mode)
    except Exception as err:
        raise DataError(f"data: cannot read image {path} ({err or type(err).__name__})") from None


def batch_size_of(batch: Any) -> int:
    """The number of samples in a batch: a tensor, a tuple/list of tensors or a dict of tensors."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, dict):
        return batch_size_of(next(iter(batch.values())))
    if isinstance(batch, (tuple, list)) and batch:
        return batch_size_of(batch[0])
    raise TypeError(f"cannot tell the batch size of a {type(batch).__name__}")


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def rebuild(loader: DataLoader, **changes: Any) -> DataLoader:
    """The same loader (dataset, batch size, collate, workers...) with ``changes``: a sampler, workers, pinning.

    >>> train, _ = digits_loaders(batch_size=32)
    >>> rebuild(train, num_workers=2, pin_memory=True).num_workers
    2
    """
    settings: dict[str, Any] = {
        "batch_size": loader.batch_size,
        "drop_last": loader.drop_last,
        "collate_fn": loader.collate_fn,
        "num_workers": loader.num_workers,
        "pin_memory": loader.pin_memory,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context,
        "generator": loader.generator,
        "prefetch_factor": loader.prefetch_factor,
        "persistent_workers": loader.persistent_workers,
    }
    if "sampler" not in changes:
        settings |= {"sampler": loader.sampler}
    settings |= changes
    if not settings["num_workers"]:
        settings |= {"prefetch_factor": None, "persistent_workers": False}
    elif settings["prefetch_factor"] is None:
        settings["prefetch_factor"] = 2
    return DataLoader(loader.dataset, **settings)


def loader_length(loader: Iterable[Any]) -> int | None:
    """Batches per epoch, or None for an iterable without a length."""
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


# ---------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------

DEFAULT_TEXT_BYTES = 2_000_000
"""About 14,000 training sequences of 128 bytes: more than a tiny LM sees in
minutes of CPU training, while loading and evaluation stay at a few seconds."""

_STDLIB_SKIP = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages"})


def _text_files(source: str | os.PathLike[str]) -> list[Path]:
    """The files behind ``source``, in a reproducible order."""
    if source == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        return sorted(p for p in root.rglob("*.py") if _STDLIB_SKIP.isdisjoint(p.relative_to(root).parts[:-1]))
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and not any(part.startswith(".") or part == "__pycache__" for part in p.relative_to(path).parts)
        )
    raise MissingDataError(f"data: no text file or folder at {path}")


def load_text(source: str | os.PathLike[str] = "stdlib", *, max_bytes: int | None = None) -> str:
    """A real text corpus that needs no network: ``"stdlib"`` or a text file or folder.

    ``"stdlib"`` is every ``.py`` file of the running CPython's standard
    library (about 12 MB), without its test directories and installed
    packages. A folder gives all its files but hidden ones and binaries (any
    file with a NUL byte). Files are read in sorted path order and concatenated,
    so the text is the same on every run; reading stops once ``max_bytes``
    UTF-8 bytes are in. Invalid UTF-8, and a character cut by ``max_bytes``,
    are dropped, so the result never encodes to more than ``max_bytes``.
    """
    if max_bytes is not None and max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    files = _text_files(source)
    parts, total = [], 0
    for path in files:
        data = path.read_bytes()
        if len(files) == 1:
            _check_text(path, data)
        if b"\0" in data:
            continue
        parts.append(data)
        total += len(data)
        if max_bytes is not None and total >= max_bytes:
            break
    text = b"".join(parts)[:max_bytes].decode("utf-8", errors="ignore")
    if not text:
        raise DataError(f"data: no text found in {source} (empty, binary or not UTF-8)")
    return text


def describe_text(source: str | os.PathLike[str], max_bytes: int | None) -> str:
    """What :func:`load_text` reads of ``source``: files and bytes, and what ``max_bytes`` leaves out."""
    files = _text_files(source)
    sizes = [p.stat().st_size for p in files]
    total, read = sum(sizes), 0
    for count, size in enumerate(sizes, 1):  # noqa: B007 (count is read after the loop)
        read += size
        if max_bytes is not None and read >= max_bytes:
            break
    if max_bytes is None or total <= max_bytes:
        return f"{source}: {len(files):,} files, {total:,} bytes, all read"
    return (
        f"{source}: read {count:,} of {len(files):,} files, {max_bytes:,} of {total:,} bytes "
        f"(cut at --max-bytes {max_bytes:,}; the files after {files[count - 1].name} are not read)"
    )


def _check_text(path: Path, data: bytes) -> None:
    """A text file given on its own must be UTF-8 text: say where it is not."""
    if not data:
        raise DataError(f"data: {path} is empty")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"data: {path} is not UTF-8 text (byte {err.start} is {data[err.start]:#04x}); "
            "convert it, e.g. with iconv -t utf-8"
        ) from None


class ByteTokenizer:
    """UTF-8 bytes as token ids 0-255, plus id 256 for padding when ``pad=True``.

    Nothing to train or download, every string round-trips, and one token is
    one byte, so a model's bits per token are its bits per byte.

    >>> tok = ByteTokenizer()
    >>> tok.encode("né").tolist(), tok.decode(tok.encode("né")), tok.vocab_size
    ([110, 195, 169], 'né', 256)
    """

    def __init__(self, pad: bool = False) -> None:
        self.pad_id: int | None = 256 if pad else None

    @property
    def vocab_size(self) -> int:
        return 256 if self.pad_id is None else 257

    def encode(self, text: str) -> torch.Tensor:
        """The UTF-8 bytes of ``text`` as a 1-D int64 tensor."""
        return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """The text of ``ids``, padding dropped; a byte sequence cut mid-character decodes to U+FFFD."""
        values = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return bytes(int(i) for i in values if int(i) != self.pad_id).decode("utf-8", errors="replace")


class Rows(Dataset):
    """Equally long tensors served row by row as dicts, so a loader yields dict batches."""

    def __init__(self, **columns: torch.Tensor) -> None:
        self.columns = columns

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: column[index] for name, column in self.columns.items()}


def _windows(ids: torch.Tensor, seq_len: int, *, pad_tail: bool) -> Rows:
    """Non-overlapping ``seq_len`` windows of ``ids``; with ``pad_tail`` a partial last one is right-padded and masked.

    ``num_bytes`` counts the bytes a row predicts (all its tokens but the
    first), as :func:`comptlib.families.decoder_lm.evaluate_lm` expects.
    """
    rows = len(ids) // seq_len
    if pad_tail and len(ids) - rows * seq_len > 1:  # a one-token tail predicts nothing
        rows += 1
    used = min(len(ids), rows * seq_len)
    input_ids = torch.zeros(rows * seq_len, dtype=torch.long)
    mask = torch.zeros(rows * seq_len, dtype=torch.long)
    input_ids[:used], mask[:used] = ids[:used], 1
    mask = mask.view(rows, seq_len)
    return Rows(input_ids=input_ids.view(rows, seq_len), attention_mask=mask, num_bytes=mask.sum(1) - 1)


def text_loaders(
    batch_size: int = 32,
    *,
    seq_len: int = 128,
    max_bytes: int | None = DEFAULT_TEXT_BYTES,
    val_fraction: float = 0.1,
    seed: int = 0,
    source: str | os.PathLike[str] = "stdlib",
    val_source: str | os.PathLike[str] | None = None,
) -> tuple[DataLoader, DataLoader]:
    """Byte-level LM loaders over :func:`load_text`: shuffled training and fixed-order held-out batches.

    The held-out split is the contiguous last ``val_fraction`` of the byte
    stream, so no training window overlaps it. Batches are dicts of
    ``input_ids`` and ``attention_mask`` (batch, seq_len) and ``num_bytes``
    (batch,). Training windows are all full; the held-out tail's last window
    is padded, so every held-out byte but each window's first is scored.
    With ``val_source`` (a file or folder, read up to ``max_bytes`` too) all
    of ``source`` trains and ``val_source`` is held out.

    >>> train, val = text_loaders(batch_size=4, seq_len=16, max_bytes=10_000)
    >>> batch = next(iter(train))
    >>> tuple(batch["input_ids"].shape), batch["num_bytes"].tolist()
    ((4, 16), [15, 15, 15, 15])
    """
    check_split(val_fraction, seq_len)
    ids = ByteTokenizer().encode(load_text(source, max_bytes=max_bytes))
    if val_source is None:
        split = len(ids) - int(round(len(ids) * val_fraction))
        train_ids, val_ids = ids[:split], ids[split:]
    else:
        train_ids, val_ids = ids, ByteTokenizer().encode(load_text(val_source, max_bytes=max_bytes))
    train = _windows(train_ids, seq_len, pad_tail=False)
    val = _windows(val_ids, seq_len, pad_tail=True)
    corpus = f"{len(ids):,} bytes in windows of {seq_len}"
    return window_loaders(train, val, batch_size, seed, corpus, "raise max_bytes or lower seq_len")


def check_split(val_fraction: float, seq_len: int) -> None:
    """ValueError for a held-out fraction or window length no LM loader can use."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 (a window predicts all its tokens but the first), got {seq_len}")


def window_loaders(
    train: Dataset, val: Dataset, batch_size: int, seed: int, corpus: str, hint: str
) -> tuple[DataLoader, DataLoader]:
    """Seeded shuffled training and fixed-order held-out loaders over LM windows; ValueError, with ``hint``, if too few.

    ``corpus`` says how much text made the windows (``"2,000 bytes"``).
    """
    if len(train) < batch_size or len(val) == 0:
        raise DataError(
            f"data: {corpus} give {len(train)} training and {len(val)} held-out windows: "
            f"need at least batch_size={batch_size} and 1; {hint}"
        )
    gen = torch.Generator().manual_seed(seed)
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=True, generator=gen),
        DataLoader(val, batch_size=batch_size),
    )
