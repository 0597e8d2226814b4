"""Fault injection: a real run killed (SIGKILL) at a chosen write resumes to bit-identical weights.

The kill points are inside comptlib's own writes, where a power cut or an
OOM kill would hurt most: while a mid-stage checkpoint is on its way to
disk, between a finished stage's weights and its ``stage.json``, half-way
through a ``metrics.jsonl`` line, and while ``lineage.json`` is replaced.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_checkpoint import SCRIPT, chain  # noqa: E402

from comptlib.checkpoint import weights_hash  # noqa: E402
from comptlib.data import digits_loaders  # noqa: E402

TWO = SCRIPT.replace("resume=True)", "n=2, resume=True)")


@pytest.fixture(scope="module")
def reference() -> list[str]:
    return [weights_hash(m) for m in chain(None, n=2).fit(*digits_loaders(batch_size=32)).models_]


KILL = """
import os, signal
import comptlib.io as io
target, at = {target!r}, {at}
seen = [0]
def die():
    os.kill(os.getpid(), signal.SIGKILL)
if target == "metrics.jsonl":
    original = io.append_jsonl
    def append(path, entry):
        seen[0] += 1
        if seen[0] == at:
            with open(path, "a") as f:
                f.write('{{"model": "torn')  # half a line, then the lights go out
            die()
        original(path, entry)
    io.append_jsonl = append
    import comptlib.callbacks
    comptlib.callbacks.append_jsonl = append
else:
    original = io.fsync_path
    def fsync(path):
        name = os.path.basename(str(path))
        if name.startswith("." + target + ".") and name.endswith(".tmp"):
            seen[0] += 1
            if seen[0] == at:
                die()  # written, not yet renamed into place
        original(path)
    io.fsync_path = fsync
"""

POINTS = [
    ("partial.pt", 3),  # the third mid-stage checkpoint
    ("stage.json", 2),  # after the second stage's weights, before its record
    ("metrics.jsonl", 5),
    ("lineage.json", 1),
]


@pytest.mark.parametrize(("target", "at"), POINTS, ids=[f"{t}#{n}" for t, n in POINTS])
def test_a_run_killed_inside_a_write_resumes_bit_exactly(tmp_path, reference, target, at) -> None:
    run = tmp_path / "run"
    script = TWO.format(tests=str(Path(__file__).parent), run=str(run))
    env = os.environ | {"PYTHONHASHSEED": "0"}
    killed = subprocess.run([sys.executable, "-c", KILL.format(target=target, at=at) + script], env=env)
    assert killed.returncode == -9, f"the kill point {target}#{at} was never reached"
    resumed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.split() == reference
    assert not list(run.rglob("*.tmp")), "a temporary outlived the resume"
