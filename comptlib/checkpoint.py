"""Chain checkpoints: resumable to the bit, safe to load, never half-written.

A checkpoint directory holds one folder per stage, named after the model.
A stage is complete once its ``stage.json`` exists (written last, atomically);
it records a *signature* that hashes the stage's settings together with its
parent's signature, so a changed chain (a new middle model, another budget)
retrains exactly the stages whose lineage changed. Mid-stage checkpoints
(``partial.pt``) hold the student, optimiser, scheduler, transfer and RNG
state, and are loaded with ``torch.load(weights_only=True)``: no pickled code
runs. A sharded (FSDP) student's are a ``torch.distributed.checkpoint``
folder instead (``partial/``: every rank's shards, DCP's ``.metadata``, and
``state.pt`` with the rest and a hash of every file), checked before it is
read: see :func:`save_sharded`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from comptlib.card import model_card
from comptlib.distributed import World
from comptlib.errors import ComptError
from comptlib.io import TMP_SUFFIX, atomic_write, read_jsonl, recover_folder, replace_folder, save_model, write_json

STAGE_FILE = "stage.json"
PARTIAL_FILE = "partial.pt"
PARTIAL_DIR = "partial"  # a sharded student's mid-stage checkpoint
SHARDED_STATE = "state.pt"  # in it: everything but the shards, and the hash of every file
DCP_METADATA = ".metadata"


class CheckpointError(ComptError, ValueError):
    """A checkpoint that is corrupt or does not match the chain being resumed."""


class DataStream:
    """Batches forever, epoch after epoch, with a position that can be saved and restored.

    The position is the epoch, the batches taken in it, and the RNG states at
    the moment the epoch's iterator was created (the shuffle order comes from
    them), so a restored stream yields exactly the batches an uninterrupted
    one would.
    """

    def __init__(self, loader: Iterable[Any]) -> None:
        self.loader = loader
        self.epoch, self.index = 0, 0
        self._it: Iterator[Any] | None = None
        self._rng: dict[str, torch.Tensor] = {}

    def _generator(self) -> torch.Generator | None:
        return getattr(self.loader, "generator", None)

    def _start_epoch(self) -> None:
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        gen = self._generator()
        self._rng = {"torch": torch.get_rng_state()}
        if gen is not None:
            self._rng["loader"] = gen.get_state()
        self._it = iter(self.loader)

    def __iter__(self) -> DataStream:
        return self

    def __next__(self) -> Any:
        if self._it is None:
            self._start_epoch()
        try:
            batch = next(self._it)
        except StopIteration:
            self.epoch, self.index = self.epoch + 1, 0
            self._start_epoch()
            batch = next(self._it)
        self.index += 1
        return batch

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "index": self.index, "rng": dict(self._rng)}

    def restore(self, state: dict[str, Any]) -> None:
        """Jump to a saved position; the global RNG is left as it was."""
        current = torch.get_rng_state()
        self.epoch, self.index = state["epoch"], 0
        self._it = None
        if state["rng"]:
            torch.set_rng_state(state["rng"]["torch"])
            gen = self._generator()
            if gen is not None and "loader" in state["rng"]:
                gen.set_state(state["rng"]["loader"])
            sampler = getattr(self.loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(self.epoch)
            self._rng = dict(state["rng"])
            self._it = iter(self.loader)
            for _ in range(state["index"]):
                next(self._it)
            self.index = state["index"]
        torch.set_rng_state(current)


Stream = DataStream
"""The former name of :class:`DataStream` (a data position, not CLIP's residual stream)."""


def describe(obj: Any) -> Any:
    """The structured settings of a grower or transferer, for a checkpoint signature (not its repr).

    Its class, its ``config`` (a frozen attrs object, as transferers have)
    and its public plain attributes (a grower's ``method``, ``approximate``...),
    with the transferers it is made of; two objects that would train
    differently describe differently.
    """
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    out: dict[str, Any] = {"class": type(obj).__qualname__}  # not its module: moving a class keeps the lineage
    config = getattr(obj, "config", None)
    if attrs.has(type(config)):
        out |= attrs.asdict(config)
    plain = (str, int, float, bool, tuple, type(None))
    out |= {k: v for k, v in vars(obj).items() if not k.startswith("_") and k != "training" and isinstance(v, plain)}
    if isinstance(obj, nn.Module):
        for name, child in obj.named_children():
            out[name] = [describe(c) for c in child] if isinstance(child, nn.ModuleList) else describe(child)
    return out


def position(stream: DataStream) -> dict[str, Any]:
    """Where the data stream and the global RNG stand: what a resumed run restores."""
    return {"stream": stream.state(), "rng": torch.get_rng_state()}


def signature(settings: dict[str, Any], parent: str | None) -> str:
    """A short hash of a stage's settings and its parent's signature (its lineage)."""
    text = json.dumps({"settings": settings, "parent": parent}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_hash(model: nn.Module) -> str:
    """SHA-256 of a model's parameters and buffers, in state-dict order."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(_bytes(tensor))
    return digest.hexdigest()


def _model_path(folder: Path, model: nn.Module) -> Path:
    return folder / ("model" if hasattr(model, "save_pretrained") else "model.safetensors")


def save_stage(folder: Path, model: nn.Module, record: dict[str, Any], state: dict[str, Any]) -> None:
    """Save a finished stage: weights (a ``save_pretrained`` folder with its model card), then the RNG/stream
    state, then ``stage.json`` last."""
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model, _model_path(folder, model), files={"README.md": model_card(record)})
    atomic_write(folder / "state.pt", lambda tmp: torch.save(state, tmp))
    write_json(folder / STAGE_FILE, record)
    (folder / PARTIAL_FILE).unlink(missing_ok=True)
    shutil.rmtree(folder / PARTIAL_DIR, ignore_errors=True)


def finished_stage(folder: Path, sig: str) -> dict[str, Any] | None:
    """The record of a complete stage with this signature, or None if it must be (re)trained."""
    path = folder / STAGE_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is corrupt: {err}") from None
    return record if record.get("signature") == sig else None


def load_stage(folder: Path, model: nn.Module, record: dict[str, Any]) -> dict[str, Any]:
    """Load a finished stage's weights into ``model`` (checked against their hash); returns its saved state."""
    path = _model_path(folder, model)
    recover_folder(path)
    load_weights(path, model)
    if record.get("weights_sha256") != weights_hash(model):
        raise CheckpointError(f"{folder}: the weights do not match the hash recorded in {STAGE_FILE}")
    return _torch_load(folder / "state.pt")


def write_lineage(run: Path, entries: list[dict[str, Any]]) -> None:
    """Write ``lineage.json``: these stages, then any later ones the file already held (still on disk).

    A resumed run that fails before it reaches its later stages must not
    forget them.
    """
    path = run / "lineage.json"
    try:
        earlier = json.loads(path.read_text()) if path.exists() else []
    except json.JSONDecodeError:
        earlier = []
    names = {e["name"] for e in entries}
    write_json(path, entries + [e for e in earlier if isinstance(e, dict) and e.get("name") not in names])


def trim_metrics(run: Path, name: str, step: int) -> None:
    """Drop ``name``'s lines in ``metrics.jsonl`` past ``step`` (and a torn tail): a resumed stage logs them again."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return
    text = path.read_text()
    lines = read_jsonl(path)
    keep = [e for e in lines if e.get("model") != name or e["step"] <= step]
    rewritten = "".join(json.dumps(e) + "\n" for e in keep)
    if rewritten != text:
        atomic_write(path, lambda tmp: tmp.write_text(rewritten))


def save_partial(folder: Path, state: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / PARTIAL_FILE, lambda tmp: torch.save(state, tmp))


def load_partial(folder: Path, sig: str, world: World = World(), sharded: bool = False) -> dict[str, Any] | None:
    """The mid-stage state of a stage with this signature, or None.

    ``sharded``: the sharded checkpoint's, checked (collective: every rank
    calls it), with ``"shards"``, the folder :func:`read_shards` reads the
    student and optimiser from. A run reads only its own kind: a sharded one
    ignores ``partial.pt``, an unsharded one ``partial/``.
    """
    if sharded:
        return _load_sharded(folder / PARTIAL_DIR, sig, world)
    path = folder / PARTIAL_FILE
    if not path.exists():
        return None
    state = _torch_load(path)
    return state if state.get("signature") == sig else None


def _split(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A sharded stage state as what DCP writes (the student's and optimiser's tensors) and the rest."""
    shards = {"student": state["student"], "optimizer": state["optimizer"]["state"]}
    rest = {k: v for k, v in state.items() if k != "student"}
    return shards, rest | {"optimizer": {"param_groups": state["optimizer"]["param_groups"]}}


def save_sharded(folder: Path, state: dict[str, Any], world: World) -> None:
    """Save a sharded mid-stage checkpoint, ``partial/``: each rank writes its own shards (collective).

    Written into ``.partial.tmp``: every rank's shards and DCP's
    ``.metadata`` (``dcp.save``, fsynced; rank 0 writes ``.metadata`` once
    every rank's shards are written), then, on rank 0, ``state.pt`` with the
    rest and the SHA-256 of each file; the folder then replaces ``partial/`` in
    one rename. A kill at any point leaves the last complete checkpoint.
    """
    import torch.distributed.checkpoint as dcp

    path, tmp = folder / PARTIAL_DIR, folder / f".{PARTIAL_DIR}{TMP_SUFFIX}"
    if world.main:
        shutil.rmtree(tmp, ignore_errors=True)  # what a killed save left
        tmp.mkdir(parents=True)
    world.barrier()
    shards, rest = _split(state)
    dcp.save(shards, storage_writer=dcp.FileSystemWriter(tmp, single_file_per_rank=True, sync_files=True))
    names = sorted(f.name for f in tmp.iterdir())
    hashes = world.gather({name: _sha256(tmp / name) for name in names[world.rank :: world.size]})
    if world.main:
        files = {name: digest for part in hashes for name, digest in part.items()}
        atomic_write(tmp / SHARDED_STATE, lambda t: torch.save(rest | {"world_size": world.size, "files": files}, t))
        replace_folder(tmp, path)
    world.barrier()


def _load_sharded(path: Path, sig: str, world: World) -> dict[str, Any] | None:
    """The rest of a sharded checkpoint, once every file is checked against its hash (ranks share the reading)."""
    if world.main:
        recover_folder(path)  # a swap a kill cut in two
    world.barrier()
    if not path.exists():
        return None
    state = _torch_load(path / SHARDED_STATE)
    if state.get("signature") != sig:
        return None
    if state["world_size"] != world.size:  # the lineage holds the world size: a folder from elsewhere
        raise CheckpointError(
            f"{path} was saved by {state['world_size']} processes and this run has {world.size}: "
            "resume it on as many, or delete it to retrain the stage"
        )
    names = sorted(state["files"])
    bad = [n for n in names[world.rank :: world.size] if not _intact(path / n, state["files"][n])]
    bad = sorted(n for part in world.gather(bad) for n in part)
    if bad:
        raise CheckpointError(f"{path} is corrupt: {', '.join(bad)} missing or not what was written")
    _check_metadata(path / DCP_METADATA)
    return state | {"shards": str(path)}


def read_shards(state: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    """``target`` (the sharded state of the stage's student and optimiser) filled from ``state["shards"]``."""
    import torch.distributed.checkpoint as dcp

    shards, _ = _split(target)
    try:
        dcp.load(shards, storage_reader=dcp.FileSystemReader(state["shards"]))
    except Exception as err:  # checked already: a folder changed since, or a model that does not fit it
        raise CheckpointError(f"cannot load checkpoint {state['shards']}: {err}") from None
    optimizer = {"state": shards["optimizer"], "param_groups": state["optimizer"]["param_groups"]}
    return {"student": shards["student"], "optimizer": optimizer}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _intact(path: Path, digest: str) -> bool:
    return path.is_file() and _sha256(path) == digest


class _MetadataUnpickler(pickle.Unpickler):
    """DCP's ``.metadata`` is a pickle: only its own record classes, sizes and dtypes may be built from it."""

    def find_class(self, module: str, name: str) -> Any:
        known = module == "torch" or module.startswith("torch.distributed.checkpoint.")
        found = super().find_class(module, name) if known or (module, name) in _METADATA_GLOBALS else None
        record = module.startswith("torch.distributed.checkpoint.") and isinstance(found, type)
        value = isinstance(found, (torch.dtype, torch.layout, torch.memory_format)) or found is torch.Size
        if record or value or (module, name) in _METADATA_GLOBALS:
            return found
        raise pickle.UnpicklingError(f"{module}.{name} has no place in a checkpoint's metadata")


_METADATA_GLOBALS = {("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath")}


def _check_metadata(path: Path) -> None:
    """Refuse a ``.metadata`` that would run code when DCP unpickles it (torch reads it with plain pickle)."""
    try:
        with open(path, "rb") as f:
            _MetadataUnpickler(f).load()
    except Exception as err:
        raise CheckpointError(f"cannot load checkpoint metadata {path}: {err}") from None


def _torch_load(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which and why
        raise CheckpointError(f"cannot load checkpoint {path}: {err}") from None


def load_weights(path: Path, model: nn.Module) -> None:
    """Load a safetensors file (or a ``save_pretrained`` folder's) into ``model``, running no pickled code.

    A file that is not safetensors, or weights that do not fit, raise
    :class:`CheckpointError` naming the file and the mismatch.
    """
    try:
        if path.is_dir():
            from safetensors.torch import load_file

            files = sorted(path.glob("*.safetensors"))
            if not files:
                raise CheckpointError(f"{path} has no safetensors weights")
            state = {k: v for f in files for k, v in load_file(str(f)).items()}
            missing, unexpected = model.load_state_dict(state, strict=False)
            missing = [k for k in missing if not _tied(model, k)]
            if missing or unexpected:
                raise CheckpointError(
                    f"{path} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
                )
        else:
            from safetensors.torch import load_model

            load_model(model, str(path))
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(f"cannot load {path} into {type(model).__name__}: {err}") from None


def _tied(model: nn.Module, key: str) -> bool:
    """Whether ``key`` is a tied weight that save_pretrained leaves out."""
    tied = getattr(model, "_tied_weights_keys", None) or {}
    return key in tied


def fingerprint(loader: Iterable[Any]) -> str:
    """A short hash of a loader's dataset: its length and its first samples.

    Cheap, and enough to tell two datasets apart in a lineage manifest.
    """
    dataset = getattr(loader, "dataset", None)
    digest = hashlib.sha256()
    if dataset is None or not hasattr(dataset, "__len__"):
        return "unknown"
    digest.update(str(len(dataset)).encode())
    for i in range(min(len(dataset), 16)):
        _hash_into(digest, dataset[i])
    return digest.hexdigest()[:16]


def _hash_into(digest: Any, item: Any) -> None:
    if isinstance(item, torch.Tensor):
        digest.update(_bytes(item))
    elif isinstance(item, dict):
        for key in sorted(item):
            digest.update(str(key).encode())
            _hash_into(digest, item[key])
    elif isinstance(item, (tuple, list)):
        for value in item:
            _hash_into(digest, value)
    else:
        digest.update(repr(item).encode())


def _bytes(tensor: torch.Tensor) -> bytes:
    """The raw bytes of a tensor (any dtype, 0-d included)."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


SNAPSHOT_FILE = "pre_decay.safetensors"
"""Where ``grow_from="pre_decay"`` keeps a stage's weights from the start of its LR decay, so a resume finds them."""


def save_snapshot(folder: Path, model: nn.Module, sig: str) -> None:
    """The pre-decay weights of the stage with signature ``sig`` (checked when they are read back)."""
    import safetensors.torch

    atomic_write(folder / SNAPSHOT_FILE, lambda tmp: safetensors.torch.save_model(model, str(tmp), {"signature": sig}))


def load_snapshot(folder: Path, model: nn.Module, sig: str) -> nn.Module | None:
    """A copy of ``model`` holding the saved pre-decay weights, or None when none were saved for this signature."""
    import safetensors
    import safetensors.torch

    path = folder / SNAPSHOT_FILE
    if not path.exists():
        return None
    with safetensors.safe_open(str(path), "pt") as f:
        if (f.metadata() or {}).get("signature") != sig:
            return None
    snapshot = copy.deepcopy(model)
    safetensors.torch.load_model(snapshot, str(path))
    return snapshot.eval()
