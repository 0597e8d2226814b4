"""A run directory that is never lost or mixed: a marker says it is comptlib's, a lock keeps one writer.

``comptlib grow --out DIR`` opens DIR with :func:`open_run` after every
check has passed and before anything is written:

- a new or empty DIR becomes a run (its marker, ``.comptlib-run.json``, is
  written first);
- a DIR that holds a run needs ``resume`` (the saved ``config.json`` must
  agree with the new one in every field that defines what is trained) or
  ``force`` (which removes only the files that run owns: anything else in
  DIR is an error naming it, and nothing is removed);
- a DIR that holds anything else is refused, naming it;
- an exclusive ``flock`` on ``.comptlib.lock`` is held for the run's
  lifetime: a second writer is refused with the holder's pid and command.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import attrs

from comptlib.errors import ComptError
from comptlib.io import TMP_SUFFIX, clean_temporaries, repair_jsonl, write_json

MARKER = ".comptlib-run.json"
LOCK = ".comptlib.lock"
CONFIG = "config.json"
RUN_FILES = frozenset({MARKER, LOCK, CONFIG, "metrics.jsonl", "lineage.json", "report.json", "report.md", "report.png"})
TRACKER_DIRS = frozenset({"tensorboard", "wandb", "mlruns"})  # what comptlib.loggers write: the run's too
STAGE_FILES = frozenset(
    {"model.safetensors", "model", "state.pt", "stage.json", "partial.pt", "partial", "README.md"}
    | {"pre_decay.safetensors"}
)
RESUMABLE = frozenset(
    {"sizes", "budgets", "targets", "eval_every", "checkpoint_every", "device", "num_workers", "compile", "strategy"}
    | {"log_to"}
)
"""Config fields a resumed run may change: which stages exist, how long they train, where and how fast, where
curves go."""


class RunDirError(ComptError, ValueError):
    """A run directory that cannot be used as asked: it names the path and why."""


@attrs.define
class Run:
    """An open run directory: hold it (``with``) for as long as the run writes there."""

    path: Path
    _lock: IO[str] | None = None

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the flock
            self._lock = None

    def own(self, stages: Iterable[str]) -> None:
        """Record stage folders as this run's, so ``--force`` may remove them later."""
        marker = _marker(self.path) or {}
        known = list(marker.get("stages", []))
        write_json(self.path / MARKER, marker | {"stages": known + [s for s in stages if s not in known]})


def is_run(path: Path) -> bool:
    return (path / MARKER).is_file()


def _marker(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((path / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def open_run(
    path: str | Path,
    config: Mapping[str, Any],
    *,
    resume: bool = False,
    force: bool = False,
    stages: Iterable[str] = (),
) -> Run:
    """Check ``path`` for this run, take its lock, clear it (``force``) and write the marker and config.

    Raises :class:`RunDirError` (naming the path) before anything is
    written when the directory cannot be used as asked.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"--out {path} is a file, not a directory")
    earlier = path.is_dir() and any(path.iterdir())
    if earlier and not is_run(path):
        raise RunDirError(f"--out {path} is not empty and holds no comptlib run (no {MARKER}): choose another --out")
    if earlier and not (resume or force):
        raise RunDirError(f"{path} holds an earlier run: pass --resume to continue it, or --force to overwrite it")
    path.mkdir(parents=True, exist_ok=True)
    run = Run(path, _acquire(path))  # before reading the run's state: no other writer is changing it
    try:
        if earlier and resume:
            _check_resumable(path, config)
        if earlier and force and not resume:
            strangers = sorted(str(p) for p in _unowned(path))
            if strangers:
                raise RunDirError(
                    f"--force removes only a comptlib run's own files; not the run's: {', '.join(strangers)} "
                    "(move them, then run again)"
                )
            _remove_owned(path)
        clean_temporaries(path)
        repair_jsonl(path / "metrics.jsonl")
        marker = _marker(path) or {"comptlib": _version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_json(path / MARKER, marker)
        run.own(stages)
        write_json(path / CONFIG, dict(config))
    except BaseException:
        run.close()
        if not earlier:
            shutil.rmtree(path, ignore_errors=True)  # a new run that never started leaves nothing
        raise
    return run


def _version() -> str:
    from importlib.metadata import version

    return version("comptlib")


def _acquire(path: Path) -> IO[str]:
    """An exclusive lock on the run, or RunDirError naming whoever holds it."""
    lock = open(path / LOCK, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise RunDirError(f"{path} is in use by {holder}: wait for it to finish, or choose another --out") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()} on {socket.gethostname()} ({shlex.join(sys.argv)})\n")
    lock.flush()
    return lock


def _check_resumable(path: Path, config: Mapping[str, Any]) -> None:
    saved_path = path / CONFIG
    try:
        saved = json.loads(saved_path.read_text())
    except FileNotFoundError:
        return  # killed before its config was written: nothing to compare, nothing trained
    except (OSError, json.JSONDecodeError) as err:
        raise RunDirError(f"cannot resume: {saved_path} is unreadable ({err})") from None
    new = json.loads(json.dumps(dict(config)))  # tuples as lists, as the saved file has them
    changed = sorted(k for k in set(saved) | set(new) if k not in RESUMABLE and saved.get(k) != new.get(k))
    if changed:
        diffs = "; ".join(f"{k}: {saved.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise RunDirError(
            f"cannot resume {path}: the chain differs from the saved run in {', '.join(changed)} ({diffs}); "
            "use the same settings, --force to start over, or another --out"
        )


def _owned(path: Path, stages: set[str]) -> Iterable[tuple[Path, bool]]:
    """Every entry in the run directory, with whether the run owns it."""
    for entry in path.iterdir():
        if entry.name in RUN_FILES | TRACKER_DIRS or (entry.name.startswith(".") and entry.name.endswith(TMP_SUFFIX)):
            yield entry, True
        elif entry.is_dir() and entry.name in stages:
            for inner in entry.iterdir():
                mine = inner.name in STAGE_FILES or inner.name.startswith(".")  # temporaries and .model.old
                yield inner, mine
        else:
            yield entry, False


def _stages(path: Path) -> set[str]:
    return set((_marker(path) or {}).get("stages", []))


def _unowned(path: Path) -> list[Path]:
    return [entry for entry, mine in _owned(path, _stages(path)) if not mine]


def _remove_owned(path: Path) -> None:
    stages = _stages(path)
    for entry, _ in list(_owned(path, stages)):
        if entry.name in (MARKER, LOCK):
            continue  # kept: the lock is held, the marker is rewritten
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    for name in stages:
        folder = path / name
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
