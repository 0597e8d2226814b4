"""Experiment trackers: each logger runs offline, and what it wrote is read back with the tracker's own tools."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from comptlib import Chain, FeatureMSE
from comptlib.cli import app
from comptlib.data import digits_loaders
from comptlib.families.vit import build_vit

BUDGETS = (12, 4)
INSTALLED = [name for name in ("tensorboard", "wandb", "mlflow") if importlib.util.find_spec(name) is not None]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Chain]:
    """A two-model chain logged to every installed tracker."""
    if not INSTALLED:
        pytest.skip("no tracker installed (pip install comptlib[tensorboard,wandb,mlflow])")
    out = tmp_path_factory.mktemp("tracked") / "run"
    train, val = digits_loaders(32, seed=0)
    models = [build_vit(16, 1, image_size=8, patch_size=2), build_vit(32, 1, image_size=8, patch_size=2)]
    settings = {"progress": False, "checkpoint_dir": str(out), "transferer": FeatureMSE()}  # a transfer loss to log
    chain = Chain(models, budgets=list(BUDGETS), unit="steps", **settings)
    chain.set_params(loggers=INSTALLED)
    return out, chain.fit(train, val)


def _check_curve(steps_by_key: dict[str, dict[int, float]], chain: Chain) -> None:
    """One curve across the chain: stage 1's steps follow stage 0's; the ratio at the end."""
    loss = steps_by_key["loss"]
    assert sorted(loss) == [10, 12, 16]  # LOG_EVERY and each stage's last step, offset by earlier stages
    assert steps_by_key["stage"][16] == 1
    assert set(steps_by_key["transfer_loss"]) == {16}  # only the grown model distils
    assert steps_by_key["acceleration_ratio"][16] == pytest.approx(chain.report_["acceleration_ratio"])
    assert steps_by_key["flops"][16] == pytest.approx(chain.report_["chain_flops"])
    assert "val/accuracy" in steps_by_key and "lr" in steps_by_key


def test_tensorboard_events_read_back(run) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, chain = run
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    _check_curve({k: {e.step: e.value for e in events.Scalars(k)} for k in events.Tags()["scalars"]}, chain)


def test_mlflow_file_store_read_back(run) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    out, chain = run
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    (found,) = client.search_runs([client.get_experiment_by_name("comptlib").experiment_id])
    assert found.info.status == "FINISHED" and found.info.run_name == "run"
    keys = found.data.metrics
    _check_curve({k: {m.step: m.value for m in client.get_metric_history(found.info.run_id, k)} for k in keys}, chain)


def _wandb_records(path: Path):
    """The protobuf records of a ``.wandb`` file (LevelDB's log format: 32 KiB blocks of chunked records)."""
    from wandb.proto import wandb_internal_pb2

    raw, pos, part, block = path.read_bytes(), 7, b"", 32768  # a 7-byte file header, then blocks
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        part, pos = part + raw[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(part)
            yield record
            part = b""


def test_wandb_offline_run_read_back(run) -> None:
    pytest.importorskip("wandb")
    out, chain = run
    (file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    rows: dict[str, dict[int, float]] = {}
    for record in _wandb_records(file):
        if record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            for key, value in items.items():
                rows.setdefault(key, {})[items["_step"]] = value
    _check_curve(rows, chain)


def test_a_missing_tracker_library_is_refused_before_training(tmp_path, monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    out = tmp_path / "run"
    args = ["grow", "--sizes", "16x1,32x1", "--budgets", "4,2", "--unit", "steps", "--no-progress"]
    result = CliRunner().invoke(app, [*args, "--log-to", "wandb", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "pip install comptlib[wandb]" in " ".join(result.output.split())
    assert not out.exists()
    with pytest.raises(ValueError, match="checkpoint_dir"):
        Chain([build_vit(16, 1, image_size=8, patch_size=2)], budgets=[1], loggers=["tensorboard"]).validate(
            digits_loaders(8)[0]
        )


def test_an_unknown_tracker_names_the_choices() -> None:
    result = CliRunner().invoke(app, ["grow", "--log-to", "neptune", "--no-progress"])
    assert result.exit_code == 2 and "neptune" in result.output and "tensorboard" in result.output
