"""Real datasets that work offline, and loader helpers.

Nothing here downloads: the digits come with scikit-learn, the text is the
CPython standard library's own source. Any PyTorch
``DataLoader`` works with :class:`comptlib.Chain`; these are the built-in
defaults for examples, tests and ``comptlib grow``.
"""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset


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


def image_folder_loaders(
    root: str | os.PathLike[str], image_size: int, batch_size: int = 64, *, val_fraction: float = 0.2, seed: int = 0
) -> tuple[DataLoader, DataLoader, int]:
    """Loaders over a user's image folder (``root/<class>/<image>``, as torchvision's ``ImageFolder``).

    Images are resized to ``image_size`` squares and standardised; the split
    is random but seeded. Returns ``(train, val, num_classes)``.
    """
    from torchvision import datasets, transforms

    if not Path(root).is_dir():
        raise FileNotFoundError(f"data: no image folder at {root}")
    transform = transforms.Compose(
        [transforms.Resize((image_size, image_size)), transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)]
    )
    folder = datasets.ImageFolder(str(root), transform=transform)
    order = torch.randperm(len(folder), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(int(round(len(folder) * val_fraction)), 1)
    train, val = Subset(folder, order[n_val:]), Subset(folder, order[:n_val])
    if len(train) < batch_size:
        raise ValueError(f"data: {root} has {len(folder)} images, too few for batches of {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    loaders = DataLoader(train, batch_size, shuffle=True, drop_last=True, generator=gen), DataLoader(val, 256)
    return (*loaders, len(folder.classes))


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
    raise FileNotFoundError(f"no text file or folder at {path}")


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
    parts, total = [], 0
    for path in _text_files(source):
        data = path.read_bytes()
        if b"\0" in data:
            continue
        parts.append(data)
        total += len(data)
        if max_bytes is not None and total >= max_bytes:
            break
    if not parts:
        raise ValueError(f"no text found in {source}")
    return b"".join(parts)[:max_bytes].decode("utf-8", errors="ignore")


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
) -> tuple[DataLoader, DataLoader]:
    """Byte-level LM loaders over :func:`load_text`: shuffled training and fixed-order held-out batches.

    The held-out split is the contiguous last ``val_fraction`` of the byte
    stream, so no training window overlaps it. Batches are dicts of
    ``input_ids`` and ``attention_mask`` (batch, seq_len) and ``num_bytes``
    (batch,). Training windows are all full; the held-out tail's last window
    is padded, so every held-out byte but each window's first is scored.

    >>> train, val = text_loaders(batch_size=4, seq_len=16, max_bytes=10_000)
    >>> batch = next(iter(train))
    >>> tuple(batch["input_ids"].shape), batch["num_bytes"].tolist()
    ((4, 16), [15, 15, 15, 15])
    """
    check_split(val_fraction, seq_len)
    ids = ByteTokenizer().encode(load_text(source, max_bytes=max_bytes))
    n_val = int(round(len(ids) * val_fraction))
    split = len(ids) - n_val
    train = _windows(ids[:split], seq_len, pad_tail=False)
    val = _windows(ids[split:], seq_len, pad_tail=True)
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
        raise ValueError(
            f"{corpus} give {len(train)} training and {len(val)} held-out windows: "
            f"need at least batch_size={batch_size} and 1; {hint}"
        )
    gen = torch.Generator().manual_seed(seed)
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=True, generator=gen),
        DataLoader(val, batch_size=batch_size),
    )
