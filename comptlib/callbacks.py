"""What watches a chain train: hooks called at fixed points of ``Chain.fit`` and of each stage's step loop.

A :class:`Callback` overrides the methods it needs; every one is a no-op by
default. ``Chain(callbacks=[...])`` adds yours after the built-in ones
(FLOP counting, progress bars, ``metrics.jsonl``, periodic evaluation and the
budget search, mid-stage checkpoints), which use this same protocol. The
order of the calls::

    on_fit_start(chain)
      on_stage_start(stage)        # per model, before its first step (a resumed stage: state loaded)
        on_evaluate(stage, metrics)  # right after growth, every eval_every steps, at the end
        watch(stage, role)         # around the teacher's forward / the student's forward + backward
        on_step_end(stage)         # after each optimiser step; stage.step is the steps done
        on_log(stage, entry)       # every LOG_EVERY steps and at the last: {"loss", "lr"}
      on_stage_end(stage)          # trained and evaluated; stage.record is its history entry
    on_fit_end(chain)              # also when fit fails, so what a hook holds is released

A hook stops a stage early with ``stage.stop = True`` (the budget search
does); the chain then moves on to the next model. ``stage`` is a
:class:`~comptlib.stage.Stage`: its ``name``, ``index``, ``step``,
``total``, ``student``, ``record`` and ``state_dict()`` are there to read.

Examples
--------
>>> from comptlib.callbacks import Callback
>>> class LossPrinter(Callback):
...     def on_log(self, stage, entry):
...         print(stage.name, stage.step, round(entry["loss"], 2))
>>> # Chain(models, callbacks=[LossPrinter()]).fit(train)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from comptlib.checkpoint import (
    load_partial,
    load_snapshot,
    position,
    save_partial,
    save_sharded,
    save_snapshot,
    save_stage,
    trim_metrics,
)
from comptlib.io import append_jsonl
from comptlib.ledger import count_flops

if TYPE_CHECKING:
    from comptlib.chain import Chain
    from comptlib.stage import Stage

LOG_EVERY = 10
"""Steps between two loss reports (``on_log``): each costs a device sync."""


class Callback:
    """The hook protocol; subclasses override what they need."""

    def on_fit_start(self, chain: Chain) -> None: ...
    def on_stage_start(self, stage: Stage) -> None: ...
    def on_evaluate(self, stage: Stage, metrics: dict[str, float]) -> None: ...
    def on_step_end(self, stage: Stage) -> None: ...
    def on_log(self, stage: Stage, entry: dict[str, float]) -> None: ...
    def on_stage_end(self, stage: Stage) -> None: ...
    def on_fit_end(self, chain: Chain) -> None: ...

    def watch(self, stage: Stage, role: str) -> contextlib.AbstractContextManager[Any] | None:
        """A context around ``role``'s work in this step (``"teacher"``: its forward; ``"student"``:
        forward, loss and backward), or None."""
        return None


class FlopCounter(Callback):
    """Counts the FLOPs of the first step, per sample, for the ledger (``stage.flops``)."""

    def watch(self, stage: Stage, role: str) -> contextlib.AbstractContextManager[Any] | None:
        return self._count(stage, role) if stage.step == 0 else None

    @contextlib.contextmanager
    def _count(self, stage: Stage, role: str) -> Iterator[None]:
        with count_flops() as counter:
            yield
        stage.flops[role == "teacher"] = counter.get_total_flops() / stage.local_batch


class Evaluation(Callback):
    """Evaluates every ``every`` steps and, for the budget search, stops a stage that reached its target.

    Under ``Optim(schedule="wsd")`` the budget search evaluates a decayed branch
    at each of these steps before the decay (:meth:`Stage.decay_branch`): what a
    stage told to stop there would end with.
    """

    def __init__(self, every: int) -> None:
        self.every = every

    def on_step_end(self, stage: Stage) -> None:
        if self.every and stage.step % self.every == 0 and stage.step < stage.total:
            stage.decay_branch() if stage.branches else stage.evaluate()

    def on_evaluate(self, stage: Stage, metrics: dict[str, float]) -> None:
        if stage.target is None or stage.phase == "grown":
            return
        value = metrics[stage.family.metric]
        stage.reached = value >= stage.target if stage.family.higher_is_better else value <= stage.target
        stage.stop = stage.stop or stage.reached


class PreDecaySnapshot(Callback):
    """Keeps a copy of each stage's student where its LR decay begins, as ``stage.snapshot``.

    ``Chain(grow_from="pre_decay")`` grows the next model from it: exact growth
    then hands over weights that can still move (not annealed into a sharp
    minimum), while the predecessor's decay goes on to give its final model,
    the teacher. The copy costs no step; the decay's steps are the
    predecessor's own, counted in its stage. With a checkpoint folder it is
    saved there too (``pre_decay.safetensors``), so a stage resumed past its
    decay start still has it.
    """

    def on_stage_start(self, stage: Stage) -> None:
        if stage.resume_from is not None and stage.folder is not None:
            stage.snapshot = load_snapshot(stage.folder, stage.student, stage.signature)

    def on_step_end(self, stage: Stage) -> None:
        if stage.step == stage.optim.decay_start(stage.total) and stage.snapshot is None:  # None: no branch kept
            self._keep(stage, stage.trainee.copy().eval())

    def on_evaluate(self, stage: Stage, metrics: dict[str, float]) -> None:
        if stage.reached and stage.branch_origin is not None:  # the budget search keeps a decay branch
            self._keep(stage, stage.branch_start_copy())

    @staticmethod
    def _keep(stage: Stage, snapshot: torch.nn.Module) -> None:
        stage.snapshot = snapshot
        if stage.folder is not None and stage.world.main:
            save_snapshot(stage.folder, stage.snapshot, stage.signature)


class ShrinkPerturb(Callback):
    """Shrink-and-perturb a grown model right after growth: ``W <- shrink * W + perturb * N(0, 1)``.

    Ash & Adams (2020, "On Warm-Starting Neural Network Training"): a warm start
    generalises worse than a fresh one, and shrinking the inherited weights
    while adding a little noise closes most of that gap. Only matrices
    (``dim >= 2``) change: norms and biases set scales, not features. The
    noise has its own generator, seeded by ``seed`` and the stage, so the data
    order stays that of the chain without it.
    """

    def __init__(self, shrink: float, perturb: float, seed: int) -> None:
        self.shrink, self.perturb, self.seed = shrink, perturb, seed

    @torch.no_grad()
    def on_stage_start(self, stage: Stage) -> None:
        if stage.teacher is None or stage.resume_from is not None:  # not grown, or its trained state is loaded
            return
        gen = torch.Generator().manual_seed(self.seed + stage.index)
        for param in stage.student.parameters():
            if param.dim() >= 2:
                noise = torch.randn(param.shape, generator=gen, dtype=param.dtype)
                param.mul_(self.shrink).add_(noise.to(param.device), alpha=self.perturb)


class MetricsLog(Callback):
    """Appends loss reports and evaluations to ``metrics.jsonl``, one JSON object a line (no bare NaN)."""

    def __init__(self, run: Path) -> None:
        self.path = run / "metrics.jsonl"

    def on_stage_start(self, stage: Stage) -> None:
        """Drop the stage's lines past where it resumes (and a torn tail): they are logged again."""
        done = stage.resume_from["progress"]["step"] if stage.resume_from is not None else -1
        trim_metrics(self.path.parent, stage.name, done)

    def on_log(self, stage: Stage, entry: dict[str, float]) -> None:
        append_jsonl(self.path, _finite({"model": stage.name, "step": stage.step, **entry}))

    def on_evaluate(self, stage: Stage, metrics: dict[str, float]) -> None:
        append_jsonl(self.path, _finite({"model": stage.name, "step": stage.step, "val": metrics}))


def _finite(value: Any) -> Any:
    """A non-finite number becomes ``null`` (bare NaN is not JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return {k: _finite(v) for k, v in value.items()} if isinstance(value, dict) else value


class Checkpointer(Callback):
    """Each finished stage, mid-stage checkpoints every ``every`` steps, and resume from them.

    Every rank builds the state (its reductions are collective). Unsharded,
    only the main rank (``write``) writes it, as ``partial.pt``; a sharded
    student is saved by every rank, each its own shards (:func:`save_sharded`).
    """

    def __init__(self, every: int, resume: bool, write: bool) -> None:
        self.every, self.resume, self.write = every, resume, write

    def on_stage_start(self, stage: Stage) -> None:
        if self.resume and stage.folder is not None:
            stage.resume_from = load_partial(stage.folder, stage.signature, stage.world, stage.sharded)

    def on_step_end(self, stage: Stage) -> None:
        due = self.every and stage.step % self.every == 0 and stage.step < stage.total
        if due and stage.folder is not None and not stage.stop:
            state = stage.state_dict()
            if stage.sharded:
                save_sharded(stage.folder, state, stage.world)
            elif self.write:
                save_partial(stage.folder, state)

    def on_stage_end(self, stage: Stage) -> None:
        """The finished stage: weights, data position and RNG, then ``stage.json`` last."""
        if self.write and stage.folder is not None:
            save_stage(stage.folder, stage.student, stage.record, position(stage.stream))


class ProgressBar(Callback):
    """A rich progress bar per stage, with the loss and an ETA."""

    def on_fit_start(self, chain: Chain) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.3f}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        )
        self.bar.start()

    def on_stage_start(self, stage: Stage) -> None:
        self.task = self.bar.add_task(stage.name, total=stage.total if stage.trained else 1, loss=float("nan"))

    def on_log(self, stage: Stage, entry: dict[str, float]) -> None:
        self.bar.update(self.task, completed=stage.step, loss=entry["loss"])

    def on_stage_end(self, stage: Stage) -> None:
        self.bar.update(self.task, completed=self.bar.tasks[self.task].total)

    def on_fit_end(self, chain: Chain) -> None:
        self.bar.stop()
