"""Data-parallel Chain.fit on CPU: 2 processes with gloo, started as torchrun would start them.

Each scenario runs in 2 fresh processes whose environment is torchrun's
(``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...), so ``Chain.fit`` starts and
ends the process group itself; each rank writes what it saw to a JSON file.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, DistributedSampler

from comptlib import Chain
from comptlib.checkpoint import weights_hash
from comptlib.data import digits_loaders, load_digits
from comptlib.distributed import World, shard_loader
from comptlib.families.vit import build_vit

PER_RANK_BATCH = 16
BUDGETS = [24, 16]  # stage 0 crosses no epoch; the 44-step epoch is crossed by neither: see the 1-rank run


def family() -> list:
    torch.manual_seed(0)
    return [build_vit(16, 1), build_vit(32, 1)]


def chain(**kw) -> Chain:
    settings = {"budgets": BUDGETS, "unit": "steps", "progress": False, "lr": 3e-3, "eval_every": 8}
    return Chain(family(), **(settings | kw))


class Interrupt(Exception):
    pass


def _summary(fitted: Chain) -> dict:
    return {
        "hashes": [weights_hash(m) for m in fitted.models_],
        "loss": [r["loss"] for r in fitted.history_],
        "val": [r["val"] for r in fitted.history_],
        "batch_size": fitted.history_[0]["batch_size"],
        "samples": [s.samples for s in fitted.ledger_.stages],
        "plain": [type(m).__name__ for m in fitted.models_],
    }


def _worker(rank: int, size: int, port: int, scenario: str, out: str) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    result: dict = {}
    try:
        train, val = digits_loaders(batch_size=PER_RANK_BATCH)
        run = Path(out) / "run"
        if scenario == "fit":
            result = _summary(chain(checkpoint_dir=str(run), checkpoint_every=5).fit(train, val))
        elif scenario == "fsdp":
            result = _summary(chain(strategy="fsdp").fit(train, val))
        elif scenario == "interrupt":  # both ranks stop at the same step, as a killed job would
            broken = chain(checkpoint_dir=str(run), checkpoint_every=5)
            _raise_after(broken.models[1], 13)
            broken.fit(train, val)
        elif scenario == "resume":
            result = _summary(chain(checkpoint_dir=str(run), checkpoint_every=5, resume=True).fit(train, val))
        elif scenario == "one-rank-fails":  # rank 1 alone fails mid-stage; rank 0 must not wait for it
            broken = chain()
            if rank == 1:
                _raise_after(broken.models[0], 5)
            broken.fit(train, val)
    except BaseException as err:  # noqa: BLE001 - reported to the test
        result = {"error": type(err).__name__, "message": str(err), "traceback": traceback.format_exc()}
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


def _raise_after(model: torch.nn.Module, calls: int) -> None:
    count = [0]

    def hook(*_):
        count[0] += 1
        if count[0] > calls:
            raise Interrupt(f"stopped after {calls} forward passes")

    model.encoder.register_forward_pre_hook(hook)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(scenario: str, out: Path, size: int = 2, timeout: float = 120.0) -> list[dict]:
    """Run ``scenario`` on ``size`` fresh processes; returns each rank's result (and how long they took)."""
    out.mkdir(parents=True, exist_ok=True)
    for f in out.glob("rank*.json"):
        f.unlink()
    # fork: the ranks start with comptlib already imported (spawn would spend ~15 s importing it on 2 cores)
    ctx = mp.get_context("fork" if sys.platform == "linux" else "spawn")
    port = _free_port()
    env = {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "OMP_NUM_THREADS": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        procs = [ctx.Process(target=_worker, args=(r, size, port, scenario, str(out))) for r in range(size)]
        start = time.monotonic()
        for p in procs:
            p.start()
        for p in procs:
            p.join(max(timeout - (time.monotonic() - start), 1.0))
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert not hung, f"{scenario}: ranks {hung} still running after {timeout}s"
    results = [json.loads((out / f"rank{r}.json").read_text()) for r in range(size)]
    for r in results:
        r["seconds"] = time.monotonic() - start
    return results


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    results = launch("fit", tmp_path_factory.mktemp("ddp"))
    for r in results:
        assert "error" not in r, r.get("traceback")
    return results


def test_two_ranks_train_a_chain_to_the_same_plain_models(two_ranks) -> None:
    zero, one = two_ranks
    assert zero["plain"] == one["plain"] == ["VisionTransformer", "VisionTransformer"]
    assert zero["hashes"] == one["hashes"]
    assert zero["loss"] == one["loss"] and zero["val"] == one["val"]  # reduced across ranks
    assert all(len(curve) == steps for curve, steps in zip(zero["loss"], BUDGETS))
    assert zero["batch_size"] == 2 * PER_RANK_BATCH  # the ledger counts the global batch
    assert zero["samples"] == [b * 2 * PER_RANK_BATCH for b in BUDGETS]


def test_the_loss_curve_matches_one_process_with_the_same_global_batch(two_ranks) -> None:
    train, val = load_digits()
    # one rank reading the global batch in the order two ranks read it together
    sampler = DistributedSampler(train, num_replicas=1, rank=0, shuffle=True, seed=0, drop_last=True)
    loader = DataLoader(train, batch_size=2 * PER_RANK_BATCH, sampler=sampler, drop_last=True)
    single = _summary(chain().fit(loader, DataLoader(val, batch_size=256)))
    for got, want in zip(two_ranks[0]["loss"], single["loss"]):
        assert got == pytest.approx(want, rel=1e-3)  # float sums in another order, over 40 steps
    assert two_ranks[0]["val"][-1][-1]["loss"] == pytest.approx(single["val"][-1][-1]["loss"], rel=1e-3)


def test_checkpoints_resume_under_ddp(two_ranks, tmp_path) -> None:
    stopped = launch("interrupt", tmp_path)
    assert all(r["error"] == "Interrupt" for r in stopped)
    assert (tmp_path / "run" / "vit-0" / "stage.json").exists() and (tmp_path / "run" / "vit-1" / "partial.pt").exists()
    resumed = launch("resume", tmp_path)
    for r in resumed:
        assert "error" not in r, r.get("traceback")
        assert r["hashes"] == two_ranks[0]["hashes"]  # to the bit, as an uninterrupted run
    assert not (tmp_path / "run" / "vit-1" / "partial.pt").exists()


def test_an_error_on_one_rank_stops_every_rank(tmp_path) -> None:
    results = launch("one-rank-fails", tmp_path, timeout=90)
    assert results[1]["error"] == "Interrupt"
    assert results[0]["error"] == "DistributedError"
    assert "another rank failed" in results[0]["message"]


def test_fsdp_trains_a_chain_to_the_same_plain_models(tmp_path) -> None:
    zero, one = launch("fsdp", tmp_path)
    assert "error" not in zero, zero.get("traceback")
    assert zero["plain"] == ["VisionTransformer", "VisionTransformer"]
    assert zero["hashes"] == one["hashes"]
    assert all(len(curve) == steps for curve, steps in zip(zero["loss"], BUDGETS))


def test_one_process_leaves_the_loader_alone() -> None:
    train, _ = digits_loaders(batch_size=8)
    assert shard_loader(train, World(), seed=0) is train
    sharded = shard_loader(train, World(rank=1, size=2), seed=3)
    assert isinstance(sharded.sampler, DistributedSampler) and sharded.sampler.seed == 3
    assert sharded.batch_size == 8 and len(sharded) == len(train) // 2
    with pytest.raises(TypeError, match="train_loader: under torchrun"):
        shard_loader(iter(train), World(rank=0, size=2), seed=0)


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ({"strategy": "zero"}, "strategy must be one of"),
        ({"precision": "fp8"}, "precision must be one of"),
        ({"precision": "fp16", "device": "cpu"}, "precision='fp16' needs a CUDA device"),
        ({"teacher_dtype": "fp16"}, "teacher_dtype must be None or 'bf16'"),
    ],
)
def test_bad_settings_are_refused_before_training(setting, match) -> None:
    train, _ = digits_loaders(batch_size=8)
    with pytest.raises(ValueError, match=match):
        chain(**setting).fit(train)


def test_bf16_autocast_and_a_bf16_teacher_train_on_cpu() -> None:
    train, val = digits_loaders(batch_size=32)
    fitted = Chain(family(), budgets=[6, 4], unit="steps", progress=False, precision="bf16", teacher_dtype="bf16")
    fitted.fit(train, val)
    assert all(p.dtype == torch.float32 for m in fitted.models_ for p in m.parameters())  # bf16 only inside
    assert all(torch.isfinite(torch.tensor(r["loss"])).all() for r in fitted.history_)
    assert (
        fitted.history_[1]["settings"]["precision"] == "bf16"
    )  # part of the checkpoint lineage (plain data, not a repr)


def test_the_cli_refuses_bad_scale_out_flags() -> None:
    from typer.testing import CliRunner

    from comptlib.cli import app

    runner = CliRunner()
    bad = runner.invoke(app, ["grow", "--precision", "fp8", "--no-progress"])
    assert bad.exit_code == 2 and "precision: 'fp8' is not one of fp32, bf16, fp16" in bad.output
    assert runner.invoke(app, ["grow", "--nproc", "0"]).exit_code == 2


@pytest.mark.slow
def test_the_cli_trains_on_two_processes(tmp_path) -> None:  # about a minute: two fresh interpreters import comptlib
    import subprocess

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "comptlib", "grow", "--nproc", "2", "--sizes", "16x1,32x1", "--budgets", "10,5"]
    cmd += ["--unit", "steps", "--batch-size", "16", "--no-progress", "--out", str(out)]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    subprocess.run(cmd, check=True, env=env, timeout=300)
    report = json.loads((out / "report.json").read_text())["report"]
    assert report["baseline_samples"] == 10 * 32  # two ranks of 16
