"""The FLOPs ledger: what each chain stage cost, and the family acceleration ratio.

Costs are measured, not estimated: ``FlopCounterMode`` runs on a real training
step, and the per-sample figure is multiplied by the samples a stage saw. A
chain stage costs the student's forward and backward plus the frozen
teacher's forward; independent training of a model costs its own forward and
backward for the baseline budget. Their ratio is CoM-PT's acceleration ratio.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import attrs
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


@contextlib.contextmanager
def count_flops() -> Iterator[FlopCounterMode]:
    """Count FLOPs of the code inside; read ``.get_total_flops()`` afterwards.

    Attention runs on the math backend, and ``nn.MultiheadAttention``'s
    inference fast path is off: the counter does not see inside those fused
    kernels and would under-count them.
    """
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            yield counter
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def flops_of(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn``."""
    with count_flops() as counter:
        fn()
    return counter.get_total_flops()


@attrs.frozen
class StageCost:
    """Measured cost of one chain stage.

    ``student_flops`` is the forward+backward cost per sample (what training
    that model alone costs per sample); ``teacher_flops`` the frozen teacher's
    forward per sample (0 for the first model).
    """

    name: str
    student_flops: float
    teacher_flops: float
    samples: int

    @property
    def flops_per_sample(self) -> float:
        return self.student_flops + self.teacher_flops

    @property
    def total(self) -> float:
        return self.flops_per_sample * self.samples


@attrs.frozen
class Ledger:
    """Per-stage costs of a chain and the comparison with independent training."""

    stages: tuple[StageCost, ...]

    @property
    def chain_flops(self) -> float:
        return sum(s.total for s in self.stages)

    def independent_flops(self, baseline_samples: int) -> float:
        """FLOPs to train every model of the family alone for ``baseline_samples`` samples."""
        return sum(s.student_flops * baseline_samples for s in self.stages)

    def acceleration_ratio(self, baseline_samples: int) -> float:
        """Independent-training FLOPs over chain FLOPs (CoM-PT's family speed-up)."""
        if baseline_samples <= 0:
            raise ValueError(f"baseline_samples must be positive, got {baseline_samples}")
        return self.independent_flops(baseline_samples) / self.chain_flops

    def to_dict(self, baseline_samples: int) -> dict[str, object]:
        return {
            "stages": [attrs.asdict(s) | {"total": s.total} for s in self.stages],
            "chain_flops": self.chain_flops,
            "independent_flops": self.independent_flops(baseline_samples),
            "baseline_samples": baseline_samples,
            "acceleration_ratio": self.acceleration_ratio(baseline_samples),
        }
