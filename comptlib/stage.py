"""One link of a chain: grow the student from its trained predecessor, then train it against objective + transfer.

:class:`Stage` is what a stage *is*; what watches it (checkpoints, the budget
search, progress, ``metrics.jsonl``, FLOP counting) are the hooks of
:mod:`comptlib.callbacks`, called at fixed points of :meth:`Stage.run`.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from comptlib.callbacks import LOG_EVERY, Callback
from comptlib.checkpoint import DataStream, position, read_shards
from comptlib.data import batch_size_of, to_device
from comptlib.distributed import Step, Trainee, World, shard_eval, shard_teacher, shards
from comptlib.errors import DivergenceError
from comptlib.family import Family, Outputs
from comptlib.grower import Grower
from comptlib.inherit import attach_lora, inherited_masks, merge_lora
from comptlib.ledger import StageCost
from comptlib.precision import Precision, usable
from comptlib.settings import Optim, Runtime
from comptlib.transferer import Transferer, freeze


def lr_factor(total: int, warmup: int, floor: float, decay_start: int | None = None):
    """The LR multiplier of each step: linear warm-up to 1, then a cosine decay to ``floor``.

    With ``decay_start`` (warmup-stable-decay): 1 up to that step, then a linear
    decay whose every step is below the peak and above ``floor`` (reached at
    step ``total``, one past the last), so no step is spent at a rate of 0.
    """

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if decay_start is not None:
            progress = (step + 1 - decay_start) / (total + 1 - decay_start)
            return 1.0 if step < decay_start else floor + (1.0 - floor) * (1.0 - min(progress, 1.0))
        progress = (step - warmup) / max(total - warmup, 1)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _optimizer(params: Iterable[nn.Parameter], lr: float, weight_decay: float, betas: Sequence[float]):
    """AdamW with weight decay on matrices only (not on norms and biases); fused, 2-3x faster a step."""
    params = [p for p in params if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@attrs.define(eq=False)
class Stage:
    """Model ``index`` of a chain as it grows and trains; what the hooks read, and where they ask it to stop."""

    index: int
    name: str
    family: Family
    student: nn.Module
    total: int  # the budget, in steps
    trained: bool  # False: a pre-trained first model, measured for one step, not updated
    stream: DataStream
    val_loader: Iterable[Any] | None
    device: torch.device
    world: World
    optim: Optim
    runtime: Runtime
    callbacks: Sequence[Callback]
    teacher: nn.Module | None = None
    source: nn.Module | None = None  # what the student grows from, when not the teacher (grow_from="pre_decay")
    grower: Grower | None = None
    transfer: Transferer | None = None
    lora_rank: int | None = None  # train the inherited weights through LoRA of this rank
    target: float | None = None
    folder: Path | None = None
    signature: str = ""
    on_nonfinite: str = "stop"
    max_skips: int = 0
    # what the steps change
    step: int = 0
    phase: str = "grown"  # "grown" (before training), "train", "end"
    stop: bool = False
    reached: bool = False
    snapshot: nn.Module | None = None  # the student where its LR decay began, kept by PreDecaySnapshot
    branch_origin: dict[str, Any] | None = None  # while a decay branch runs: the state it started from
    branched: int = 0  # steps of decay branches tried and dropped: the budget search's own cost
    next_branch: int = 0  # the first step at which the next decay branch may start
    resume_from: dict[str, Any] | None = None
    flops: list[float] = attrs.Factory(lambda: [0.0, 0.0])  # per sample: student step, teacher forward
    samples: int = 0
    losses: list[torch.Tensor] = attrs.Factory(list)
    transfer_losses: list[torch.Tensor] = attrs.Factory(list)
    skipped: list[int] = attrs.Factory(list)
    local_batch: int = 0
    record: dict[str, Any] = attrs.Factory(dict)
    elapsed: float = 0.0  # training seconds, evaluations left out
    _start: float = 0.0
    _clock: float = 0.0  # seconds spent evaluating since _start
    # the training machinery, built by _setup
    fmap: torch.Tensor | None = attrs.field(init=False, default=None)
    first: Any = attrs.field(init=False, default=None)
    amp: Precision = attrs.field(init=False, default=None)
    teacher_run: nn.Module | None = attrs.field(init=False, default=None)
    trainee: Trainee = attrs.field(init=False, default=None)
    params: list[nn.Parameter] = attrs.field(init=False, factory=list)
    transfer_params: list[nn.Parameter] = attrs.field(init=False, factory=list)
    opt: torch.optim.Optimizer = attrs.field(init=False, default=None)
    sched: Any = attrs.field(init=False, default=None)

    def _fire(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def _watch(self, role: str) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        for callback in self.callbacks:
            context = callback.watch(self, role)
            if context is not None:
                stack.enter_context(context)
        return stack

    def evaluate(self, model: nn.Module | None = None, **extra: Any) -> None:
        """Evaluate on the validation loader (if any) into ``record["val"]``; a pause of the stage's clock.

        ``extra`` goes into the record's entry beside the metrics (a decay branch's ``decay_from``).
        The global RNG is put back afterwards: iterating a loader draws from it (its workers' base seed),
        and augmentation draws from it too, so without that how often a stage evaluates would change
        what it trains on.
        """
        if self.val_loader is None:
            return
        paused = time.perf_counter()
        loader, count = shard_eval(self.val_loader, self.world) if self.family.sample_means else (self.val_loader, None)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            if model is None:  # mid-stage: the training student (sharded: each block gathered for its forward)
                with self.trainee.gathered() as model:
                    metrics = self.family.evaluate(model, loader, self.device)
                self.student.train()
            else:
                metrics = self.family.evaluate(model, loader, self.device)
        metrics = self.world.mean_metrics(metrics, count)  # count: this rank's share of the samples
        self.record["val"].append({"step": self.step, **metrics, **extra})
        self._clock += time.perf_counter() - paused
        self._fire("on_evaluate", metrics)

    # -- the stage, top to bottom ---------------------------------------------------
    def run(self) -> nn.Module:
        """Grow, train and evaluate; returns the trained student (``record`` is its history entry)."""
        self._grow()
        self.record = {"name": self.name, "params": num_params(self.student), "steps": self.total, "val": []}
        self._fire("on_stage_start")
        if self.teacher is not None and self.resume_from is None:
            self.evaluate(self.student)  # right after growth: what the student inherited
        self._setup()
        self.phase = "train"
        self._train()
        self.phase = "end"
        return self._finish()

    def _grow(self) -> None:
        if self.teacher is None:
            return
        self.teacher = freeze(self.teacher)
        source = self.teacher if self.source is None else freeze(self.source)
        if self.grower is not None:
            self.grower.grow(source, self.student)
            self.fmap = self.grower.feature_map(source, self.student)
        if self.lora_rank is not None:
            masks = inherited_masks(self.grower, source, copy.deepcopy(self.student))  # the grown shapes, on its device
            attach_lora(self.student, masks, self.lora_rank)

    def _setup(self) -> None:
        """The first batch, the transfer's projector, precision, the optimiser and schedule; a resumed stage's state."""
        self.first = to_device(next(self.stream), self.device)
        self.local_batch = batch_size_of(self.first)
        self.record["batch_size"] = self.local_batch * self.world.size  # the global batch
        forward, probe = self.family.forward, None
        if self.teacher is not None and (self.grower is not None or self.transfer is not None):
            with torch.no_grad():  # one teacher forward on the first batch serves both uses below
                probe = forward(self.teacher, self.first)
        if self.grower is not None and self.resume_from is None:
            self.record["growth"] = self._growth_error(probe.logits)
        if self.transfer is not None:
            self.transfer.to(self.device)
            with torch.no_grad():
                self.transfer.setup(forward(self.student, self.first), probe, self.fmap)
            self.world.broadcast(self.transfer)  # one projector init on every rank
        rt = self.runtime
        self.amp = Precision(rt.precision, rt.teacher_dtype, self.device)
        if self.teacher is not None and self.transfer is not None:  # no transfer: no teacher forward to pay for
            self.teacher_run = self._teacher_step(self.amp.teacher(self.teacher))
        self.trainee = Trainee(
            self.student, self.family.forward, self.world, self.device, rt.strategy, rt.compile, self.transfer
        )
        self.transfer_params = list(self.transfer.parameters()) if self.transfer is not None else []
        self.params = self.trainee.parameters() + self.transfer_params
        lr, warmup = self.optim.peak(grown=self.index > 0)
        self.opt = _optimizer(self.params, lr, self.optim.weight_decay, self.optim.betas)
        wsd = self.optim.decay_start(self.total) if self.optim.schedule == "wsd" else None
        schedule = lr_factor(self.total, int(round(warmup * self.total)), self.optim.min_lr_ratio, wsd)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, schedule)
        if self.resume_from is not None:
            self.load_state_dict(self.resume_from)

    def _teacher_step(self, teacher: nn.Module) -> nn.Module:
        """The teacher's forward as a module: with a sharded student, a sharded copy of the teacher (its full
        weights wait on the CPU meanwhile); otherwise the family forward of the teacher itself."""
        if not self.sharded:
            return Step(self.family.forward, teacher)
        sharded = shard_teacher(teacher, self.family.forward, self.device)
        self.teacher.to("cpu")
        return sharded

    @property
    def sharded(self) -> bool:
        """Whether the student (and then the teacher) is sharded over the ranks (FSDP)."""
        return shards(self.world, self.runtime.strategy)

    def _growth_error(self, teacher_logits: torch.Tensor) -> dict[str, Any]:
        """How far growth moved the function: the logits' max difference on the first batch (student in eval mode).

        What the model card reports; 0 to float tolerance for exact growth.
        The teacher is frozen, so already in eval mode.
        """
        mode = self.student.training
        self.student.eval()
        try:
            with torch.no_grad():
                after = self.family.forward(self.student, self.first).logits.float()
        finally:
            self.student.train(mode)
        before = teacher_logits.float()
        diff = (before - after).abs().max().item()
        return {"method": self.grower.method, "max_abs": diff, "max_rel": diff / max(before.abs().max().item(), 1e-12)}

    def _train(self) -> None:
        """The step loop: one optimiser step, then the hooks."""
        self.student.train()
        self._start, self._clock = time.perf_counter() - self.elapsed, 0.0
        for step in range(self.step, self.total if self.trained else 1):
            self._step(step)
            if not self.trained:  # a pre-trained first model: one measured step, no update
                break
            if (self.step % LOG_EVERY == 0 or self.step == self.total) and self.losses:
                loss_now = self.world.mean(self.losses[-1]).item()
                self._fire("on_log", {"loss": loss_now, "lr": self.sched.get_last_lr()[0]})
            self._fire("on_step_end")
            if self.stop:
                break
        self.elapsed = self.elapsed_now()

    def _step(self, step: int) -> None:
        """Batch, teacher forward, student forward, loss, backward, update, schedule."""
        amp, opt = self.amp, self.opt
        batch = self.first if step == 0 else to_device(next(self.stream), self.device)
        t_out = None
        if self.teacher_run is not None:
            with self._watch("teacher"), torch.inference_mode(), amp.teacher_autocast():
                t_out = Outputs(**self.teacher_run(batch))
            t_out = usable(t_out)
        with self._watch("student"):
            with amp.autocast():
                out = self.trainee(batch, eager=step == 0)
                loss = out.loss
                if self.transfer is not None:
                    extra = self.transfer(out, t_out, step, self.total)
                    loss = loss + extra
            amp.backward(loss)
        if not self.trained:
            opt.zero_grad(set_to_none=True)
            return
        self.world.average_gradients(self.transfer_params)  # the student's are averaged by DDP/FSDP
        amp.unscale(opt)
        norm = self.trainee.clip_grad_norm_(self.params, self.optim.grad_clip) if self.optim.grad_clip else None
        if self._diverged(step, loss, norm):
            amp.skip(opt)
        else:
            amp.step(opt)
            self.losses.append(loss.detach())
            if self.transfer is not None:
                self.transfer_losses.append(extra.detach())
        opt.zero_grad(set_to_none=True)
        self.sched.step()
        self.samples += batch_size_of(batch) * self.world.size
        self.step = step + 1

    # -- the budget search under WSD: decayed branches -----------------------------------
    @property
    def branches(self) -> bool:
        """Whether the budget search evaluates a decayed branch here: a target, WSD, still before the decay,
        and as many steps trained since the last branch as it took (so the branches cost at most the stage)."""
        search = self.target is not None and self.optim.schedule == "wsd"
        return search and self.next_branch <= self.step < self.optim.decay_start(self.total)

    def decay_branch(self) -> None:
        """Decay the LR from here to its floor, evaluate, and keep that if it reached the target.

        What a WSD stage stopped here would have done: its decay takes
        ``decay / (1 - decay)`` of the steps so far, on the batches that come
        next. So the budget search compares decayed models, as a run told
        its budget would end, without re-running each budget. The next branch
        waits until the stage has trained as many steps again (evaluations in
        between are of the stage itself), so the branches cost at most the
        stage's own steps and their spacing grows by ``1 / (1 - decay)``. A
        branch that falls short is undone (weights, optimiser, schedule, data
        position and RNG): the stage goes on as if it had not run, and its
        steps are counted in ``record["branch_steps"]``, not in the ledger.
        """
        start, decay = self.step, self.optim.decay
        steps = max(int(round(start * decay / (1.0 - decay))), 1)
        self.next_branch = start + steps
        self.branch_origin = copy.deepcopy(self.state_dict())  # what a resumed stage loads: all a branch changes
        now, floor, lambdas = self.sched.lr_lambdas[0](start), self.optim.min_lr_ratio, self.sched.lr_lambdas

        def branch(s: int) -> float:  # linear to the floor, every step below the start and above the floor
            return floor + (now - floor) * (1.0 - (s + 1 - start) / (steps + 1))

        self.sched.lr_lambdas = [branch] * len(lambdas)
        for group, base in zip(self.opt.param_groups, self.sched.base_lrs):
            group["lr"] = base * branch(start)  # the rate of the branch's first step
        began = time.perf_counter()
        for step in range(start, start + steps):
            self._step(step)
        seconds = time.perf_counter() - began
        self.sched.lr_lambdas = lambdas
        self.evaluate(decay_from=start)
        if not self.reached:
            val = self.record["val"]
            self.load_state_dict(self.branch_origin)
            self.record["val"] = val  # the branch's evaluation stays in the history
            self.branched += steps
            self._clock += seconds  # the search's time, not the stage's
        self.branch_origin = None

    def branch_start_copy(self) -> nn.Module:
        """A plain copy of the student where the running decay branch began (for ``grow_from="pre_decay"``)."""
        branch = copy.deepcopy(self.trainee.state(self.opt))
        self.trainee.load(self.opt, self.branch_origin)
        try:
            return self.trainee.copy().eval()
        finally:
            self.trainee.load(self.opt, branch)
            self.student.train()

    def _diverged(self, step: int, loss: torch.Tensor, norm: torch.Tensor | None) -> bool:
        """Whether this step's update must be skipped; raises :class:`DivergenceError` where it must stop.

        The gradient norm is checked too when clipping computes it (not under
        fp16, whose GradScaler skips overflowing steps itself).
        """
        finite = torch.isfinite(loss.detach())
        if norm is not None and self.amp.scaler is None:
            finite = finite & torch.isfinite(norm)
        if finite.item():
            return False
        what = f"loss {loss.item():.4g}" + (f", gradient norm {norm.item():.4g}" if norm is not None else "")
        self.skipped.append(step)
        if self.on_nonfinite == "skip" and len(self.skipped) <= self.max_skips:
            return True
        kept = f"; the checkpoints already in {self.folder.parent} are kept" if self.folder is not None else ""
        skips = f" after skipping {self.max_skips}" if self.on_nonfinite == "skip" else ""
        raise DivergenceError(
            f"{self.name} diverged at step {step + 1} of {self.total} ({what}){skips}: training stopped and nothing "
            f"of this stage was saved{kept}. Lower the learning rate (lr), or skip such steps "
            "(on_nonfinite='skip' with max_skips=N)."
        )

    def _finish(self) -> nn.Module:
        """Unwrap and merge the student, hand the teacher back, evaluate, and fill ``record``."""
        student = self.trainee.unwrap()
        if self.lora_rank is not None:
            merge_lora(student)
        if self.teacher is not None:
            _unfreeze(self.teacher.to(self.device))
        if not self.reached:
            self.evaluate(student)
        world, record = self.world, self.record
        cost = StageCost(self.name, self.flops[0], self.flops[1], self.samples)
        record["loss"] = world.mean(torch.stack(self.losses)).tolist() if self.losses else []
        transfer = self.transfer_losses and self.trained
        record["transfer_loss"] = world.mean(torch.stack(self.transfer_losses)).tolist() if transfer else []
        record["wall_time"] = self.elapsed if self.trained else 0.0
        record["trained"] = self.trained
        steps = self.step if self.trained else self.total
        record |= {"steps": steps, "budget": self.total, "target": self.target, "reached": self.reached}
        record |= {"cost": attrs.asdict(cost), "flops": cost.total}
        if self.skipped:
            record["skipped"] = list(self.skipped)
        if self.branched:
            record["branch_steps"] = self.branched
        self.student = student
        return student

    def elapsed_now(self) -> float:
        return time.perf_counter() - self._start - self._clock

    # -- resume: everything a mid-stage checkpoint holds -------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The stage's whole state (collective under several processes: every rank calls it)."""
        world = self.world
        progress = {
            "step": self.step,
            "loss": world.mean(torch.stack(self.losses)).tolist() if self.losses else [],
            "transfer_loss": world.mean(torch.stack(self.transfer_losses)).tolist() if self.transfer_losses else [],
            "samples": self.samples,
            "flops": list(self.flops),
            "elapsed": self.elapsed_now(),
            "skipped": list(self.skipped),
            "branched": self.branched,
            "next_branch": self.next_branch,
        }
        return {
            "signature": self.signature,
            **self.trainee.state(self.opt),  # "student", "optimizer": sharded, this rank's shards
            "transfer": self.transfer.state_dict() if self.transfer is not None else {},
            "scheduler": self.sched.state_dict(),
            "val": self.record["val"],
            "progress": progress,
            **({"scaler": self.amp.state_dict()} if self.amp.scaler is not None else {}),
            **position(self.stream),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "shards" in state:  # sharded: each rank reads its shards into the student's and optimiser's layout
            state = state | read_shards(state, self.trainee.state(self.opt))
        self.trainee.load(self.opt, state)
        if self.transfer is not None:
            self.transfer.load_state_dict(state["transfer"])
        self.sched.load_state_dict(state["scheduler"])
        self.amp.load_state_dict(state.get("scaler", {}))
        self.stream.restore(state["stream"])
        torch.set_rng_state(state["rng"])
        progress = state["progress"]
        self.step, self.samples, self.flops = progress["step"], progress["samples"], list(progress["flops"])
        self.losses = [torch.tensor(v) for v in progress["loss"]]
        self.transfer_losses = [torch.tensor(v) for v in progress["transfer_loss"]]
        self.skipped = list(progress.get("skipped", []))
        self.branched, self.next_branch = progress.get("branched", 0), progress.get("next_branch", 0)
        self.elapsed = progress["elapsed"]
        self.record["val"] = state["val"]


def _unfreeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
