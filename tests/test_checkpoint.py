"""Checkpoints: bit-exact resume, reuse of finished stages, lineage, safe loading."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from comptlib import Chain
from comptlib.checkpoint import CheckpointError, Stream, weights_hash
from comptlib.data import digits_loaders
from comptlib.families.vit import build_vit


def family(n: int = 3) -> list:
    torch.manual_seed(0)
    return [build_vit(16, 1), build_vit(32, 1), build_vit(48, 2)][:n]


def chain(run: Path | None, n: int = 3, **kw) -> Chain:
    settings = {"budgets": [30, 20, 20][:n], "unit": "steps", "progress": False, "checkpoint_every": 5}
    return Chain(family(n), checkpoint_dir=None if run is None else str(run), **(settings | kw))


class Interrupt(Exception):
    pass


def interrupt_after(model: torch.nn.Module, calls: int) -> None:
    count = [0]

    def hook(*_):
        count[0] += 1
        if count[0] > calls:
            raise Interrupt

    model.encoder.register_forward_pre_hook(hook)


@pytest.fixture(scope="module")
def loaders():
    return digits_loaders(batch_size=32)


@pytest.fixture(scope="module")
def reference(loaders) -> list[str]:
    fitted = chain(None).fit(*loaders)
    return [weights_hash(m) for m in fitted.models_]


def test_stream_restores_the_exact_batches(loaders) -> None:
    stream = Stream(loaders[0])
    for _ in range(60):  # into the second epoch (45 batches an epoch)
        next(stream)
    state = stream.state()
    expected = [next(stream)[1] for _ in range(40)]
    torch.manual_seed(123)  # the global RNG moves on; the stream does not care
    fresh = Stream(loaders[0])
    fresh.restore(state)
    assert all(torch.equal(a, next(fresh)[1]) for a in expected)


def test_an_interrupted_chain_resumes_to_the_same_weights(tmp_path, loaders, reference) -> None:
    run = tmp_path / "run"
    broken = chain(run)
    interrupt_after(broken.models[1], 13)  # stage 1: the probe, then 12 steps; checkpointed at step 10
    with pytest.raises(Interrupt):
        broken.fit(*loaders)
    assert (run / "vit-0" / "stage.json").exists() and (run / "vit-1" / "partial.pt").exists()
    resumed = chain(run, resume=True).fit(*loaders)
    assert [weights_hash(m) for m in resumed.models_] == reference
    assert not (run / "vit-1" / "partial.pt").exists()
    steps = [
        e["step"]
        for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if e["model"] == "vit-1" and "loss" in e
    ]
    assert steps == [10, 20]  # no duplicated lines after the resume


def test_finished_stages_are_reused_and_a_changed_lineage_retrains(tmp_path, loaders, reference) -> None:
    run = tmp_path / "run"
    first = chain(run, n=2).fit(*loaders)
    assert [weights_hash(m) for m in first.models_] == reference[:2]
    stamp = (run / "vit-1" / "stage.json").stat().st_mtime_ns
    appended = chain(run, resume=True).fit(*loaders)  # append a larger model: reuse both stages
    assert [weights_hash(m) for m in appended.models_] == reference
    assert (run / "vit-1" / "stage.json").stat().st_mtime_ns == stamp
    lineage = json.loads((run / "lineage.json").read_text())
    assert [e["parent"] for e in lineage] == [None, "vit-0", "vit-1"]
    assert lineage[2]["weights_sha256"] == reference[2]
    changed = chain(run, resume=True, budgets=[30, 25, 20]).fit(*loaders)  # model 1 changed: 1 and 2 retrain
    assert weights_hash(changed.models_[0]) == reference[0]
    assert weights_hash(changed.models_[1]) != reference[1]


def test_a_corrupt_checkpoint_is_a_clear_error(tmp_path, loaders) -> None:
    run = tmp_path / "run"
    chain(run, n=2).fit(*loaders)
    (run / "vit-0" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="vit-0"):
        chain(run, n=2, resume=True).fit(*loaders)
    (run / "vit-0" / "stage.json").write_text("{")
    with pytest.raises(CheckpointError, match="corrupt"):
        chain(run, n=2, resume=True).fit(*loaders)


SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_checkpoint import chain
from comptlib.data import digits_loaders
from comptlib.checkpoint import weights_hash
torch.set_flush_denormal(True)
fitted = chain({run!r}, resume=True).fit(*digits_loaders(batch_size=32))
print(*[weights_hash(m) for m in fitted.models_])
"""


def test_a_killed_process_resumes_bit_exactly(tmp_path, reference) -> None:
    run = tmp_path / "run"
    script = SCRIPT.format(tests=str(Path(__file__).parent), run=str(run))
    env = os.environ | {"PYTHONHASHSEED": "0"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE)
    deadline = time.time() + 120
    while not (run / "vit-1" / "partial.pt").exists():  # kill it mid-stage, with no warning
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == reference


def test_inserting_a_middle_model_reuses_the_stages_before_it(tmp_path, loaders) -> None:
    run, names = tmp_path / "run", ["small", "middle", "large"]
    small, middle, large = family()
    settings = {"unit": "steps", "progress": False, "checkpoint_dir": str(run)}
    Chain([small, large], budgets=[30, 20], names=["small", "large"], **settings).fit(*loaders)
    stamp = (run / "small" / "stage.json").stat().st_mtime_ns
    longer = Chain([small, middle, large], budgets=[30, 20, 20], names=names, resume=True, **settings).fit(*loaders)
    assert (run / "small" / "stage.json").stat().st_mtime_ns == stamp  # reused, not retrained
    assert [e["parent"] for e in json.loads((run / "lineage.json").read_text())] == [None, "small", "middle"]
    assert len(longer.models_) == 3 and longer.history_[2]["parent"] == "middle"
