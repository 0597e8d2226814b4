"""Mixed precision for a chain stage: autocast for the student and teacher, a GradScaler for fp16.

``"fp32"`` changes nothing. ``"bf16"`` runs forward passes under
``torch.autocast`` in bfloat16 (on GPU and CPU; weights, gradients and the
optimiser stay fp32). ``"fp16"`` does the same in float16 with a
``GradScaler`` (GPU only). A teacher kept in bf16 (``teacher_dtype="bf16"``)
is a bf16 copy run under bf16 autocast whatever the student's precision; its
outputs come back in fp32 for the transfer loss.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import attrs
import torch
from torch import nn

from comptlib.family import Outputs
from comptlib.settings import PRECISIONS, TEACHER_DTYPES

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, teacher_dtype: str | None, device: torch.device) -> None:
    """Raise a ValueError naming the setting if the precision cannot run on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if teacher_dtype not in TEACHER_DTYPES:
        raise ValueError(f"teacher_dtype must be None or 'bf16', got {teacher_dtype!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision='fp16' needs a CUDA device (it uses a GradScaler), got {device}; use 'bf16'")


@attrs.define
class Precision:
    """One stage's autocast contexts and (for fp16) its gradient scaler."""

    precision: str
    teacher_dtype: str | None
    device: torch.device
    scaler: torch.amp.GradScaler | None = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Where the student's forward and the losses run."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_DTYPES[self.precision])

    def teacher(self, model: nn.Module) -> nn.Module:
        """The teacher the stage runs: ``model`` itself, or a bf16 copy (``model`` waits on the CPU meanwhile)."""
        if self.teacher_dtype is None:
            return model
        run = copy.deepcopy(model).to(_DTYPES[self.teacher_dtype])
        model.to("cpu")
        return run

    def teacher_autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = self.teacher_dtype or self.precision
        if dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_DTYPES[dtype])

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, opt: torch.optim.Optimizer) -> None:
        """Bring gradients to their true scale (before clipping)."""
        if self.scaler is not None:
            self.scaler.unscale_(opt)

    def step(self, opt: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            opt.step()
            return
        self.scaler.step(opt)
        self.scaler.update()

    def skip(self, opt: torch.optim.Optimizer) -> None:
        """Leave out this step's update (its gradients are dropped by the caller)."""
        if self.scaler is not None:
            self.scaler.update()  # unscale_ ran: the scaler must move on to the next step

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def usable(out: Outputs) -> Outputs:
    """Teacher outputs made in inference mode (or in low precision), as ordinary fp32 tensors autograd can save."""

    def fix(x: torch.Tensor | None) -> torch.Tensor | None:
        if x is None or not x.is_floating_point() and not x.is_inference():
            return x
        if x.is_floating_point() and x.dtype != torch.float32:
            return x.float()
        return x.clone()

    return Outputs(loss=fix(out.loss), logits=fix(out.logits), features=fix(out.features), mask=fix(out.mask))
