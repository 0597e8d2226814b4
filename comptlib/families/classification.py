"""What the image-classification families share: the objective on a feature tap, and evaluation."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from comptlib.family import Outputs


def classify(features: torch.Tensor, head: nn.Module, labels: torch.Tensor) -> Outputs:
    """Cross-entropy of ``head(features)``; the features are what a transferer distils."""
    logits = head(features)
    return Outputs(loss=F.cross_entropy(logits, labels), logits=logits, features=features)


@torch.no_grad()
def evaluate_classifier(model: nn.Module, loader: Iterable, device: torch.device) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy over ``loader``, in eval mode."""
    was_training = model.training
    model.eval()
    correct, total, loss = 0, 0, 0.0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        loss += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(-1) == labels).sum().item()
        total += labels.numel()
    model.train(was_training)
    if total == 0:
        raise ValueError("the evaluation loader yielded no samples")
    return {"accuracy": correct / total, "loss": loss / total}
