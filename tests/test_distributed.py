"""Data-parallel Chain.fit on CPU: 2 processes with gloo, started as torchrun would start them.

Each scenario runs in 2 fresh processes whose environment is torchrun's
(``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...), so ``Chain.fit`` starts and
ends the process group itself; each rank writes what it saw to a JSON file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import shutil
import socket
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, DistributedSampler

from comptlib import Chain, FeatureMSE
from comptlib.callbacks import Callback
from comptlib.checkpoint import CheckpointError, load_partial, read_shards, save_sharded, weights_hash
from comptlib.data import digits_loaders, load_digits
from comptlib.distributed import Trainee, World, shard_eval, shard_loader, shard_teacher
from comptlib.families.vit import build_vit
from comptlib.family import Outputs, family_of

PER_RANK_BATCH = 16
BUDGETS = [24, 16]  # stage 0 crosses no epoch; the 44-step epoch is crossed by neither: see the 1-rank run


def family(depth: int = 1) -> list:
    torch.manual_seed(0)
    return [build_vit(16, depth), build_vit(32, depth)]


def chain(depth: int = 1, **kw) -> Chain:
    settings = {"budgets": BUDGETS, "unit": "steps", "progress": False, "lr": 3e-3, "eval_every": 8}
    settings["transferer"] = FeatureMSE()  # a teacher forward each step, to shard and to average
    return Chain(family(depth), **(settings | kw))


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


class Probe(Callback):
    """Records which stages resumed from a checkpoint, and whether each grown one ran its teacher sharded
    (FSDP2: its parameters are DTensors)."""

    def __init__(self) -> None:
        self.resumed: list[bool] = []
        self.sharded: list[bool] = []

    def on_stage_end(self, stage) -> None:
        self.resumed.append(stage.resume_from is not None)
        if stage.teacher_run is not None:
            self.sharded.append(all(isinstance(p, DTensor) for p in stage.teacher_run.parameters()))


def _fsdp(scenario: str, run: Path, train, val, out: str, rank: int) -> dict:
    """The FSDP scenarios: a chain checkpointed every 5 steps, fitted, interrupted or resumed.

    Two blocks a model, so each is an FSDP group of its own beside the root's.
    """
    probe = Probe()
    resume = scenario == "fsdp-resume"
    settings = {"checkpoint_dir": str(run), "checkpoint_every": 5, "resume": resume, "callbacks": [probe]}
    fsdp = chain(2, strategy="fsdp", **settings)
    if scenario == "fsdp-interrupt":
        _raise_after(fsdp.models[1], 13)
    fitted = fsdp.fit(train, val)
    torch.save([m.state_dict() for m in fitted.models_], Path(out, f"weights{rank}.pt"))
    return _summary(fitted) | {"teacher_sharded": probe.sharded, "resumed": probe.resumed}


def _teacher(world: World) -> dict:
    """A sharded teacher's outputs against the same teacher unsharded, for a ViT and a tied-embedding Llama."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    config.update({"num_attention_heads": 2, "num_key_value_heads": 2, "tie_word_embeddings": True})
    cases = [
        (build_vit(32, 2), (torch.randn(8, 3, 8, 8), torch.arange(8))),
        (LlamaForCausalLM(config), {"input_ids": torch.randint(0, 64, (4, 12))}),
    ]
    diffs = []
    for model, batch in cases:
        model.eval().requires_grad_(False)
        forward = family_of(model).forward
        sharded = shard_teacher(model, forward, torch.device("cpu"))
        local = sum(p.to_local().numel() for p in sharded.parameters())
        with torch.inference_mode():
            got, want = Outputs(**sharded(batch)), forward(model, batch)
        diffs.append(
            {
                "logits": (got.logits - want.logits).abs().max().item(),
                "features": (got.features - want.features).abs().max().item(),
                # float32's tolerance: the gathered weights are the same bits, but sit in FSDP's all-gather
                # buffers, where a kernel may order a sum differently (on CPU with gloo they are bit-identical)
                "close": torch.allclose(got.logits, want.logits, rtol=1e-5, atol=1e-6),
                "share": local / sum(p.numel() for p in model.parameters()),
            }
        )
    return {"teacher": diffs}


def _evaluation(world: World) -> dict:
    """Each rank evaluates its half of the held-out set, with the plain model and with it sharded (FSDP)."""
    model, val = eval_case()
    family = family_of(model)
    loader, count = shard_eval(val, world)
    plain = world.mean_metrics(family.evaluate(model, loader, torch.device("cpu")), count)
    trainee = Trainee(copy.deepcopy(model), family.forward, world, torch.device("cpu"), "fsdp")
    with trainee.gathered() as sharded_model:
        sharded = world.mean_metrics(family.evaluate(sharded_model, loader, torch.device("cpu")), count)
    return {"count": count, "batches": len(loader), "plain": plain, "sharded": sharded}


def eval_case() -> tuple[torch.nn.Module, DataLoader]:
    torch.manual_seed(0)
    _, val = load_digits()
    return build_vit(32, 2).eval(), DataLoader(val, batch_size=64)


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
    # no Chain.fit to start the process group, or two in a row (which would each start and end one on one port)
    if scenario in ("teacher", "evaluation") or scenario.startswith("branches-"):
        dist.init_process_group("gloo")
    try:
        train, val = digits_loaders(batch_size=PER_RANK_BATCH)
        run = Path(out) / "run"
        if scenario == "fit":
            result = _summary(chain(checkpoint_dir=str(run), checkpoint_every=5).fit(train, val))
        elif scenario.startswith("fsdp-"):
            result = _fsdp(scenario, run, train, val, out, rank)
        elif scenario == "pre-decay":  # grown from a snapshot of sharded weights, taken mid-stage
            result = _summary(chain(2, strategy="fsdp", grow_from="pre_decay", schedule="wsd").fit(train, val))
        elif scenario.startswith("branches-"):  # a budget search whose decay branches all fall short
            common = {"strategy": scenario.removeprefix("branches-"), "schedule": "wsd", "eval_every": 4}
            plain = _summary(chain(**common).fit(train, val))
            searched = chain(targets=[None, 1.01], **common).fit(train, val)
            result = {"plain": plain["hashes"], "searched": _summary(searched)["hashes"]}
            result["branch_steps"] = searched.history_[1].get("branch_steps")
        elif scenario == "teacher":
            result = _teacher(World(rank, size))
        elif scenario == "evaluation":
            result = _evaluation(World(rank, size))
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
    if dist.is_initialized():
        dist.destroy_process_group()
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


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> tuple[list[dict], Path]:
    out = tmp_path_factory.mktemp("fsdp")
    results = launch("fsdp-fit", out)
    for r in results:
        assert "error" not in r, r.get("traceback")
    return results, out


def test_fsdp_trains_a_chain_to_the_same_plain_models(fsdp_run) -> None:
    (zero, one), _ = fsdp_run
    assert zero["plain"] == ["VisionTransformer", "VisionTransformer"]
    assert zero["hashes"] == one["hashes"]
    assert zero["val"] == one["val"]
    assert all(len(curve) == steps for curve, steps in zip(zero["loss"], BUDGETS))
    assert zero["teacher_sharded"] == [True]  # the grown stage ran its teacher sharded


def test_fsdp_grows_from_a_pre_decay_snapshot(tmp_path) -> None:
    zero, one = launch("pre-decay", tmp_path)
    assert "error" not in zero, zero.get("traceback")
    assert zero["hashes"] == one["hashes"]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_decay_branches_that_fall_short_are_undone_on_every_rank(tmp_path, strategy) -> None:
    zero, one = launch(f"branches-{strategy}", tmp_path)
    assert "error" not in zero, zero.get("traceback")
    assert zero["searched"] == zero["plain"] == one["searched"]
    assert zero["branch_steps"] == 1 + 2 + 3  # branches at steps 4, 8, 12 of 16 (the decay starts at 13)


def _weights(folder: Path) -> list[list[dict]]:
    return [torch.load(folder / f"weights{r}.pt", weights_only=True) for r in range(2)]


def _assert_same_weights(got: list[dict], want: list[dict]) -> None:
    for a, b in zip(got, want, strict=True):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def fsdp_interrupted(tmp_path_factory) -> Path:
    """A sharded run stopped mid-stage: its folder, kept for the tests to copy (and damage)."""
    out = tmp_path_factory.mktemp("fsdp-interrupted")
    assert all(r["error"] == "Interrupt" for r in launch("fsdp-interrupt", out))
    return out


def _copy_of(out: Path, tmp_path: Path) -> Path:
    shutil.copytree(out / "run", tmp_path / "run")
    return tmp_path


def test_a_sharded_checkpoint_is_one_dcp_shard_file_per_rank(fsdp_interrupted) -> None:
    stage = fsdp_interrupted / "run" / "vit-1"
    assert not (stage / "partial.pt").exists()
    files = sorted(p.name for p in (stage / "partial").iterdir())
    assert files == [".metadata", "__0_0.distcp", "__1_0.distcp", "state.pt"]
    sizes = [(stage / "partial" / f).stat().st_size for f in ("__0_0.distcp", "__1_0.distcp")]
    assert abs(sizes[0] - sizes[1]) < 0.2 * max(sizes)  # each rank's half of the weights and AdamW state
    rest = torch.load(stage / "partial" / "state.pt", weights_only=True)
    assert "student" not in rest and "state" not in rest["optimizer"]  # no full state dict beside the shards
    assert rest["world_size"] == 2 and set(rest["files"]) == set(files) - {"state.pt"}
    assert not any(p.name.endswith(".tmp") for p in stage.iterdir())


def test_a_sharded_checkpoint_resumes_bit_exactly(fsdp_run, fsdp_interrupted, tmp_path) -> None:
    (reference, _), ref_out = fsdp_run
    out = _copy_of(fsdp_interrupted, tmp_path)
    resumed = launch("fsdp-resume", out)
    for r in resumed:
        assert "error" not in r, r.get("traceback")
        assert r["resumed"] == [True]  # vit-0 was finished (loaded, not run); vit-1 went on from its checkpoint
        assert r["hashes"] == reference["hashes"] and r["loss"] == reference["loss"]
    for got, want in zip(_weights(out), _weights(ref_out)):
        _assert_same_weights(got, want)
    assert not (out / "run" / "vit-1" / "partial").exists()  # the finished stage dropped it


def test_a_corrupt_sharded_checkpoint_is_refused(fsdp_interrupted, tmp_path) -> None:
    out = _copy_of(fsdp_interrupted, tmp_path)
    shard = out / "run" / "vit-1" / "partial" / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size: DCP alone would load it
    shard.write_bytes(bytes(data))
    for r in launch("fsdp-resume", out):
        assert r["error"] == "CheckpointError", r.get("traceback")
        assert "is corrupt: __1_0.distcp" in r["message"]


@pytest.mark.parametrize(
    ("left", "resumes"),
    [
        (".partial.tmp", False),  # killed before its rename: never taken for a checkpoint, vit-1 retrains
        (".partial.old", True),  # killed between the swap's two renames: the previous checkpoint comes back
    ],
)
def test_a_sharded_save_cut_short_resumes_bit_exactly(fsdp_run, fsdp_interrupted, tmp_path, left, resumes) -> None:
    (reference, _), _ = fsdp_run
    out = _copy_of(fsdp_interrupted, tmp_path)
    stage = out / "run" / "vit-1"
    (stage / "partial").rename(stage / left)
    for r in launch("fsdp-resume", out):
        assert "error" not in r, r.get("traceback")
        assert r["resumed"] == [resumes]
        assert r["hashes"] == reference["hashes"]
    assert not (stage / left).exists()  # cleaned up, or put back


def test_a_sharded_checkpoint_from_another_world_size_is_refused(fsdp_interrupted) -> None:
    stage = fsdp_interrupted / "run" / "vit-1"
    sig = torch.load(stage / "partial" / "state.pt", weights_only=True)["signature"]
    with pytest.raises(CheckpointError, match="saved by 2 processes and this run has 1"):
        load_partial(stage, sig, World(), sharded=True)


def test_a_sharded_save_clears_what_a_crash_left_and_reads_back(tmp_path) -> None:
    groups = [{"lr": 0.1, "params": ["w"]}]
    state = {"signature": "s", "student": {"w": torch.arange(4.0)}, "progress": {"step": 3}}
    state["optimizer"] = {"state": {"w": {"exp_avg": torch.ones(4)}}, "param_groups": groups}
    (tmp_path / "partial").mkdir()
    (tmp_path / ".partial.old").mkdir()  # a swap cut between its last rename and the removal of the old folder
    (tmp_path / ".partial.tmp").mkdir()  # a save cut before its rename
    save_sharded(tmp_path, state, World())  # one process: DCP without a process group
    assert sorted(p.name for p in tmp_path.iterdir()) == ["partial"]
    rest = load_partial(tmp_path, "s", World(), sharded=True)
    assert rest["progress"] == {"step": 3} and "student" not in rest
    target = {"student": {"w": torch.zeros(4)}, "optimizer": {"state": {"w": {"exp_avg": torch.zeros(4)}}}}
    target["optimizer"]["param_groups"] = []  # what a fresh optimiser's state dict has: the saved ones replace it
    got = read_shards(rest, target)
    assert torch.equal(got["student"]["w"], torch.arange(4.0))
    assert torch.equal(got["optimizer"]["state"]["w"]["exp_avg"], torch.ones(4))
    assert got["optimizer"]["param_groups"] == groups


def test_a_sharded_checkpoints_metadata_runs_no_code(tmp_path) -> None:
    folder = tmp_path / "partial"
    folder.mkdir()
    (folder / ".metadata").write_bytes(pickle.dumps(Exploit(tmp_path / "ran")))
    digest = hashlib.sha256((folder / ".metadata").read_bytes()).hexdigest()
    torch.save({"signature": "s", "world_size": 1, "files": {".metadata": digest}}, folder / "state.pt")
    with pytest.raises(CheckpointError, match="posix.system has no place|os.system has no place"):
        load_partial(tmp_path, "s", World(), sharded=True)
    assert not (tmp_path / "ran").exists()


class Exploit:
    """A pickle that runs a shell command when it is loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def test_a_sharded_teacher_gives_the_unsharded_teachers_outputs(tmp_path) -> None:
    for r in launch("teacher", tmp_path):
        assert "error" not in r, r.get("traceback")
        for case in r["teacher"]:
            assert case["close"], case
            assert case["share"] < 0.75  # this rank holds about half of the weights


def test_sharded_evaluation_equals_one_process_evaluation(tmp_path) -> None:
    model, val = eval_case()
    want = family_of(model).evaluate(model, val, torch.device("cpu"))
    results = launch("evaluation", tmp_path)
    assert [r.get("count") for r in results] == [180, 179]  # every other of the 359 held-out digits, each once
    for r in results:
        assert r["batches"] == 3  # in 64s: as many forwards on every rank (FSDP gathers a block on all at once)
        for got in (r["plain"], r["sharded"]):
            assert got["accuracy"] == pytest.approx(want["accuracy"], rel=1e-12)  # counts: exact
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)  # float32 sums over other batches


def test_one_process_leaves_the_loader_alone() -> None:
    train, _ = digits_loaders(batch_size=8)
    assert shard_loader(train, World(), seed=0) is train
    sharded = shard_loader(train, World(rank=1, size=2), seed=3)
    assert isinstance(sharded.sampler, DistributedSampler) and sharded.sampler.seed == 3
    assert sharded.batch_size == 8 and len(sharded) == len(train) // 2
    with pytest.raises(TypeError, match="train_loader: under torchrun"):
        shard_loader(iter(train), World(rank=0, size=2), seed=0)
    _, val = digits_loaders(batch_size=8)
    assert shard_eval(val, World()) == (val, None)  # one process: the whole loader, metrics left as they are
    assert World().mean_metrics({"loss": 0.1}, count=3) == {"loss": 0.1}


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
