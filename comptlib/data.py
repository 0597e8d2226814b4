"""Real datasets that work offline, and loader helpers.

Nothing here downloads: the digits come with scikit-learn. Any PyTorch
``DataLoader`` works with :class:`comptlib.Chain`; these are the built-in
defaults for examples, tests and ``comptlib grow``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset


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


def loader_length(loader: Iterable[Any]) -> int | None:
    """Batches per epoch, or None for an iterable without a length."""
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None
