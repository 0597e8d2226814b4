"""A corpus of bad inputs and faults: each gets one clear message, and nothing of the user's is lost.

CLI cases run ``comptlib`` in-process (typer's runner) and check the exit
code (2 for a wrong input, 1 for a fault of the machine), that the message
names what is wrong, that no traceback escaped, that nothing was written
for a run that never started, and that every file the user had is intact.
API cases check the exception type and that the message names the model,
dimension, field or file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from comptlib.cli import app

runner = CliRunner()
TINY = ["--sizes", "16x1,32x1", "--budgets", "4,2", "--unit", "steps", "--no-progress", "--checkpoint-every", "2"]


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its content hash: what must survive a refused command."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished tiny run, copied by each case that resumes it."""
    out = tmp_path_factory.mktemp("base") / "run"
    result = runner.invoke(app, ["grow", *TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def png(path: Path, size: int = 8, value: int = 0) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value, value, value)).save(path)
    return path


def image_folder(root: Path, per_class: int = 6, classes: tuple[str, ...] = ("a", "b")) -> Path:
    for c in classes:
        for i in range(per_class):
            png(root / c / f"{i}.png", value=40 * i)
    return root


# Each case: (id, set-up returning the extra arguments, the words the message must hold, the exit code).
Setup = Callable[[Path, Path], list[str]]


def _run_copy(finished: Path) -> Setup:
    def setup(tmp: Path, out: Path) -> list[str]:
        shutil.copytree(finished, out)
        return []

    return setup


def _with(files: dict[str, bytes | None]) -> Callable[[Path], Setup]:
    """A finished run copied to --out, then files written (bytes) or cut to a torn tail (None)."""

    def make(finished: Path) -> Setup:
        def setup(tmp: Path, out: Path) -> list[str]:
            shutil.copytree(finished, out)
            for name, data in files.items():
                path = out / name
                path.write_bytes(data if data is not None else path.read_bytes()[:-7])
            return []

        return setup

    return make


def _images(kind: str) -> Setup:
    def setup(tmp: Path, out: Path) -> list[str]:
        root = image_folder(tmp / "images")
        bad = root / "a" / "bad.png"
        if kind == "empty":
            bad.write_bytes(b"")
        elif kind == "truncated":
            data = png(tmp / "big.png", size=64).read_bytes()
            bad.write_bytes(data[: len(data) // 2])
        elif kind == "text":
            bad.write_text("not an image at all")
        elif kind == "one-class":
            shutil.rmtree(root / "b")
        return ["--data", str(root)]

    return setup


def _text(content: bytes) -> Setup:
    def setup(tmp: Path, out: Path) -> list[str]:
        path = tmp / "corpus.txt"
        path.write_bytes(content)
        return ["--family", "llama", "--sizes", "32x1,48x1", "--budgets", "2,1", "--data", str(path)]

    return setup


def _config(text: bytes) -> Setup:
    def setup(tmp: Path, out: Path) -> list[str]:
        path = tmp / "chain.toml"
        path.write_bytes(text)
        return ["--config", str(path)]

    return setup


def _plain(*args: str) -> Setup:
    return lambda tmp, out: list(args)


def _prime_size(tmp: Path, out: Path) -> list[str]:
    return ["--data", str(image_folder(tmp / "images")), "--image-size", "29", "--batch-size", "4"]


def _val_missing(tmp: Path, out: Path) -> list[str]:
    return ["--data", str(image_folder(tmp / "images")), "--val-data", "/no/val"]


def _not_a_tokenizer(tmp: Path, out: Path) -> list[str]:
    (tmp / "notes").mkdir()
    (tmp / "notes" / "todo.txt").write_text("not a tokenizer")
    return ["--family", "llama", "--tokenizer", str(tmp / "notes")]


def _out_is_file(tmp: Path, out: Path) -> list[str]:
    out.write_text("my notes")
    return []


def _stranger_dir(flag: str | None) -> Setup:
    def setup(tmp: Path, out: Path) -> list[str]:
        out.mkdir()
        (out / "thesis.tex").write_text("three years of work")
        return [flag] if flag else []

    return setup


def _stranger_in_run(finished: Path) -> Setup:
    def setup(tmp: Path, out: Path) -> list[str]:
        shutil.copytree(finished, out)
        (out / "notes.txt").write_text("mine, not comptlib's")
        (out / "vit-16x1" / "plot.svg").write_text("<svg/>")
        return ["--force"]

    return setup


# (id, setup, resume-from-finished?, words in the message, exit code)
FRESH: list[tuple[str, Setup, tuple[str, ...], int]] = [
    ("lr nan", _plain("--lr", "nan"), ("lr",), 2),
    ("lr inf", _plain("--lr", "inf"), ("lr",), 2),
    ("lr zero", _plain("--lr", "0"), ("lr",), 2),
    ("lr not a number", _plain("--lr", "fast"), ("lr",), 2),
    ("budget nan", _plain("--budgets", "nan,4"), ("budgets",), 2),
    ("budget inf", _plain("--budgets", "inf,4"), ("budgets",), 2),
    ("budget negative", _plain("--budgets", "-1,4"), ("budgets",), 2),
    ("budgets too few", _plain("--budgets", "20"), ("budgets",), 2),
    ("budgets not numbers", _plain("--budgets", "a,b"), ("budgets",), 2),
    ("checkpoint every negative", _plain("--checkpoint-every", "-5"), ("checkpoint_every",), 2),
    ("eval every negative", _plain("--eval-every", "-1"), ("eval_every",), 2),
    ("batch size zero", _plain("--batch-size", "0"), ("batch_size",), 2),
    ("workers negative", _plain("--num-workers", "-1"), ("num_workers",), 2),
    ("nproc zero", _plain("--nproc", "0"), ("nproc",), 2),
    ("targets wrong count", _plain("--targets", "0.5,0.6,0.7"), ("targets",), 2),
    ("targets nan", _plain("--targets", "nan"), ("targets",), 2),
    ("vit width not a multiple of 16", _plain("--sizes", "20x1,32x1"), ("width 20", "16"), 2),
    ("size not WxD", _plain("--sizes", "64,128x2"), ("64",), 2),
    ("sizes shrink", _plain("--sizes", "32x1,16x1"), ("models[1]",), 2),
    ("unknown family", _plain("--family", "nope"), ("family", "nope"), 2),
    ("unknown unit", _plain("--unit", "weeks"), ("unit", "weeks"), 2),
    ("unknown method", _plain("--method", "magic"), ("method", "magic"), 2),
    ("unknown strategy", _plain("--strategy", "zero3"), ("strategy",), 2),
    ("unknown precision", _plain("--precision", "fp8"), ("precision",), 2),
    ("fp16 on a CPU", _plain("--precision", "fp16", "--device", "cpu"), ("fp16",), 2),
    ("cuda without a GPU", _plain("--device", "cuda"), ("device", "cuda"), 2),
    ("bogus device", _plain("--device", "tpu9"), ("device", "tpu9"), 2),
    ("config not UTF-8", _config(b'family = "vit"\nlr = 0.1 # \xff\xfe\n'), ("chain.toml", "UTF-8"), 2),
    ("config not TOML", _config(b"family = = vit\n"), ("chain.toml", "TOML"), 2),
    ("config unknown field", _config(b"learning_rate = 0.1\n"), ("learning_rate",), 2),
    ("config budgets not a list", _config(b"budgets = 20\n"), ("budgets",), 2),
    ("config lr a word", _config(b'lr = "fast"\n'), ("lr", "fast"), 2),
    ("data missing", _plain("--data", "/nowhere/at/all"), ("/nowhere/at/all",), 2),
    ("image zero bytes", _images("empty"), ("bad.png",), 2),
    ("image truncated", _images("truncated"), ("bad.png",), 2),
    ("image is text", _images("text"), ("bad.png",), 2),
    ("image folder one class", _images("one-class"), ("class",), 2),
    ("text empty", _text(b""), ("corpus.txt", "empty"), 2),
    ("text not UTF-8", _text(b"caf\xe9 " * 400), ("corpus.txt", "UTF-8"), 2),
    ("tokenizer missing", _plain("--family", "llama", "--tokenizer", "/no/tok"), ("tokenizer", "/no/tok"), 2),
    ("tokenizer folder of notes", _not_a_tokenizer, ("tokenizer", "notes"), 2),
    ("tokenizer on an image recipe", _plain("--tokenizer", "bpe"), ("tokenizer", "vit", "llama"), 2),
    ("vocab size without bpe", _plain("--family", "llama", "--vocab-size", "500"), ("vocab_size", "bpe"), 2),
    (
        "vocab size too small",
        _plain("--family", "llama", "--tokenizer", "bpe", "--vocab-size", "9"),
        ("vocab_size",),
        2,
    ),
    ("text column without a tokenizer", _plain("--family", "llama", "--text-column", "body"), ("text_column",), 2),
    ("max bytes zero", _plain("--family", "llama", "--max-bytes", "0"), ("max_bytes",), 2),
    ("max bytes on images", _plain("--max-bytes", "1000"), ("max_bytes", "vit"), 2),
    ("unknown tracker", _plain("--log-to", "neptune"), ("neptune", "tensorboard"), 2),
    ("image size without data", _plain("--image-size", "28"), ("image_size",), 2),
    ("image size a prime", _prime_size, ("image_size", "29"), 2),
    ("held-out data missing", _val_missing, ("val_data", "/no/val"), 2),
    ("out is a file", _out_is_file, ("is a file",), 2),
    ("out holds someone else's files", _stranger_dir(None), ("holds no comptlib run",), 2),
    ("force on someone else's folder", _stranger_dir("--force"), ("holds no comptlib run",), 2),
    ("resume someone else's folder", _stranger_dir("--resume"), ("holds no comptlib run",), 2),
]

RESUMED: list[tuple[str, Callable[[Path], Setup], list[str], tuple[str, ...], int]] = [
    ("rerun without resume or force", _run_copy, [], ("earlier run", "--resume"), 2),
    ("resume another family", _run_copy, ["--resume", "--family", "resnet", "--sizes", "8x1,16x1"], ("family",), 2),
    ("resume another lr", _run_copy, ["--resume", "--lr", "0.5"], ("lr", "0.5"), 2),
    ("resume another seed", _run_copy, ["--resume", "--seed", "3"], ("seed",), 2),
    ("force with a stranger's file", _stranger_in_run, [], ("notes.txt",), 2),
    ("corrupt stage.json", _with({"vit-16x1/stage.json": b"{not json"}), ["--resume"], ("stage.json",), 2),
    ("corrupt weights", _with({"vit-16x1/model.safetensors": b"garbage"}), ["--resume"], ("model.safetensors",), 2),
    ("corrupt state", _with({"vit-16x1/state.pt": b"garbage"}), ["--resume"], ("state.pt",), 2),
    ("corrupt config", _with({"config.json": b"{"}), ["--resume"], ("config.json",), 2),
]


@pytest.mark.parametrize(("case", "setup", "words", "code"), FRESH, ids=[c[0] for c in FRESH])
def test_cli_refuses_a_bad_input_before_writing(tmp_path, case, setup, words, code) -> None:
    out = tmp_path / "out"
    args = setup(tmp_path, out)
    before = snapshot(tmp_path)
    base = ["--no-progress"] if args[:1] == ["--config"] else TINY  # flags would override the file
    result = runner.invoke(app, ["grow", *base, *args, "--out", str(out)])
    assert result.exit_code == code, (case, result.output, result.exception)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    for word in words:
        assert word in flat(result.output), (case, word, result.output)
    assert snapshot(tmp_path) == before, f"{case}: files were written or changed"


@pytest.mark.parametrize(("case", "make", "args", "words", "code"), RESUMED, ids=[c[0] for c in RESUMED])
def test_cli_keeps_an_earlier_run(tmp_path, finished, case, make, args, words, code) -> None:
    out = tmp_path / "out"
    args = make(finished)(tmp_path, out) + args
    before = snapshot(out)
    result = runner.invoke(app, ["grow", *TINY, *args, "--out", str(out)])
    assert result.exit_code == code, (case, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    for word in words:
        assert word in flat(result.output), (case, word, result.output)
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k != ".comptlib.lock"} == {
        k: v for k, v in before.items() if k != ".comptlib.lock"
    }, f"{case}: the earlier run was changed"


def test_force_removes_only_its_own_run(tmp_path, finished) -> None:
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    (out / "vit-16x1" / ".model.safetensors.abc.tmp").write_bytes(b"left by a kill")
    for left in ("partial", "pre_decay.safetensors"):  # a sharded run's mid-stage folder, a pre-decay snapshot
        (out / "vit-32x1" / left).mkdir() if left == "partial" else (out / "vit-32x1" / left).write_bytes(b"x")
    result = runner.invoke(app, ["grow", *TINY, "--budgets", "3,2", "--out", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["budgets"] == [3.0, 2.0]
    assert not list(out.rglob("*.tmp")), "a stale temporary survived"
    assert not (out / "vit-32x1" / "partial").exists() and not (out / "vit-32x1" / "pre_decay.safetensors").exists()


def test_a_torn_metrics_line_does_not_block_resume(tmp_path, finished) -> None:
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"model": "vit-32x1", "step": 2, "lo')  # a kill mid-append
    lineage = (out / "lineage.json").read_text()
    result = runner.invoke(app, ["grow", *TINY, "--out", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    metrics = out / "metrics.jsonl"
    for line in metrics.read_text().splitlines() if metrics.exists() else []:
        json.loads(line)
    assert (out / "lineage.json").read_text() == lineage


def test_a_failed_resume_keeps_every_stage_in_the_lineage(tmp_path, finished) -> None:
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    (out / "vit-32x1" / "state.pt").write_bytes(b"garbage")  # the second stage cannot be loaded
    result = runner.invoke(app, ["grow", *TINY, "--out", str(out), "--resume"])
    assert result.exit_code == 2 and "state.pt" in flat(result.output)
    assert [e["name"] for e in json.loads((out / "lineage.json").read_text())] == ["vit-16x1", "vit-32x1"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_or_read_only_disk_is_exit_1_and_leaves_no_half_file(tmp_path, monkeypatch, code) -> None:
    import comptlib.io

    out = tmp_path / "out"

    def refuse(path) -> None:
        raise OSError(code, "refused by the disk", str(path))

    monkeypatch.setattr(comptlib.io, "fsync_path", refuse)
    result = runner.invoke(app, ["grow", *TINY, "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "refused by the disk" in flat(result.output) and "Traceback" not in result.output
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")], "a half-written file was left"


def test_a_second_writer_is_refused_naming_the_holder(tmp_path) -> None:
    out = tmp_path / "out"
    code = (
        "import sys, time; from comptlib.rundir import open_run; "
        f"run = open_run({str(out)!r}, {{}}); print('locked', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(out)
        result = runner.invoke(app, ["grow", *TINY, "--out", str(out), "--resume"])
        assert result.exit_code == 2, result.output
        assert "in use by" in flat(result.output) and f"pid {holder.pid}" in flat(result.output)
        assert snapshot(out) == before
    finally:
        holder.kill()
        holder.wait()


def test_a_diverged_run_fails_and_writes_nothing_non_finite(tmp_path) -> None:
    out = tmp_path / "out"
    args = ["--sizes", "16x1,32x1", "--budgets", "40,10", "--unit", "steps", "--lr", "1e6", "--no-progress"]
    result = runner.invoke(app, ["grow", *args, "--checkpoint-every", "5", "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "vit-16x1" in flat(result.output) and "step" in flat(result.output)
    assert "acceleration ratio" not in result.output and not (out / "report.json").exists()
    metrics = out / "metrics.jsonl"
    for line in metrics.read_text().splitlines() if metrics.exists() else []:
        assert "NaN" not in line and "Infinity" not in line
        json.loads(line)


def test_check_with_corrupt_weights(tmp_path) -> None:
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"not safetensors")
    result = runner.invoke(app, ["check", "32x2", "48x3", "--weights", str(weights)])
    assert result.exit_code == 2 and "w.safetensors" in flat(result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit)


# -- the Python API: the exception type, and a message that names what is wrong -------------------
def _vits(*sizes: tuple[int, int]):
    from comptlib.families.vit import build_vit

    return [build_vit(w, d) for w, d in sizes]


def _api_cases():
    from torchvision.models import resnet18

    from comptlib import Chain, grow
    from comptlib.checkpoint import load_weights
    from comptlib.data import image_folder_loaders, load_text
    from comptlib.rundir import open_run

    def corrupt_weights(tmp: Path):
        (tmp / "w.safetensors").write_bytes(b"junk")
        load_weights(tmp / "w.safetensors", _vits((16, 1))[0])

    def empty_text(tmp: Path):
        (tmp / "empty.txt").write_text("")
        load_text(tmp / "empty.txt")

    def zero_byte_image(tmp: Path):
        root = image_folder(tmp / "imgs")
        (root / "b" / "zero.png").write_bytes(b"")
        image_folder_loaders(root, 8, batch_size=2)

    def out_file(tmp: Path):
        (tmp / "f").write_text("x")
        open_run(tmp / "f", {})

    def chain(**kwargs):
        return lambda tmp: Chain(kwargs.pop("models", _vits((16, 1), (32, 1))), progress=False, **kwargs).validate(
            [(torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))]
        )

    return [
        ("no models", chain(models=[]), TypeError, "models"),
        ("not a module", chain(models=[_vits((16, 1))[0], "vit"]), TypeError, "models[1]"),
        ("mixed families", chain(models=[_vits((16, 1))[0], resnet18()]), TypeError, "models[1]"),
        ("budgets count", chain(budgets=[1, 2, 3], unit="steps"), ValueError, "budgets"),
        ("budget negative", chain(budgets=[1, -2], unit="steps"), ValueError, "budgets[1]"),
        ("unit", chain(unit="weeks"), ValueError, "unit"),
        ("grower", chain(grower="magic"), ValueError, "grower"),
        ("transferer", chain(transferer="magic"), ValueError, "transferer"),
        ("shrinking chain", chain(models=_vits((32, 1), (16, 1))), ValueError, "models[1]"),
        ("warmup", chain(warmup=2.0), ValueError, "warmup"),
        ("names count", chain(names=["a"]), ValueError, "names"),
        ("bogus device", chain(device="tpu9"), ValueError, "device"),
        ("lr nan", chain(lr=float("nan")), ValueError, "lr"),
        ("lr a word", chain(lr="fast"), ValueError, "lr"),
        ("budgets not a list", chain(budgets=20, unit="steps"), ValueError, "budgets"),
        ("budget nan", chain(budgets=[float("nan"), 4], unit="steps"), ValueError, "budgets"),
        ("checkpoint every negative", chain(checkpoint_every=-5), ValueError, "checkpoint_every"),
        ("name climbs out", chain(names=["../x", "y"]), ValueError, "../x"),
        ("name is absolute", chain(names=["x", "/abs/y"]), ValueError, "/abs/y"),
        ("grow backwards", lambda tmp: grow(*_vits((32, 1), (16, 1))), ValueError, "hidden_dim"),
        ("corrupt weights", corrupt_weights, ValueError, "w.safetensors"),
        ("empty text", empty_text, ValueError, "empty.txt"),
        ("zero-byte image", zero_byte_image, ValueError, "zero.png"),
        ("out is a file", out_file, ValueError, "is a file"),
    ]


API = _api_cases()


@pytest.mark.parametrize(("case", "call", "error", "words"), API, ids=[c[0] for c in API])
def test_api_names_what_is_wrong(tmp_path, case, call, error, words) -> None:
    with pytest.raises(error) as caught:
        call(tmp_path)
    assert words in str(caught.value), (case, str(caught.value))
