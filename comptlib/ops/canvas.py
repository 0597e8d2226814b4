"""A target tensor being written, with a record of which entries were written, and its writer."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, Literal

import attrs
import torch

Settle = Callable[[torch.Tensor, bool], None]
"""``settle(tensor, whole)``, called before a canvas's first write: ``whole`` when the writes cover the tensor."""
_SETTLE: ContextVar[Settle | None] = ContextVar("comptlib_settle", default=None)


@contextlib.contextmanager
def lazy_init(settle: Settle) -> Iterator[None]:
    """Canvases made inside call ``settle`` before their first write (or when finished unwritten).

    A grower writing into a target that has storage but no init yet uses it to
    draw each tensor's init only when growth does not write that tensor whole.
    """
    token = _SETTLE.set(settle)
    try:
        yield
    finally:
        _SETTLE.reset(token)


def _covers(index: Any, shape: torch.Size) -> bool:
    """Whether ``tensor[index]`` is all of a tensor of ``shape`` (full slices only)."""
    parts = index if isinstance(index, tuple) else (index,)
    return len(parts) <= len(shape) and all(
        isinstance(p, slice) and p.indices(n) == (0, n, 1) for p, n in zip(parts, shape)
    )


class Canvas:
    """The target's initial tensor, onto which a grower places source values, in place.

    Entries never written keep the target's random init: the function does
    not depend on them after an exact growth, which breaks symmetry for free.
    Writes go straight into ``init`` (no copy of a large target), and which
    entries were written is worked out only when noise needs it.
    """

    def __init__(self, init: torch.Tensor, *, whole: bool = False) -> None:
        """``whole``: the puts to come write every entry, so a target's init need not be drawn (:func:`lazy_init`)."""
        self.data = init.detach()
        self._puts: list[Any] = []
        self._settle = _SETTLE.get()
        if whole:
            self._settled(True)

    def put(self, index: Any, value: torch.Tensor | float) -> None:
        """Write ``value`` at ``index`` (any tensor index expression)."""
        self._settled(_covers(index, self.data.shape))
        self.data[index] = value
        self._puts.append(index)

    def _settled(self, whole: bool) -> None:
        """Tell :func:`lazy_init`'s hook, once, whether the first write covers the tensor."""
        if self._settle is not None:
            settle, self._settle = self._settle, None
            settle(self.data, whole)

    @property
    def written(self) -> torch.Tensor:
        """A boolean mask of the entries written so far."""
        mask = torch.zeros_like(self.data, dtype=torch.bool)
        for index in self._puts:
            mask[index] = True
        return mask

    def finish(self, noise: float, where: str, gen: torch.Generator) -> torch.Tensor:
        """Return the tensor, with Gaussian noise of ``noise`` x its std on ``where`` entries.

        ``where`` is ``"free"`` (never written: keeps an exact growth exact) or
        ``"written"`` (a warm start's copied values).
        """
        self._settled(False)
        if noise == 0.0:
            return self.data
        mask = ~self.written if where == "free" else self.written
        if not mask.any():
            return self.data
        scale = self.data.float().std().item() if self.data.numel() > 1 else 1.0
        eps = torch.randn(self.data.shape, generator=gen, dtype=torch.float32) * (noise * (scale or 1.0))
        return torch.where(mask, self.data + eps.to(self.data), self.data)


@attrs.frozen
class Writer:
    """Copies finished canvases into parameters, with a grower's noise where its method allows.

    ``where`` is ``"free"`` for function-preserving growth (noise only on
    entries the function does not depend on) or ``"written"`` for a warm
    start (noise on the copied entries); see :meth:`Canvas.finish`.
    """

    noise: float
    where: Literal["free", "written"]
    gen: torch.Generator

    def __call__(self, param: torch.Tensor, canvas: Canvas) -> None:
        """Copy ``canvas`` into ``param`` (or a view of it); nothing to copy when it was written in place."""
        finished = canvas.finish(self.noise, self.where, self.gen)
        if not _same(finished, param):
            param.copy_(finished)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors are the same view of the same memory."""
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype
