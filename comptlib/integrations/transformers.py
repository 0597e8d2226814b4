"""Inverse distillation inside Hugging Face's ``Trainer``.

A user who already trains with ``transformers.Trainer`` keeps it: grow the
model with :func:`comptlib.grow`, then train it with
:class:`DistillationTrainer`, whose loss is the family's objective plus the
transferer's loss against the frozen source model. Everything else (the
optimiser, schedules, logging, checkpoints, accelerate) is the Trainer's own.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import Trainer

from comptlib.family import Forward, family_of
from comptlib.transferer import freeze


class DistillationTrainer(Trainer):
    """``Trainer`` whose loss adds ``transferer(student_out, teacher_out, step, total)`` from a frozen ``teacher``.

    ``transferer`` defaults to the teacher family's (logit KL with a linearly
    decaying weight for decoder LMs), ``forward`` to the family's
    ``forward(model, batch) -> Outputs``; ``step`` and ``total`` are the
    Trainer's global step and ``max_steps``. Pass ``feature_map`` (the
    grower's, after exact growth) to a feature transferer. Its trainable parts
    (a projector) are built from the first training batch and trained by the
    Trainer's optimiser. The mean transfer loss is logged as ``transfer_loss``.
    """

    def __init__(
        self,
        *args: Any,
        teacher: nn.Module,
        transferer: nn.Module | None = None,
        forward: Forward | None = None,
        feature_map: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        family = family_of(teacher)
        transferer = transferer or family.transferer()
        if transferer is None:
            raise ValueError(
                f"transferer: the {family.name} family distils nothing by default (growth alone measured better); "
                "pass one, e.g. transferer=FeatureMSE()"
            )
        self.teacher = freeze(teacher).to(self.args.device)
        self.transferer = transferer.to(self.args.device)
        self.family_forward = forward or family.forward
        self.feature_map = feature_map
        self.model_accepts_loss_kwargs = (
            False  # the loss is a per-batch mean: let the Trainer scale it for accumulation
        )
        self._transfer_sum, self._transfer_count = 0.0, 0

    def _outputs(self, model: nn.Module, inputs: dict[str, Any]) -> tuple[Any, Any]:
        student = self.family_forward(model, inputs)
        with torch.no_grad():
            teacher = self.family_forward(self.teacher, inputs)
        return student, teacher

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's optimiser, with the transferer (set up on the first training batch) as one more group."""
        batch = self._prepare_inputs(next(iter(self.get_train_dataloader())))
        student, teacher = self._outputs(self.model, batch)
        self.transferer.setup(student, teacher, self.feature_map)
        optimizer = super().create_optimizer(model)
        extra = [p for p in self.transferer.parameters() if p.requires_grad]
        if extra:
            optimizer.add_param_group({"params": extra, "weight_decay": 0.0})
        return optimizer

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        student, teacher = self._outputs(model, inputs)
        loss = student.loss
        if model.training:
            transfer = self.transferer(student, teacher, self.state.global_step, self.state.max_steps)
            loss = loss + transfer
            self._transfer_sum += float(transfer.detach())
            self._transfer_count += 1
        return (loss, {"logits": student.logits}) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self._transfer_count and "loss" in logs:
            logs = logs | {"transfer_loss": self._transfer_sum / self._transfer_count}
            self._transfer_sum, self._transfer_count = 0.0, 0
        super().log(logs, *args, **kwargs)
