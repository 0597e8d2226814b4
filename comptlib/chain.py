"""`Chain`: train a model family in ascending size, growing and distilling each link.

``fit`` reads top to bottom: validate everything, then for each model reuse
the finished stage a resumed run already holds, or run its :class:`Stage`
(grow from the trained predecessor, train objective + transfer for its
budget), with the hooks of :mod:`comptlib.callbacks` watching.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from sklearn.base import BaseEstimator
from torch import nn

from comptlib.callbacks import (
    Callback,
    Checkpointer,
    Evaluation,
    FlopCounter,
    MetricsLog,
    PreDecaySnapshot,
    ProgressBar,
    ShrinkPerturb,
)
from comptlib.checkpoint import (
    DataStream,
    describe,
    fingerprint,
    finished_stage,
    load_snapshot,
    load_stage,
    signature,
    weights_hash,
    write_lineage,
)
from comptlib.data import batch_size_of, loader_length
from comptlib.distributed import World, resolve_device, session, shard_loader
from comptlib.family import Family, family_of
from comptlib.grower import METHODS, Grower, GrowthError
from comptlib.io import clean_temporaries, repair_jsonl
from comptlib.ledger import Ledger, StageCost, count_flops
from comptlib.loggers import build_loggers
from comptlib.precision import check_precision
from comptlib.settings import ChainSettings, Optim, Runtime
from comptlib.stage import Stage, num_params
from comptlib.transferer import Transferer

PAPER_BUDGETS = (8.0, 1.5, 1.0)
"""CoM-PT's CC3M budgets 128 -> 24 -> 16 -> 16 epochs, divided by 16; later models repeat the last."""
_DEFAULT = ChainSettings()
_DEFAULT_OPTIM = Optim()
_GROWTH = ("grow_from", "shrink", "perturb", "growth_snr_db")
"""Settings of how a grown model starts: part of its signature when not at their defaults."""
_SHORTHAND = {f.name: group for group, cls in (("optim", Optim), ("runtime", Runtime)) for f in attrs.fields(cls)}
"""``Chain(lr=...)`` is ``Chain(optim=Optim(lr=...))``; likewise for every Optim and Runtime field."""


class Chain(BaseEstimator):
    """A family of models trained as a chain in ascending size (CoM-PT).

    Model 0 is trained with the plain objective for ``budgets[0]`` (or taken as
    already trained with ``first_trained=True``). Every later model is grown
    from its trained predecessor by ``grower`` and trained for its budget with
    the objective plus ``transferer``'s distillation loss from the frozen
    predecessor, with a fresh AdamW, a short warm-up and a cosine schedule.

    ``get_params(deep=True)`` lists the nested settings (``optim__lr``,
    ``runtime__precision``, ``transferer__weight``) and ``set_params`` takes them.

    Parameters
    ----------
    models : freshly built models, smallest first, all of one registered family.
    grower : ``"auto"`` (the family's exact grower), a method name (``"exact"``,
        ``"compt"``), a :class:`Grower`, ``None`` (no growth: the model keeps
        its own init and is only distilled, the ablation baseline), or one of
        those per link.
    transferer : ``"auto"`` (the family's default), ``None`` (no distillation),
        a :class:`Transferer` (a fresh copy for each link), or one per link.
    budgets : one per model, in ``unit``; default: the paper's 128:24:16 epoch
        proportions divided by 16 (8, 1.5, 1, 1, ... epochs).
    baseline_budget : the budget each model would get if trained alone, for the
        acceleration ratio; default ``budgets[0]``.
    optim : the optimiser and schedule, a :class:`~comptlib.settings.Optim`
        (``lr``, ``weight_decay``, ``betas``, ``warmup``, ``min_lr_ratio``,
        ``grad_clip``, and ``grown_lr_scale``, ``grown_warmup`` for grown models).
    runtime : where the steps run, a :class:`~comptlib.settings.Runtime`
        (``device``, ``precision``, ``teacher_dtype``, ``compile``, ``strategy``).
    eval_every : evaluate on the validation loader every N steps too (0: only
        right after growth and at the end of each stage).
    targets : budget search: one validation metric per model (or ``None``);
        a stage stops at the first evaluation (every ``eval_every`` steps)
        that reaches its target, and its budget is then only a cap. The
        ledger counts the steps actually trained.
    seed : seeds the global RNG and the training loader's generator, so the
        same settings give the same models and data order.
    names, progress, copy : model names in reports and checkpoints (plain file
        names: each is a folder of ``checkpoint_dir``); rich progress bars;
        train copies of ``models`` (True) or the models given.
    inherited, lora_rank : ``"full"`` trains a grown model's inherited weights
        like its new ones; ``"lora"`` moves the inherited entries of its
        ``nn.Linear`` weights only through a rank-``lora_rank`` update (merged
        back after the stage) and trains the new entries fully.
    checkpoint_dir, checkpoint_every, resume : with a directory, each finished
        stage is saved there (plus ``metrics.jsonl`` and ``lineage.json``), and
        mid-stage state every ``checkpoint_every`` steps; ``resume=True`` reuses
        finished stages whose lineage is unchanged and continues a stage left
        mid-way, to the bit on CPU.
    on_nonfinite, max_skips : a non-finite loss or gradient norm stops the stage
        with a :class:`~comptlib.errors.DivergenceError` naming the model and the
        step (``"stop"``), or skips that update up to ``max_skips`` times per
        stage (``"skip"``). Nothing non-finite is saved or logged.
    grow_from : ``"final"`` grows each model from its predecessor's final
        weights; ``"pre_decay"`` (with ``Optim(schedule="wsd")``) from its
        weights where its LR decay began, while the decay runs on to give the
        final model, which stays the distillation teacher (the better model;
        a teacher from before the decay would only be a noisier one).
    shrink, perturb : shrink-and-perturb right after growth (Ash & Adams
        2020): a grown model's matrices become ``shrink * W + perturb * N(0, 1)``
        (:class:`~comptlib.callbacks.ShrinkPerturb`); 1 and 0 leave them as grown.
    growth_snr_db : Gaussian noise on the entries exact growth leaves free, at
        this signal-to-noise ratio in dB (HyperCloning uses about 10); for a
        grower given by name (``"auto"``, ``"exact"``...).
    loggers : experiment trackers (:mod:`comptlib.loggers`): ``"tensorboard"``,
        ``"wandb"`` (offline), ``"mlflow"`` (local file store), each writing in
        ``checkpoint_dir``, or logger objects with their own ``run_dir``.
    callbacks : :class:`~comptlib.callbacks.Callback` objects called after the
        built-in ones at each point of ``fit`` (see :mod:`comptlib.callbacks`).
    **shorthand : any :class:`Optim` or :class:`Runtime` field by itself:
        ``Chain(lr=3e-3)`` is ``Chain(optim=Optim(lr=3e-3))``.

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
    >>> chain.set_params(optim__lr=3e-3).get_params()["optim__lr"]
    0.003
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        *,
        grower: str | Grower | None | Sequence[str | Grower | None] = "auto",
        transferer: str | Transferer | None | Sequence[Transferer | None] = "auto",
        budgets: Sequence[float] | None = _DEFAULT.budgets,
        unit: str = _DEFAULT.unit,
        baseline_budget: float | None = _DEFAULT.baseline_budget,
        first_trained: bool = _DEFAULT.first_trained,
        optim: Optim = Optim(),
        runtime: Runtime = Runtime(),
        eval_every: int = _DEFAULT.eval_every,
        targets: Sequence[float | None] | None = _DEFAULT.targets,
        seed: int = _DEFAULT.seed,
        names: Sequence[str] | None = _DEFAULT.names,
        progress: bool = _DEFAULT.progress,
        copy: bool = _DEFAULT.copy,
        checkpoint_dir: str | None = _DEFAULT.checkpoint_dir,
        checkpoint_every: int = _DEFAULT.checkpoint_every,
        resume: bool = _DEFAULT.resume,
        inherited: str = _DEFAULT.inherited,
        lora_rank: int = _DEFAULT.lora_rank,
        on_nonfinite: str = _DEFAULT.on_nonfinite,
        max_skips: int = _DEFAULT.max_skips,
        grow_from: str = _DEFAULT.grow_from,
        shrink: float = _DEFAULT.shrink,
        perturb: float = _DEFAULT.perturb,
        growth_snr_db: float | None = _DEFAULT.growth_snr_db,
        loggers: Sequence[str | Callback] | None = _DEFAULT.loggers,
        callbacks: Sequence[Callback] = (),
        **shorthand: Any,
    ) -> None:
        self.models = models
        self.grower = grower
        self.transferer = transferer
        self.budgets = budgets
        self.unit = unit
        self.baseline_budget = baseline_budget
        self.first_trained = first_trained
        self.optim = optim
        self.runtime = runtime
        self.eval_every = eval_every
        self.targets = targets
        self.seed = seed
        self.names = names
        self.progress = progress
        self.copy = copy
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.resume = resume
        self.inherited = inherited
        self.lora_rank = lora_rank
        self.on_nonfinite = on_nonfinite
        self.max_skips = max_skips
        self.grow_from = grow_from
        self.shrink = shrink
        self.perturb = perturb
        self.growth_snr_db = growth_snr_db
        self.loggers = loggers
        self.callbacks = callbacks
        if shorthand:
            self.set_params(**shorthand)

    def set_params(self, **params: Any) -> Chain:
        """scikit-learn's ``set_params``; nested ``optim__lr`` keys (or the shorthand ``lr``) evolve the frozen group."""
        groups: dict[str, dict[str, Any]] = {}
        plain = {}
        for key, value in params.items():
            head, _, field = key.partition("__")
            if key in _SHORTHAND:
                head, field = _SHORTHAND[key], key
            if field and attrs.has(type(getattr(self, head, None))):
                groups.setdefault(head, {})[field] = value
            else:
                plain[key] = value
        super().set_params(**plain)
        for head, fields in groups.items():
            setattr(self, head, attrs.evolve(getattr(self, head), **fields))
        return self

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
                noise = {} if self.growth_snr_db is None else {"noise": 10 ** (-self.growth_snr_db / 20)}
                growers.append(family.grower("exact" if g == "auto" else g, seed=self.seed, **noise))
            else:
                raise ValueError(f"grower must be 'auto', one of {METHODS}, a Grower or None, got {g!r}")
        return growers

    def _transferers(self, family: Family) -> list[Transferer | None]:
        out = []
        for t in self._per_link(self.transferer, "transferer"):
            if t == "auto":
                out.append(family.transferer())
            elif t is None:
                out.append(None)
            elif isinstance(t, Transferer):
                out.append(t.fresh())  # its settings, not a state an earlier fit left in it
            else:
                raise ValueError(f"transferer must be 'auto', None or a Transferer, got {t!r}")
        return out

    def _steps(self, train_loader: Iterable[Any]) -> tuple[list[int], int]:
        n = len(self.models)
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

        def to_steps(budget: float) -> int:
            steps = budget if self.unit == "steps" else budget * per_epoch
            return max(int(round(steps)), 1 if budget else 0)

        steps = [to_steps(b) for b in budgets]
        if steps[0] == 0 and not self.first_trained:
            raise ValueError("budgets[0] is 0 but first_trained is False: model 0 would stay untrained")
        if self.baseline_budget is None and budgets[0] == 0:
            raise ValueError("baseline_budget defaults to budgets[0], which is 0: set it when model 0 is pre-trained")
        baseline = budgets[0] if self.baseline_budget is None else self.baseline_budget
        if baseline <= 0:
            raise ValueError(f"baseline_budget must be positive, got {baseline}")
        return steps, to_steps(baseline)

    def _settings(self) -> ChainSettings:
        """The settings, checked by their declarations (type, finite, range), naming the field."""
        for name, cls in (("optim", Optim), ("runtime", Runtime)):
            if not isinstance(getattr(self, name), cls):
                raise TypeError(f"{name} must be a comptlib.settings.{cls.__name__}, got {getattr(self, name)!r}")
        if isinstance(self.callbacks, Callback) or not all(isinstance(c, Callback) for c in self.callbacks):
            raise TypeError(f"callbacks must be a list of comptlib.callbacks.Callback, got {self.callbacks!r}")
        return ChainSettings(**{f.name: getattr(self, f.name) for f in attrs.fields(ChainSettings)})

    def _validate(
        self, train_loader: Iterable[Any]
    ) -> tuple[Family, list[Grower | None], list[Transferer | None], list[int], int]:
        family = self._family()
        self._settings()
        build_loggers(self.loggers, self.checkpoint_dir)  # a missing tracker library: refused before training
        check_precision(self.runtime.precision, self.runtime.teacher_dtype, resolve_device(self.runtime.device))
        if self.runtime.precision == "fp16" and self.runtime.strategy == "fsdp":
            raise ValueError("precision='fp16' with strategy='fsdp' is not supported; use precision='bf16'")
        if self.names is not None and len(self.names) != len(self.models):
            raise ValueError(f"names has {len(self.names)} entries for {len(self.models)} models")
        if self.targets is not None:
            if len(self.targets) != len(self.models):
                raise ValueError(f"targets has {len(self.targets)} entries for {len(self.models)} models")
            if self.eval_every <= 0:
                raise ValueError("targets need eval_every > 0: a stage can only stop where it is evaluated")
        if self.grow_from == "pre_decay" and self.optim.schedule != "wsd":
            raise ValueError("grow_from='pre_decay' needs a decay to grow before: set Optim(schedule='wsd')")
        if self.grow_from == "pre_decay" and self.inherited == "lora":
            raise ValueError("grow_from='pre_decay' grows from a snapshot, which inherited='lora' does not support")
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

    def _names(self, family: Family) -> list[str]:
        return list(self.names) if self.names is not None else [f"{family.name}-{i}" for i in range(len(self.models))]

    def plan(self, train_loader: Iterable[Any]) -> dict[str, Any]:
        """Projected costs before any training: each model's measured FLOPs per sample, and the ratio.

        One forward and backward of each model on one batch are counted (on
        copies: the models are not touched); the teacher's forward is counted
        as its own forward where the link distils (a link without a transferer
        runs none).
        """
        family, _, transferers, steps, baseline_steps = self._validate(train_loader)
        batch = next(iter(train_loader))
        n = batch_size_of(batch)
        names = self._names(family)
        stages, rows, previous = [], [], 0.0
        for i, template in enumerate(self.models):
            model = copy.deepcopy(template).train()
            with count_flops() as counter:
                family.forward(model, batch).loss.backward()
            with count_flops() as forward, torch.no_grad():
                family.forward(model, batch)
            samples = steps[i] * n if not (i == 0 and self.first_trained) else baseline_steps * n
            teacher = previous if i > 0 and transferers[i - 1] is not None else 0.0
            cost = StageCost(names[i], counter.get_total_flops() / n, teacher, samples)
            previous = forward.get_total_flops() / n
            stages.append(cost)
            rows.append({**attrs.asdict(cost), "params": num_params(model), "steps": steps[i], "total": cost.total})
        return {"models": rows, **Ledger(tuple(stages)).to_dict(baseline_steps * n)}

    # -- training ------------------------------------------------------------
    def fit(self, train_loader: Iterable[Any], val_loader: Iterable[Any] | None = None) -> Chain:
        """Train the chain; returns ``self`` with ``models_``, ``history_``, ``ledger_``, ``report_``.

        Under torchrun (or in an initialised process group) every rank calls
        ``fit`` and trains data-parallel; every rank ends with the same models.
        """
        self._validate(train_loader)  # the settings, before any process group is joined
        with session(self.runtime.device) as (world, device):
            self._fit(shard_loader(train_loader, world, self.seed, device.type == "cuda"), val_loader, world, device)
        return self

    def _hooks(self, run: Path | None, world: World) -> list[Callback]:
        """The built-in hooks, in the order they are called, then the user's."""
        hooks: list[Callback] = [FlopCounter(), Evaluation(self.eval_every)]
        if run is not None:
            hooks.append(Checkpointer(self.checkpoint_every, self.resume, world.main))
            if world.main:
                hooks.append(MetricsLog(run))
        if (self.shrink, self.perturb) != (_DEFAULT.shrink, _DEFAULT.perturb):
            hooks.append(ShrinkPerturb(self.shrink, self.perturb, self.seed))  # after Checkpointer: resume is known
        if self.grow_from == "pre_decay":
            hooks.append(PreDecaySnapshot())
        if self.progress and world.main:
            hooks.append(ProgressBar())
        if world.main:
            hooks += build_loggers(self.loggers, self.checkpoint_dir)
        return hooks + list(self.callbacks)

    def _fit(self, train_loader: Iterable[Any], val_loader: Iterable[Any] | None, world: World, device) -> None:
        family, growers, transferers, steps, baseline_steps = self._validate(train_loader)
        if self.targets is not None and val_loader is None:
            raise ValueError("targets are validation metrics: fit needs a val_loader")
        names = self._names(family)
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
        stream = DataStream(train_loader)
        hooks = self._hooks(run, world)

        self.models_: list[nn.Module] = []
        self.history_: list[dict[str, Any]] = []
        costs: list[StageCost] = []
        source: nn.Module | None | str = None  # what the next model grows from (None: the last one's final weights)
        parent: str | None = None
        for hook in hooks:
            hook.on_fit_start(self)
        try:
            for i, template in enumerate(self.models):
                student = copy.deepcopy(template) if self.copy else template
                # one built on the meta device gets storage and its family's init (the grower's, when it grows)
                (growers[i - 1] if i and growers[i - 1] is not None else family.grower("exact")).materialize(student)
                student = student.to(device)
                link = {"grower": describe(growers[i - 1]), "transfer": describe(transferers[i - 1])} if i else {}
                settings = {"name": names[i], "dims": dict(family.dims(student)), "steps": steps[i], "data": data}
                settings |= link | self._stage_settings(i)
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
                    source = load_snapshot(folder, student, sig) if self.grow_from == "pre_decay" else None
                else:
                    grown = i > 0
                    if source == "lost":
                        raise ValueError(
                            f"{names[i - 1]} comes from a checkpoint past the start of its LR decay, so the snapshot "
                            f"grow_from='pre_decay' grows {names[i]} from is not there: rerun {names[i - 1]} "
                            "(or the chain) without resume"
                        )
                    lora = grown and self.inherited == "lora" and growers[i - 1] is not None
                    stage = Stage(
                        i,
                        names[i],
                        family,
                        student,
                        steps[i],
                        not (i == 0 and self.first_trained),
                        stream,
                        val_loader,
                        device,
                        world,
                        self.optim,
                        self.runtime,
                        hooks,
                        teacher=self.models_[i - 1] if grown else None,
                        source=source,
                        grower=growers[i - 1] if grown else None,
                        transfer=transferers[i - 1] if grown else None,
                        lora_rank=self.lora_rank if lora else None,
                        target=self.targets[i] if self.targets is not None else None,
                        folder=folder,
                        signature=sig,
                        on_nonfinite=self.on_nonfinite,
                        max_skips=self.max_skips,
                    )
                    student = stage.run()
                    source = stage.snapshot
                    record = stage.record
                    record |= {"signature": sig, "parent": names[i - 1] if i else None, "settings": settings}
                    record["weights_sha256"] = weights_hash(student)
                    for hook in hooks:
                        hook.on_stage_end(stage)
                if self.grow_from == "pre_decay" and source is None:
                    source = self._unless_decayed(record, steps[i])
                costs.append(StageCost(**record["cost"]))
                self.models_.append(student.eval())
                self.history_.append(record)
                parent = sig
                if run is not None and world.main:
                    write_lineage(run, [_lineage(r) for r in self.history_])
            baseline_samples = baseline_steps * self.history_[0]["batch_size"]
            if self.first_trained:  # model 0 was trained elsewhere: count it at the baseline budget
                costs[0] = StageCost(costs[0].name, costs[0].student_flops, 0.0, baseline_samples)
            self.ledger_ = Ledger(tuple(costs))
            self.report_ = self._report(family, baseline_samples)  # before on_fit_end: loggers log the ratio
        finally:
            for hook in hooks:
                hook.on_fit_end(self)
        world.barrier()  # every file is written before any rank returns

    def _unless_decayed(self, record: dict[str, Any], total: int) -> str | None:
        """Without a snapshot, the final weights are the pre-decay ones if the stage stopped before its decay
        (the budget search, a pre-trained first model); a stage resumed past it has lost its snapshot."""
        trained = record["trained"] and record["steps"] > self.optim.decay_start(total)
        return "lost" if trained else None

    def _stage_settings(self, i: int) -> dict[str, Any]:
        """What stage ``i`` trains with, as plain data (part of its checkpoint signature).

        Settings at their defaults are left out where they were added later, so older lineages stay valid.
        """
        grown = i > 0
        lr, warmup = self.optim.peak(grown)
        later = ("schedule", "decay") if self.optim.schedule == _DEFAULT_OPTIM.schedule else ()
        optim = {k: v for k, v in attrs.asdict(self.optim).items() if not k.startswith("grown_") and k not in later}
        growth = {k: getattr(self, k) for k in _GROWTH if grown and getattr(self, k) != getattr(_DEFAULT, k)}
        return (
            optim
            | {
                "lr": lr,
                "warmup": warmup,
                "seed": self.seed,
                "trained": not (i == 0 and self.first_trained),
                "inherited": f"lora-{self.lora_rank}" if grown and self.inherited == "lora" else "full",
                "target": self.targets[i] if self.targets is not None else None,
            }
            | growth
            | self._numerics()
        )

    def _numerics(self) -> dict[str, Any]:
        """Precision settings that change the numbers trained (only when set: older lineages stay valid)."""
        rt = self.runtime
        numerics = {"precision": rt.precision} if rt.precision != "fp32" else {}
        return numerics | ({"teacher_dtype": rt.teacher_dtype} if rt.teacher_dtype is not None else {})

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


def _lineage(record: dict[str, Any]) -> dict[str, Any]:
    """One model's entry in ``lineage.json``."""
    settings = record["settings"]
    lineage = {k: record[k] for k in ("name", "parent", "signature", "steps", "weights_sha256")}
    return lineage | {k: settings.get(k) for k in ("grower", "transfer", "data", "lr")}
