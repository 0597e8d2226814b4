"""`Chain`: train a model family in ascending size, growing and distilling each link.

The stage loop reads top to bottom: validate everything, then for each model
grow it from its trained predecessor, train it with objective + transfer
loss for its budget with a fresh AdamW, measure its cost, evaluate it.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import attrs
import torch
from sklearn.base import BaseEstimator
from torch import nn

from comptlib.checkpoint import (
    Stream,
    fingerprint,
    finished_stage,
    load_partial,
    load_stage,
    save_partial,
    save_stage,
    signature,
    trim_metrics,
    weights_hash,
    write_lineage,
)
from comptlib.data import batch_size_of, loader_length, to_device
from comptlib.distributed import STRATEGIES, Trainee, World, resolve_device, session, shard_loader
from comptlib.family import Family, family_of
from comptlib.grower import METHODS, Grower, GrowthError
from comptlib.inherit import attach_lora, inherited_masks, merge_lora
from comptlib.io import append_jsonl, clean_temporaries, repair_jsonl
from comptlib.ledger import Ledger, StageCost, count_flops
from comptlib.precision import Precision, check_precision, usable
from comptlib.transferer import Transferer, freeze

UNITS = ("steps", "epochs")
PAPER_BUDGETS = (8.0, 1.5, 1.0)
"""CoM-PT's CC3M budgets 128 -> 24 -> 16 -> 16 epochs, divided by 16; later models repeat the last."""


def _lr_lambda(total: int, warmup: int, floor: float):
    """Linear warm-up to 1, then cosine decay to ``floor``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(total - warmup, 1)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _optimizer(params: Iterable[nn.Parameter], lr: float, weight_decay: float, betas: tuple[float, float]):
    """AdamW with weight decay on matrices only (not on norms and biases); fused, 2-3x faster a step."""
    params = [p for p in params if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Chain(BaseEstimator):
    """A family of models trained as a chain in ascending size (CoM-PT).

    Model 0 is trained with the plain objective for ``budgets[0]`` (or taken as
    already trained with ``first_trained=True``). Every later model is grown
    from its trained predecessor by ``grower`` and trained for its budget with
    the objective plus ``transferer``'s distillation loss from the frozen
    predecessor, with a fresh AdamW, a short warm-up and a cosine schedule.

    Parameters
    ----------
    models : freshly built models, smallest first, all of one registered family.
    grower : ``"auto"`` (the family's exact grower), a method name (``"exact"``,
        ``"compt"``), a :class:`Grower`, ``None`` (no growth: the model keeps
        its own init and is only distilled, the ablation baseline), or one of
        those per link.
    transferer : ``"auto"`` (the family's default), ``None`` (no distillation),
        a :class:`Transferer` (copied for each link), or one per link.
    budgets : one per model, in ``unit``; default: the paper's 128:24:16 epoch
        proportions divided by 16 (8, 1.5, 1, 1, ... epochs).
    baseline_budget : the budget each model would get if trained alone, for the
        acceleration ratio; default ``budgets[0]``.
    lr, weight_decay, betas, warmup, min_lr_ratio, grad_clip : optimiser and
        schedule of model 0 (``warmup`` is a fraction of the stage's steps).
    grown_lr_scale, grown_warmup : peak-LR multiplier and warm-up fraction for
        grown models. The defaults (the first model's peak, re-warmed over 5 %)
        won the ablation in ``docs/benchmarks.md``: lower peaks keep more of the
        inherited function early but end worse at the paper's short budgets.
    eval_every : evaluate on the validation loader every N steps too (0: only
        right after growth and at the end of each stage).
    targets : budget search: one validation metric per model (or ``None``);
        a stage stops at the first evaluation (every ``eval_every`` steps)
        that reaches its target, and its budget is then only a cap. The
        ledger counts the steps actually trained.
    device : ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:1"``...;
        under torchrun, ``"auto"`` and ``"cuda"`` mean each rank's own GPU.
    precision : ``"fp32"``; ``"bf16"`` (autocast, GPU or CPU); ``"fp16"``
        (autocast with a GradScaler, GPU only). Weights and AdamW stay fp32.
    teacher_dtype : ``None`` (the teacher runs like the student) or ``"bf16"``
        (a bf16 copy of the teacher: half its memory and faster forwards).
    compile : ``torch.compile`` the student's training step.
    strategy : under several processes (torchrun, or an initialised process
        group), how the student is spread: ``"ddp"`` (a replica per rank) or
        ``"fsdp"`` (FSDP2 ``fully_shard``, for students too big for one
        device). The training loader's batch size is then per rank; a loader
        without a ``DistributedSampler`` is sharded with one seeded by
        ``seed``. Rank 0 writes checkpoints and shows progress.
    seed : seeds the global RNG and the training loader's generator, so the
        same settings give the same models and data order.
    names, progress, copy : model names in reports and checkpoints; rich
        progress bars; train copies of ``models`` (True) or the models given.
    inherited, lora_rank : ``"full"`` trains a grown model's inherited weights
        like its new ones; ``"lora"`` moves the inherited entries of its
        ``nn.Linear`` weights only through a rank-``lora_rank`` update (merged
        back after the stage) and trains the new entries fully.
    checkpoint_dir, checkpoint_every, resume : with a directory, each finished
        stage is saved there (plus ``metrics.jsonl`` and ``lineage.json``), and
        mid-stage state every ``checkpoint_every`` steps; ``resume=True`` reuses
        finished stages whose lineage is unchanged and continues a stage left
        mid-way, to the bit on CPU.

    Attributes
    ----------
    models_ : the trained models, smallest first.
    history_ : per stage, the loss curves, validation metrics, wall time and FLOPs.
    ledger_ : the measured :class:`~comptlib.ledger.Ledger`.
    report_ : a JSON-ready summary with the acceleration ratio.

    Examples
    --------
    >>> from torchvision.models import VisionTransformer
    >>> from comptlib.data import digits_loaders
    >>> vit = lambda d, L: VisionTransformer(8, 2, num_layers=L, num_heads=2, hidden_dim=d, mlp_dim=2 * d, num_classes=10)
    >>> train, val = digits_loaders(batch_size=64)
    >>> chain = Chain([vit(16, 1), vit(32, 2)], budgets=[20, 5], unit="steps", progress=False).fit(train, val)
    >>> len(chain.models_), chain.report_["acceleration_ratio"] > 1
    (2, True)
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        *,
        grower: str | Grower | None | Sequence[str | Grower | None] = "auto",
        transferer: str | Transferer | None | Sequence[Transferer | None] = "auto",
        budgets: Sequence[float] | None = None,
        unit: str = "epochs",
        baseline_budget: float | None = None,
        first_trained: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup: float = 0.05,
        min_lr_ratio: float = 0.0,
        grad_clip: float | None = 1.0,
        grown_lr_scale: float = 1.0,
        grown_warmup: float = 0.05,
        eval_every: int = 0,
        targets: Sequence[float | None] | None = None,
        device: str = "auto",
        seed: int = 0,
        names: Sequence[str] | None = None,
        progress: bool = True,
        copy: bool = True,
        checkpoint_dir: str | None = None,
        checkpoint_every: int = 0,
        resume: bool = False,
        inherited: str = "full",
        lora_rank: int = 8,
        precision: str = "fp32",
        teacher_dtype: str | None = None,
        compile: bool = False,
        strategy: str = "ddp",
    ) -> None:
        self.models = models
        self.grower = grower
        self.transferer = transferer
        self.budgets = budgets
        self.unit = unit
        self.baseline_budget = baseline_budget
        self.first_trained = first_trained
        self.lr = lr
        self.weight_decay = weight_decay
        self.betas = betas
        self.warmup = warmup
        self.min_lr_ratio = min_lr_ratio
        self.grad_clip = grad_clip
        self.grown_lr_scale = grown_lr_scale
        self.grown_warmup = grown_warmup
        self.eval_every = eval_every
        self.targets = targets
        self.device = device
        self.seed = seed
        self.names = names
        self.progress = progress
        self.copy = copy
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.resume = resume
        self.inherited = inherited
        self.lora_rank = lora_rank
        self.precision = precision
        self.teacher_dtype = teacher_dtype
        self.compile = compile
        self.strategy = strategy

    def __repr__(self) -> str:
        kinds = ", ".join(type(m).__name__ for m in self.models)
        return f"Chain([{kinds}], grower={self.grower!r}, transferer={self.transferer!r}, budgets={self.budgets!r}, unit={self.unit!r})"

    # -- validation: everything is checked before the first training step -------
    def _family(self) -> Family:
        if isinstance(self.models, nn.Module) or not isinstance(self.models, Sequence) or not self.models:
            raise TypeError("models must be a non-empty list of nn.Module, smallest first")
        fams = []
        for i, model in enumerate(self.models):
            if not isinstance(model, nn.Module):
                raise TypeError(f"models[{i}] is a {type(model).__name__}, not an nn.Module")
            try:
                fams.append(family_of(model))
            except TypeError as err:
                raise TypeError(f"models[{i}]: {err}") from None
        for i, fam in enumerate(fams):
            if fam.name != fams[0].name:
                raise TypeError(
                    f"mixed families: models[0] ({type(self.models[0]).__name__}) is {fams[0].name!r}, "
                    f"models[{i}] ({type(self.models[i]).__name__}) is {fam.name!r}"
                )
        return fams[0]

    def _per_link(self, value: Any, what: str) -> list[Any]:
        links = len(self.models) - 1
        if isinstance(value, (list, tuple)):
            if len(value) != links:
                raise ValueError(f"{what} has {len(value)} entries for {links} links between {links + 1} models")
            return list(value)
        return [value] * links

    def _growers(self, family: Family) -> list[Grower | None]:
        growers: list[Grower | None] = []
        for g in self._per_link(self.grower, "grower"):
            if g is None or isinstance(g, Grower):
                growers.append(g)
            elif g == "auto" or g in METHODS:
                growers.append(family.grower("exact" if g == "auto" else g, seed=self.seed))
            else:
                raise ValueError(f"grower must be 'auto', one of {METHODS}, a Grower or None, got {g!r}")
        return growers

    def _transferers(self, family: Family) -> list[Transferer | None]:
        out = []
        for t in self._per_link(self.transferer, "transferer"):
            if t == "auto":
                out.append(family.transferer())
            elif t is None or isinstance(t, Transferer):
                out.append(copy.deepcopy(t))
            else:
                raise ValueError(f"transferer must be 'auto', None or a Transferer, got {t!r}")
        return out

    def _steps(self, train_loader: Iterable[Any]) -> tuple[list[int], int]:
        n = len(self.models)
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {self.unit!r}")
        budgets = list(self.budgets) if self.budgets is not None else None
        if budgets is None:
            if self.unit != "epochs":
                raise ValueError("the default budgets are in epochs; pass budgets= with unit='steps'")
            budgets = [PAPER_BUDGETS[min(i, len(PAPER_BUDGETS) - 1)] for i in range(n)]
        if len(budgets) != n:
            raise ValueError(f"budgets has {len(budgets)} entries for {n} models")
        per_epoch = loader_length(train_loader)
        if per_epoch == 0:
            raise ValueError("the training loader is empty")
        if self.unit == "epochs" and per_epoch is None:
            raise ValueError("budgets in epochs need a loader with a length; use unit='steps'")

        def to_steps(budget: float, what: str) -> int:
            if budget < 0 or (budget == 0 and what != "budgets[0]"):
                raise ValueError(f"{what} must be positive, got {budget}")
            steps = budget if self.unit == "steps" else budget * per_epoch
            return max(int(round(steps)), 1 if budget else 0)

        steps = [to_steps(b, f"budgets[{i}]") for i, b in enumerate(budgets)]
        if steps[0] == 0 and not self.first_trained:
            raise ValueError("budgets[0] is 0 but first_trained is False: model 0 would stay untrained")
        if self.baseline_budget is None and budgets[0] == 0:
            raise ValueError("baseline_budget defaults to budgets[0], which is 0: set it when model 0 is pre-trained")
        baseline = budgets[0] if self.baseline_budget is None else self.baseline_budget
        return steps, to_steps(baseline, "baseline_budget")

    def _validate(
        self, train_loader: Iterable[Any]
    ) -> tuple[Family, list[Grower | None], list[Transferer | None], list[int], int]:
        family = self._family()
        for name in ("lr", "grown_lr_scale"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.inherited not in ("full", "lora"):
            raise ValueError(f"inherited must be 'full' or 'lora', got {self.inherited!r}")
        if self.lora_rank < 1:
            raise ValueError(f"lora_rank must be positive, got {self.lora_rank}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if not isinstance(self.compile, bool):
            raise TypeError(f"compile must be True or False, got {self.compile!r}")
        check_precision(self.precision, self.teacher_dtype, resolve_device(self.device))
        if self.precision == "fp16" and self.strategy == "fsdp":
            raise ValueError("precision='fp16' with strategy='fsdp' is not supported; use precision='bf16'")
        for name in ("warmup", "grown_warmup", "min_lr_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.names is not None and len(self.names) != len(self.models):
            raise ValueError(f"names has {len(self.names)} entries for {len(self.models)} models")
        if self.targets is not None:
            if len(self.targets) != len(self.models):
                raise ValueError(f"targets has {len(self.targets)} entries for {len(self.models)} models")
            if self.eval_every <= 0:
                raise ValueError("targets need eval_every > 0: a stage can only stop where it is evaluated")
        growers = self._growers(family)
        for i, grower in enumerate(growers, start=1):
            if grower is None:
                continue
            try:
                grower.validate(self.models[i - 1], self.models[i])
            except (GrowthError, TypeError) as err:
                raise type(err)(
                    f"models[{i}] ({type(self.models[i]).__name__}) cannot be grown from models[{i - 1}] "
                    f"with method={grower.method!r}: {err}"
                ) from None
        transferers = self._transferers(family)
        steps, baseline_steps = self._steps(train_loader)
        return family, growers, transferers, steps, baseline_steps

    def validate(self, train_loader: Iterable[Any]) -> None:
        """Raise the ValueError or TypeError ``fit`` would raise, without training anything."""
        self._validate(train_loader)

    def plan(self, train_loader: Iterable[Any]) -> dict[str, Any]:
        """Projected costs before any training: each model's measured FLOPs per sample, and the ratio.

        One forward and backward of each model on one batch are counted (on
        copies: the models are not touched); the teacher's forward is counted
        as its own forward.
        """
        family, _, _, steps, baseline_steps = self._validate(train_loader)
        batch = next(iter(train_loader))
        n = batch_size_of(batch)
        names = list(self.names) if self.names is not None else [f"{family.name}-{i}" for i in range(len(self.models))]
        stages, rows, previous = [], [], 0.0
        for i, template in enumerate(self.models):
            model = copy.deepcopy(template).train()
            with count_flops() as counter:
                family.forward(model, batch).loss.backward()
            with count_flops() as forward, torch.no_grad():
                family.forward(model, batch)
            samples = steps[i] * n if not (i == 0 and self.first_trained) else baseline_steps * n
            cost = StageCost(names[i], counter.get_total_flops() / n, previous, samples)
            previous = forward.get_total_flops() / n
            stages.append(cost)
            rows.append({**attrs.asdict(cost), "params": _num_params(model), "steps": steps[i], "total": cost.total})
        return {"models": rows, **Ledger(tuple(stages)).to_dict(baseline_steps * n)}

    # -- training ------------------------------------------------------------
    def fit(self, train_loader: Iterable[Any], val_loader: Iterable[Any] | None = None) -> Chain:
        """Train the chain; returns ``self`` with ``models_``, ``history_``, ``ledger_``, ``report_``.

        Under torchrun (or in an initialised process group) every rank calls
        ``fit`` and trains data-parallel; every rank ends with the same models.
        """
        self._validate(train_loader)  # the settings, before any process group is joined
        with session(self.device) as (world, device):
            self._fit(shard_loader(train_loader, world, self.seed, device.type == "cuda"), val_loader, world, device)
        return self

    def _fit(self, train_loader: Iterable[Any], val_loader: Iterable[Any] | None, world: World, device) -> None:
        family, growers, transferers, steps, baseline_steps = self._validate(train_loader)
        if self.targets is not None and val_loader is None:
            raise ValueError("targets are validation metrics: fit needs a val_loader")
        names = list(self.names) if self.names is not None else [f"{family.name}-{i}" for i in range(len(self.models))]
        run = Path(self.checkpoint_dir) if self.checkpoint_dir is not None else None
        if run is not None and world.main:
            run.mkdir(parents=True, exist_ok=True)
            if self.resume:  # what a killed run left half-written
                clean_temporaries(run)
                repair_jsonl(run / "metrics.jsonl")
        data = fingerprint(train_loader)
        torch.manual_seed(self.seed)
        if getattr(train_loader, "generator", None) is not None:  # same seed, same data order, every fit
            train_loader.generator.manual_seed(self.seed)
        stream = Stream(train_loader)

        self.models_: list[nn.Module] = []
        self.history_: list[dict[str, Any]] = []
        costs: list[StageCost] = []
        parent: str | None = None
        with _progress(self.progress and world.main) as bar:
            for i, template in enumerate(self.models):
                student = (copy.deepcopy(template) if self.copy else template).to(device)
                link = {"grower": repr(growers[i - 1]), "transfer": repr(transferers[i - 1])} if i else {}
                settings = {"name": names[i], "dims": dict(family.dims(student)), "steps": steps[i], "data": data}
                settings |= link | {k: repr(v) for k, v in self._stage_settings(i).items()}
                if world.distributed:  # another global batch and data order: another lineage
                    settings["world_size"] = world.size
                sig = signature(settings, parent)
                folder = run / names[i] if run is not None else None
                record = finished_stage(folder, sig) if self.resume and folder is not None else None
                if record is not None:  # finished in an earlier run: rebuild it, and continue from where it ended
                    # growth sets what weights do not hold (e.g. LayerNorm eps)
                    if i > 0 and growers[i - 1] is not None:
                        growers[i - 1].grow(self.models_[i - 1], student)
                    state = load_stage(folder, student, record)
                    stream.restore(state["stream"])
                    torch.set_rng_state(state["rng"])
                else:
                    ctx = _Context(family, device, stream, val_loader, bar, folder, sig, world)
                    record, student = self._run_stage(i, ctx, student, growers, transferers, steps[i], names[i])
                    record |= {"signature": sig, "parent": names[i - 1] if i else None, "settings": settings}
                    record["weights_sha256"] = weights_hash(student)
                    if folder is not None and world.main:
                        save_stage(folder, student, record, _stage_state(stream))
                costs.append(StageCost(**record["cost"]))
                self.models_.append(student.eval())
                self.history_.append(record)
                parent = sig
                if run is not None and world.main:
                    write_lineage(run, [_lineage(r) for r in self.history_])
        world.barrier()  # every file is written before any rank returns

        baseline_samples = baseline_steps * self.history_[0]["batch_size"]
        if self.first_trained:  # model 0 was trained elsewhere: count it at the baseline budget
            costs[0] = StageCost(costs[0].name, costs[0].student_flops, 0.0, baseline_samples)
        self.ledger_ = Ledger(tuple(costs))
        self.report_ = self._report(family, baseline_samples)

    def _stage_settings(self, i: int) -> dict[str, Any]:
        """The optimiser settings stage ``i`` trains with (part of its checkpoint signature)."""
        grown = i > 0
        return {
            "lr": self.lr * (self.grown_lr_scale if grown else 1.0),
            "warmup": self.grown_warmup if grown else self.warmup,
            "weight_decay": self.weight_decay,
            "betas": tuple(self.betas),
            "min_lr_ratio": self.min_lr_ratio,
            "grad_clip": self.grad_clip,
            "seed": self.seed,
            "trained": not (i == 0 and self.first_trained),
            "inherited": f"lora-{self.lora_rank}" if grown and self.inherited == "lora" else "full",
            "target": self.targets[i] if self.targets is not None else None,
        } | self._numerics()

    def _numerics(self) -> dict[str, Any]:
        """Precision settings that change the numbers trained (only when set: older lineages stay valid)."""
        numerics = {"precision": self.precision} if self.precision != "fp32" else {}
        return numerics | ({"teacher_dtype": self.teacher_dtype} if self.teacher_dtype is not None else {})

    def _run_stage(
        self,
        i: int,
        ctx: _Context,
        student: nn.Module,
        growers: list[Grower],
        transferers: list[Transferer | None],
        total: int,
        name: str,
    ) -> tuple[dict[str, Any], nn.Module]:
        """Grow model ``i`` from its predecessor (if any) and train it; returns its history record and the model."""
        family, device, world = ctx.family, ctx.device, ctx.world
        teacher, transfer, fmap = None, None, None
        if i > 0:
            teacher = freeze(self.models_[i - 1])
            if growers[i - 1] is not None:
                growers[i - 1].grow(teacher, student)
                fmap = growers[i - 1].feature_map(teacher, student)
            transfer = transferers[i - 1]
        settings = self._stage_settings(i)
        adapted = i > 0 and self.inherited == "lora" and growers[i - 1] is not None
        if adapted:
            masks = inherited_masks(growers[i - 1], teacher, copy.deepcopy(self.models[i]).to(device))
            attach_lora(student, masks, self.lora_rank)
        train = settings["trained"]
        record: dict[str, Any] = {"name": name, "params": _num_params(student), "steps": total, "val": []}
        partial = load_partial(ctx.folder, ctx.sig) if self.resume and ctx.folder is not None else None
        if ctx.folder is not None and world.main:
            trim_metrics(ctx.folder.parent, name, partial["progress"]["step"] if partial else -1)
        if i > 0 and partial is None:
            _evaluate(ctx, student, record, 0)

        first = to_device(next(ctx.stream), device)
        record["batch_size"] = batch_size_of(first) * world.size  # the global batch
        if transfer is not None:
            transfer.to(device)
            with torch.no_grad():
                transfer.setup(family.forward(student, first), family.forward(teacher, first), fmap)
            world.broadcast(transfer)  # one projector init on every rank
        amp = Precision(self.precision, self.teacher_dtype, device)
        teacher_run = amp.teacher(teacher) if teacher is not None else None
        trainee = Trainee(student, family.forward, world, device, self.strategy, self.compile)
        params = trainee.parameters()
        transfer_params = list(transfer.parameters()) if transfer is not None else []
        params += transfer_params
        opt = _optimizer(params, settings["lr"], self.weight_decay, self.betas)
        warmup = int(round(settings["warmup"] * total))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, warmup, self.min_lr_ratio))

        progress = {"step": 0, "loss": [], "transfer_loss": [], "samples": 0, "flops": [0.0, 0.0], "elapsed": 0.0}
        if partial is not None:  # continue a stage an earlier run left mid-way
            trainee.load_state_dict(partial["student"])
            if transfer is not None:
                transfer.load_state_dict(partial["transfer"])
            trainee.load_optimizer_state_dict(opt, partial["optimizer"])
            sched.load_state_dict(partial["scheduler"])
            amp.load_state_dict(partial.get("scaler", {}))
            ctx.stream.restore(partial["stream"])
            torch.set_rng_state(partial["rng"])
            progress = partial["progress"]
            record["val"] = partial["val"]

        student.train()
        task = ctx.bar.add_task(name, total=total if train else 1, loss=float("nan")) if ctx.bar else None
        losses = [torch.tensor(v) for v in progress["loss"]]
        transfer_losses = [torch.tensor(v) for v in progress["transfer_loss"]]
        start = time.perf_counter() - progress["elapsed"]
        target, reached = settings["target"], False
        done = progress["step"]
        for step in range(progress["step"], total if train else 1):
            batch = first if step == 0 else to_device(next(ctx.stream), device)
            n = batch_size_of(batch)
            counting = step == 0
            t_out = None
            if teacher_run is not None:
                with count_flops() if counting else nullcontext() as counter, torch.inference_mode():
                    with amp.teacher_autocast():
                        t_out = family.forward(teacher_run, batch)
                t_out = usable(t_out)
                if counting:
                    progress["flops"][1] = counter.get_total_flops() / n
            with count_flops() if counting else nullcontext() as counter:
                with amp.autocast():
                    out = trainee(batch, eager=counting)
                    loss = out.loss
                    if transfer is not None:
                        extra = transfer(out, t_out, step, total)
                        transfer_losses.append(extra.detach())
                        loss = loss + extra
                amp.backward(loss)
            if counting:
                progress["flops"][0] = counter.get_total_flops() / n
            if not train:  # a pre-trained first model: one measured step, no update
                opt.zero_grad(set_to_none=True)
                break
            world.average_gradients(transfer_params)  # the student's are averaged by DDP/FSDP
            amp.unscale(opt)
            if self.grad_clip:
                trainee.clip_grad_norm_(params, self.grad_clip)
            amp.step(opt)
            opt.zero_grad(set_to_none=True)
            sched.step()
            losses.append(loss.detach())
            progress["samples"] += n * world.size
            done = step + 1
            if done % 10 == 0 or done == total:
                value = world.mean(losses[-1]).item()
                if task is not None:
                    ctx.bar.update(task, completed=done, loss=value)
                if ctx.folder is not None and world.main:
                    _log(ctx.folder.parent, {"model": name, "step": done, "loss": value, "lr": sched.get_last_lr()[0]})
            if self.eval_every and done % self.eval_every == 0 and done < total:
                paused = time.perf_counter()
                with trainee.gathered() as model:
                    _evaluate(ctx, model, record, done)
                student.train()
                start += time.perf_counter() - paused
                reached = target is not None and _reaches(ctx.family, record["val"][-1], target)
                if reached:  # budget search: this stage has done what it was for
                    if task is not None:
                        ctx.bar.update(task, completed=total, loss=losses[-1].item())
                    break
            if ctx.folder is not None and self.checkpoint_every and done % self.checkpoint_every == 0 and done < total:
                progress |= {"step": done, "elapsed": time.perf_counter() - start}
                progress["loss"] = world.mean(torch.stack(losses)).tolist()
                progress["transfer_loss"] = world.mean(torch.stack(transfer_losses)).tolist() if transfer_losses else []
                state = {
                    "signature": ctx.sig,
                    "student": trainee.state_dict(),
                    "transfer": transfer.state_dict() if transfer is not None else {},
                    "optimizer": trainee.optimizer_state_dict(opt),
                    "scheduler": sched.state_dict(),
                    "val": record["val"],
                    "progress": progress,
                    **({"scaler": amp.state_dict()} if amp.scaler is not None else {}),
                    **_stage_state(ctx.stream),
                }
                if world.main:
                    save_partial(ctx.folder, state)
        elapsed = time.perf_counter() - start
        student = trainee.unwrap()
        if adapted:
            merge_lora(student)
        if task is not None and not train:
            ctx.bar.update(task, completed=1)
        if teacher is not None:
            _unfreeze(teacher.to(device))
        if not reached:
            _evaluate(ctx, student, record, done if train else 0)
            reached = target is not None and _reaches(ctx.family, record["val"][-1], target)
        cost = StageCost(name, progress["flops"][0], progress["flops"][1], progress["samples"])
        record["loss"] = world.mean(torch.stack(losses)).tolist() if losses else []
        record["transfer_loss"] = world.mean(torch.stack(transfer_losses)).tolist() if transfer_losses and train else []
        record["wall_time"] = elapsed if train else 0.0
        record["trained"] = train
        record |= {"steps": done if train else total, "budget": total, "target": target, "reached": reached}
        record["cost"] = attrs.asdict(cost)
        record["flops"] = cost.total
        return record, student

    def _report(self, family: Family, baseline_samples: int) -> dict[str, Any]:
        """A JSON-ready summary: per model metric, FLOPs and time; family totals and the ratio."""
        rows = []
        for record, cost in zip(self.history_, self.ledger_.stages):
            final = record["val"][-1] if record["val"] else {}
            rows.append(
                {
                    "name": record["name"],
                    "params": record["params"],
                    "steps": record["steps"],
                    family.metric: final.get(family.metric),
                    "flops": cost.total,
                    "wall_time": record["wall_time"],
                }
            )
        return {
            "family": family.name,
            "metric": family.metric,
            "models": rows,
            "wall_time": sum(r["wall_time"] for r in self.history_),
            **self.ledger_.to_dict(baseline_samples),
        }


@attrs.frozen
class _Context:
    """What every stage of one ``fit`` shares."""

    family: Family
    device: torch.device
    stream: Stream
    val_loader: Iterable[Any] | None
    bar: Any
    folder: Path | None
    sig: str
    world: World = World()


def _stage_state(stream: Stream) -> dict[str, Any]:
    """Where the data stream and the global RNG stand: what a resumed run restores."""
    return {"stream": stream.state(), "rng": torch.get_rng_state()}


def _lineage(record: dict[str, Any]) -> dict[str, Any]:
    """One model's entry in ``lineage.json``."""
    settings = record["settings"]
    lineage = {k: record[k] for k in ("name", "parent", "signature", "steps", "weights_sha256")}
    return lineage | {k: settings.get(k) for k in ("grower", "transfer", "data", "lr")}


def _evaluate(ctx: _Context, model: nn.Module, record: dict[str, Any], step: int) -> None:
    """Evaluate on the validation loader (if any): into the record and ``metrics.jsonl``."""
    if ctx.val_loader is None:
        return
    metrics = ctx.world.mean_metrics(ctx.family.evaluate(model, ctx.val_loader, ctx.device))
    record["val"].append({"step": step, **metrics})
    if ctx.folder is not None and ctx.world.main:
        _log(ctx.folder.parent, {"model": record["name"], "step": step, "val": metrics})


def _reaches(family: Family, metrics: dict[str, float], target: float) -> bool:
    """Whether ``metrics`` meets ``target`` in the family's metric and direction."""
    value = metrics[family.metric]
    return value >= target if family.higher_is_better else value <= target


def _log(run: Path, entry: dict[str, Any]) -> None:
    """Append one line to ``metrics.jsonl``."""
    append_jsonl(run / "metrics.jsonl", entry)


def _unfreeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()


def _progress(enabled: bool):
    """Rich progress bars with per-stage ETA, or nothing."""
    if not enabled:
        return nullcontext(None)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
