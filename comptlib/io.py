"""Durable file writes: a reader never sees half a file, an old file survives a crash, a power loss keeps both.

Every write goes to a temporary beside its target (named ``.NAME.*.tmp``),
is flushed to disk with ``fsync``, renamed over the target, and the folder
is fsynced so the rename itself is durable. A kill leaves at most a stale
temporary, which :func:`clean_temporaries` removes on the next run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from torch import nn

TMP_SUFFIX = ".tmp"


def fsync_path(path: str | Path) -> None:
    """Flush a file's, or a folder's, contents and metadata to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            fsync_path(Path(folder, name))
        fsync_path(folder)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then durably rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files owner-only; give the usual permissions
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)
    return path


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically. Non-finite floats are refused: they are not JSON."""
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n"))


def append_jsonl(path: str | Path, entry: dict[str, Any]) -> None:
    """Append one JSON line (never a bare ``NaN``) after any torn tail a kill left is dropped."""
    line = (json.dumps(entry, allow_nan=False) + "\n").encode()
    with open(path, "ab+") as f:
        _drop_torn_tail(f)
        f.write(line)


def repair_jsonl(path: str | Path) -> None:
    """Drop the torn last line an interrupted append left in a JSON-lines file, if any."""
    if Path(path).is_file():
        with open(path, "rb+") as f:
            _drop_torn_tail(f)


def _drop_torn_tail(f: Any) -> None:
    end = f.seek(0, os.SEEK_END)
    if end == 0:
        return
    f.seek(end - 1)
    if f.read(1) == b"\n":
        return
    f.seek(0)
    data = f.read()
    f.truncate(data.rfind(b"\n") + 1)
    f.seek(0, os.SEEK_END)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The entries of a JSON-lines file, dropping a torn last line (a write a kill cut short)."""
    lines = Path(path).read_text().splitlines()
    entries = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # the torn tail of an interrupted append
            raise
    return entries


def save_model(model: nn.Module, path: str | Path, *, files: Mapping[str, str] | None = None) -> Path:
    """Save a model durably: a ``save_pretrained`` folder for transformers, safetensors otherwise.

    Safetensors carry in their header what rebuilds the model
    (:mod:`comptlib.portable`), when its family can. ``files`` are text files
    written into a ``save_pretrained`` folder with it (its model card). A
    folder cannot be renamed over another atomically, so the old one is
    first renamed to ``.NAME.old``; :func:`recover_folder` finishes or undoes
    a swap that a crash interrupted, and runs before every save and load.
    """
    from safetensors.torch import save_model as _save

    from comptlib.portable import METADATA_KEY, describe

    path = Path(path)
    if not hasattr(model, "save_pretrained"):
        spec = describe(model)
        metadata = None if spec is None else {METADATA_KEY: json.dumps(spec, allow_nan=False)}
        return atomic_write(path, lambda tmp: _save(model, str(tmp), metadata=metadata))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX))
    try:
        model.save_pretrained(tmp)
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
        return replace_folder(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_folder(tmp: str | Path, path: str | Path) -> Path:
    """Durably put the written folder ``tmp`` in ``path``'s place: the old one, if any, is renamed away
    first (a folder cannot be renamed over another); :func:`recover_folder` finishes a swap a crash cut."""
    tmp, path = Path(tmp), Path(path)
    _fsync_tree(tmp)
    recover_folder(path)  # an old folder a crash left beside it would block the swap
    old = _old(path)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    fsync_path(path.parent)
    shutil.rmtree(old, ignore_errors=True)
    return path


def _old(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def recover_folder(path: str | Path) -> None:
    """Finish a folder swap a crash interrupted: the new folder wins; without one, the old comes back."""
    path = Path(path)
    old = _old(path)
    if not old.exists():
        return
    if path.exists():
        shutil.rmtree(old)
    else:
        os.replace(old, path)
        fsync_path(path.parent)


def temporaries(root: str | Path) -> Iterator[Path]:
    """The temporaries left by interrupted writes in ``root`` and its sub-folders (one level down)."""
    root = Path(root)
    for folder in (root, *(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))):
        yield from (p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX))


def clean_temporaries(root: str | Path) -> list[Path]:
    """Remove what interrupted writes left in a run folder; returns the paths removed."""
    removed = list(temporaries(root))
    for path in removed:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    for folder in (p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")):
        recover_folder(folder / "model")  # a save_pretrained swap a kill cut in two
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
