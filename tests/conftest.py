"""Shared test setup: offline, no denormal slow-downs, small deterministic models."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: no spinning against other jobs

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_flush_denormal(True)

from hypothesis import settings as _hypothesis  # noqa: E402

_hypothesis.register_profile("ci", derandomize=True)  # CI draws the same examples every run: a red is reproducible
if os.environ.get("CI"):
    _hypothesis.load_profile("ci")


def perturb(model: torch.nn.Module, scale: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Make every parameter non-trivial (norm gammas, zero-init heads...) so growth is tested for real."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model


@pytest.fixture(scope="session")
def digits():
    from comptlib.data import digits_loaders

    return digits_loaders(batch_size=64)
