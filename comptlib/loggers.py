"""Experiment trackers as hooks: a chain's curves in TensorBoard, W&B or MLflow, offline, beside ``metrics.jsonl``.

Each logger is a :class:`~comptlib.callbacks.Callback` that writes through the
tracker's own library into the run directory (``Chain(checkpoint_dir=...)`` or
the ``run_dir`` it is given): TensorBoard's ``SummaryWriter`` in
``tensorboard/``, W&B in offline mode in ``wandb/`` (``wandb sync`` uploads it
later), MLflow's client on a local file store in ``mlruns/``. What each logs:

* every ``LOG_EVERY`` steps: ``loss``, ``transfer_loss`` (grown models with a
  transfer), ``lr``, ``flops`` (training FLOPs of the chain so far) and
  ``stage`` (the model's index);
* at each evaluation: ``val/<metric>`` and ``flops``;
* at the end: ``acceleration_ratio`` and ``chain_flops``.

The step is the chain's global step: earlier stages' steps plus this stage's,
so one chain reads as one curve.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from comptlib.callbacks import Callback
from comptlib.errors import ComptError

if TYPE_CHECKING:
    from comptlib.chain import Chain
    from comptlib.stage import Stage


class TrackerError(ComptError, ValueError):
    """A logger that cannot run: its library is not installed, or it has no directory to write to."""


class Logger(Callback):
    """The chain's scalars at its global step; a tracker implements :meth:`open`, :meth:`write` and :meth:`close`."""

    name = ""
    package = ""  # the module that must import: its pip extra is comptlib[name]

    def __init__(self, run_dir: str | Path | None = None) -> None:
        self.run_dir = None if run_dir is None else Path(run_dir)

    def check(self, checkpoint_dir: str | None) -> None:
        """Refuse, before training starts, a logger whose library is missing or that has nowhere to write."""
        if importlib.util.find_spec(self.package) is None:
            raise TrackerError(
                f"loggers: {self.name} needs the {self.package} package: pip install comptlib[{self.name}]"
            )
        if self.run_dir is None and checkpoint_dir is None:
            raise TrackerError(f"loggers: {self.name} writes into the run directory; give checkpoint_dir (or --out)")

    def open(self, run_dir: Path, chain: Chain) -> None: ...
    def write(self, scalars: dict[str, float], step: int) -> None: ...
    def close(self) -> None: ...

    def on_fit_start(self, chain: Chain) -> None:
        self.chain, self.offset, self.flops_before = chain, 0, 0.0
        self.open(self.run_dir or Path(chain.checkpoint_dir), chain)

    def on_stage_start(self, stage: Stage) -> None:
        """Earlier stages (resumed ones too) set where this one's curve starts."""
        self.offset = sum(r["steps"] for r in self.chain.history_)
        self.flops_before = sum(r["flops"] for r in self.chain.history_)

    def _flops(self, stage: Stage) -> float:
        return self.flops_before + sum(stage.flops) * stage.samples

    def on_log(self, stage: Stage, entry: dict[str, float]) -> None:
        scalars = {**entry, "flops": self._flops(stage), "stage": stage.index}
        if stage.transfer_losses:
            scalars["transfer_loss"] = float(stage.transfer_losses[-1])
        self.write(scalars, self.offset + stage.step)

    def on_evaluate(self, stage: Stage, metrics: dict[str, float]) -> None:
        scalars = {f"val/{k}": v for k, v in metrics.items()} | {"flops": self._flops(stage)}
        self.write(scalars, self.offset + stage.step)

    def on_fit_end(self, chain: Chain) -> None:
        """The acceleration ratio of a chain that finished (fit computes its report first)."""
        if len(chain.history_) == len(chain.models):
            report = chain.report_
            steps = sum(r["steps"] for r in chain.history_)
            self.write({k: report[k] for k in ("acceleration_ratio", "chain_flops")}, steps)
        self.close()


class TensorBoardLogger(Logger):
    """TensorBoard event files in ``<run>/tensorboard`` (``tensorboard --logdir <run>/tensorboard``)."""

    name, package = "tensorboard", "tensorboard"

    def open(self, run_dir: Path, chain: Chain) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def write(self, scalars: dict[str, float], step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbLogger(Logger):
    """An offline W&B run in ``<run>/wandb`` (``wandb sync <run>/wandb/offline-run-*`` uploads it)."""

    name, package = "wandb", "wandb"

    def __init__(self, run_dir: str | Path | None = None, project: str = "comptlib") -> None:
        super().__init__(run_dir)
        self.project = project

    def open(self, run_dir: Path, chain: Chain) -> None:
        import wandb

        (run_dir / "wandb").mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True)
        self.run = wandb.init(
            project=self.project, name=run_dir.name, dir=str(run_dir), mode="offline", settings=settings
        )

    def write(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowLogger(Logger):
    """An MLflow run on a local file store, ``<run>/mlruns`` (``mlflow ui --backend-store-uri file:<run>/mlruns``)."""

    name, package = "mlflow", "mlflow"

    def __init__(self, run_dir: str | Path | None = None, experiment: str = "comptlib") -> None:
        super().__init__(run_dir)
        self.experiment = experiment

    def open(self, run_dir: Path, chain: Chain) -> None:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for this opt-in to a file store
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
        found = self.client.get_experiment_by_name(self.experiment)
        experiment = found.experiment_id if found else self.client.create_experiment(self.experiment)
        self.run_id = self.client.create_run(experiment, run_name=run_dir.name).info.run_id

    def write(self, scalars: dict[str, float], step: int) -> None:
        for key, value in scalars.items():
            self.client.log_metric(self.run_id, key, float(value), step=step)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


LOGGERS: dict[str, type[Logger]] = {c.name: c for c in (TensorBoardLogger, WandbLogger, MlflowLogger)}


def build_loggers(loggers: Any, checkpoint_dir: str | None) -> list[Callback]:
    """``Chain(loggers=...)``: names become loggers in the run directory; each one is checked before training."""
    built = [LOGGERS[entry]() if isinstance(entry, str) else entry for entry in loggers or ()]
    for logger in built:
        if isinstance(logger, Logger):
            logger.check(checkpoint_dir)
    return built
