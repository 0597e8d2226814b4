"""Data-parallel training: the process group, the student's DDP/FSDP2 wrapping, reductions across ranks.

``Chain.fit`` runs data-parallel when it is launched with ``torchrun`` (or
inside a process group the caller initialised): every rank holds the chain,
reads its own shard of the data and steps the same optimiser on averaged
gradients, so every rank ends with the same weights. On one process each
helper here is the identity and training is exactly what it was.

* :func:`session` joins (or starts) the process group, picks the rank's
  device, and makes an error on one rank stop every rank with a message.
* :func:`shard_loader` gives each rank its part of the data (a seeded
  ``DistributedSampler``; the loader's batch size is per rank).
* :class:`Trainee` is the student as the ranks train it: its family forward
  wrapped in DDP (default) or FSDP2 ``fully_shard``, optionally compiled;
  :meth:`Trainee.unwrap` gives back the plain model.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import attrs
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, RandomSampler

from comptlib.family import Outputs


class DistributedError(RuntimeError):
    """Another rank failed: this one stops too, instead of waiting for it forever."""


@attrs.frozen
class World:
    """Where this process stands: its rank among ``size`` processes (``size == 1``: not distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """Whether this rank writes files and shows progress (rank 0)."""
        return self.rank == 0

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of ``tensor`` over ranks (``tensor`` itself on one process)."""
        if not self.distributed:
            return tensor
        total = tensor.detach().clone()
        dist.all_reduce(total)
        return total / self.size

    def mean_metrics(self, metrics: dict[str, float], count: int | None = None) -> dict[str, float]:
        """Metrics averaged over ranks, so every rank reports (and stops on) the same numbers.

        With ``count`` (the samples this rank's metrics are means over), the
        mean is weighted by it: ``sum(metric * count) / sum(count)``, in
        float64, the metric of all the ranks' samples together.
        """
        if not self.distributed or not metrics:
            return metrics
        values = torch.tensor(list(metrics.values()), dtype=torch.float64, device=_collective_device())
        if count is None:
            return dict(zip(metrics, self.mean(values).tolist()))
        weighted = torch.cat([values * count, values.new_tensor([count])])
        dist.all_reduce(weighted)
        return dict(zip(metrics, (weighted[:-1] / weighted[-1]).tolist()))

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Average the gradients of parameters no DDP/FSDP wrapper owns (a transferer's projector)."""
        if not self.distributed:
            return
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(self.size)

    def broadcast(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers of ``module`` to every rank."""
        if not self.distributed:
            return
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def _collective_device() -> torch.device:
    """Where small tensors for collectives live: the GPU for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def launched() -> bool:
    """Whether this process is one of several (torchrun's ``WORLD_SIZE``, or an initialised group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``"auto"``: CUDA when available; under several processes a bare ``"cuda"`` means this rank's GPU."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: {spec!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {spec!r} asks for a GPU, but torch sees none here; use auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device: {spec!r} asks for GPU {device.index}, but there are {torch.cuda.device_count()}")
    if device.type not in ("cpu", "cuda", "mps", "xpu"):
        raise ValueError(f"device: {spec!r} is not a device comptlib trains on; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and device.index is None and launched():
        device = torch.device("cuda", local_rank)
    return device


@contextlib.contextmanager
def session(device_spec: str) -> Iterator[tuple[World, torch.device]]:
    """Join the process group (starting it from torchrun's environment if needed); yields the world and device.

    A group this call started is destroyed on exit. An exception on one rank
    is reported with its rank and the group is aborted, so ranks waiting in a
    collective fail at once (:class:`DistributedError`) instead of hanging.
    """
    if not launched():
        yield World(), resolve_device(device_spec)
        return
    owned = not dist.is_initialized()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if owned:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    world = World(dist.get_rank(), dist.get_world_size(), local_rank)
    try:
        yield world, device
    except BaseException as err:
        if _from_peer(err):
            message = f"rank {world.rank} of {world.size}: stopped because another rank failed (see its error)"
            print(f"comptlib: {message}", file=sys.stderr, flush=True)
            _abort()
            raise DistributedError(message) from err
        print(
            f"comptlib: rank {world.rank} of {world.size} failed ({type(err).__name__}: {err}); stopping all ranks",
            file=sys.stderr,
            flush=True,
        )
        _abort()
        raise
    else:
        if owned:
            dist.destroy_process_group()


_PEER_FAILURES = ("by peer", "Broken pipe", "gloo/transport", "NCCL", "ProcessGroup", "timed out")


def _from_peer(err: BaseException) -> bool:
    """Whether ``err`` is a collective failing because another rank went away (not this rank's own error)."""
    return isinstance(err, dist.DistError) or (
        isinstance(err, RuntimeError) and any(s in str(err) for s in _PEER_FAILURES)
    )


def _abort() -> None:
    """Tear the process group down without waiting for peers: they see a closed connection and stop."""
    if not dist.is_initialized():
        return
    abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
    try:
        if abort is not None:
            abort()
        else:  # older torch
            dist.destroy_process_group()
    except Exception:  # the group may already be broken; stopping is all that matters
        pass


def shard_loader(loader: Iterable[Any], world: World, seed: int, pin_memory: bool = False) -> Iterable[Any]:
    """This rank's part of ``loader``: the same loader over a seeded ``DistributedSampler``.

    A loader that already samples with a ``DistributedSampler`` is kept. The
    batch size stays the loader's, so it is the per-rank batch and the global
    batch is ``batch_size * world.size``. Shuffling is kept (seeded by
    ``seed`` and the epoch), and so are ``drop_last``, workers and the collate
    function.
    """
    from comptlib.data import rebuild

    if not world.distributed or isinstance(getattr(loader, "sampler", None), DistributedSampler):
        return loader
    if not isinstance(loader, DataLoader):
        raise TypeError(
            f"train_loader: under torchrun it must be a torch DataLoader for Chain to shard, got a {type(loader).__name__}; "
            "or shard the data per rank yourself with a DataLoader over a DistributedSampler"
        )
    if isinstance(loader.dataset, IterableDataset):
        raise TypeError(
            "train_loader: an IterableDataset cannot be sharded by sampling; "
            "give each rank its own shard and pass a DataLoader with a DistributedSampler"
        )
    if loader.batch_size is None:
        raise TypeError("train_loader: a custom batch_sampler cannot be sharded; use one over a DistributedSampler")
    sampler = DistributedSampler(
        loader.dataset,
        num_replicas=world.size,
        rank=world.rank,
        shuffle=isinstance(loader.sampler, RandomSampler),
        seed=seed,
        drop_last=loader.drop_last,
    )
    return rebuild(loader, sampler=sampler, pin_memory=loader.pin_memory or pin_memory)


def shard_eval(loader: Iterable[Any], world: World) -> tuple[Iterable[Any], int | None]:
    """This rank's part of a held-out loader and its number of samples; or the whole loader and None.

    Rank ``r`` reads every ``size``-th sample from the ``r``-th, in the
    loader's order: no sample twice, none left out. The loader stays whole
    where it cannot be split so: not a map-style DataLoader with a batch size
    (or one that drops its last batch), or ranks that would read unequal
    numbers of batches (a sharded model gathers each block on every rank
    together, a forward at a time).
    """
    if not world.distributed or not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return loader, None
    if loader.batch_size is None or loader.drop_last:
        return loader, None
    order = list(loader.sampler)
    counts = [len(order[r :: world.size]) for r in range(world.size)]
    if len({-(-c // loader.batch_size) for c in counts}) > 1:
        return loader, None
    from comptlib.data import rebuild

    return rebuild(loader, sampler=order[world.rank :: world.size]), counts[world.rank]


class Step(nn.Module):
    """A model and its family's forward as one module, so DDP, FSDP and compile see the whole step.

    Families call a model's parts directly (``model.encoder(...)``), which a
    wrapper around the model itself would never see.
    """

    def __init__(self, forward: Callable[[nn.Module, Any], Any], model: nn.Module) -> None:
        super().__init__()
        self.fn = forward
        self.model = model

    def forward(self, batch: Any) -> dict[str, Any]:
        # a dict, not the Outputs object: DDP and FSDP find (and hook) the tensors of a dict
        return attrs.asdict(self.fn(self.model, batch), recurse=False)


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks FSDP shards one by one: children of a ModuleList/Sequential of one class, outermost."""
    found: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            kids = list(child.children()) if isinstance(child, (nn.ModuleList, nn.Sequential)) else []
            if len(kids) >= 2 and len({type(k) for k in kids}) == 1 and any(True for _ in kids[0].parameters()):
                found.extend(kids)
            else:
                visit(child)

    visit(model)
    return found


def shards(world: World, strategy: str) -> bool:
    """Whether the student is sharded over the ranks: FSDP under several processes."""
    return world.distributed and strategy == "fsdp"


def _empty_like(model: nn.Module, device: torch.device | str) -> nn.Module:
    """A copy of ``model`` whose tensors are uninitialised on ``device`` (``"meta"``: no memory), ties kept.

    The deep copy never copies the weights (``to_empty`` would also untie a
    shared embedding and output head).
    """
    memo: dict[int, Any] = {}
    for tensor in (*model.parameters(), *model.buffers()):
        empty = torch.empty_like(tensor, device=device)
        memo[id(tensor)] = nn.Parameter(empty, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else empty
    return copy.deepcopy(model, memo)


def _shard(step: Step, reshard_after_forward: bool | None = None) -> None:
    """FSDP2 over the step's model: each repeated block its own group, the rest the root's.

    ``None`` is FSDP2's default: blocks reshard after their forward, the root
    stays gathered for the backward that follows.
    """
    from torch.distributed.fsdp import fully_shard

    for block in _blocks(step.model):
        fully_shard(block, reshard_after_forward=reshard_after_forward)
    fully_shard(step, reshard_after_forward=reshard_after_forward)


def _copy_buffers(source: nn.Module, target: nn.Module) -> None:
    """Buffers a state dict leaves out (e.g. rotary frequencies); FSDP never shards buffers."""
    with torch.no_grad():
        for name, buffer in source.named_buffers():
            target.get_buffer(name).copy_(buffer)


def shard_teacher(model: nn.Module, forward: Callable[[nn.Module, Any], Any], device: torch.device) -> Step:
    """A copy of the frozen teacher sharded with FSDP2, for forwards only (no gradients, no optimiser).

    Each rank keeps 1/N of the weights; a block is gathered for its forward
    and freed right after (``reshard_after_forward``), so at most one block
    and the root's weights are whole at a time. The copy is built on the
    ``meta`` device and each rank fills its own shards from ``model``, so no
    second full copy is made. Call it as the step: ``Outputs(**sharded(batch))``.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    step = Step(forward, _empty_like(model, "meta"))
    _shard(step, reshard_after_forward=True)
    step.to_empty(device=device)
    set_model_state_dict(step.model, model.state_dict(), options=StateDictOptions(full_state_dict=True))
    _copy_buffers(model, step.model)
    return step.requires_grad_(False).eval()


class Trainee:
    """The student as the ranks train it.

    On one process: the family forward, plain (bit-for-bit what it always
    was). Under several processes: in DDP (``strategy="ddp"``), or FSDP2
    ``fully_shard`` over its repeated blocks and the rest
    (``strategy="fsdp"``). With ``compile=True`` the step is
    ``torch.compile``-d (after wrapping, as DDP and FSDP2 expect).
    ``extra`` is what else the optimiser steps (a transferer's projector): the
    sharded optimiser state names each parameter by where it sits in both.
    """

    def __init__(
        self,
        model: nn.Module,
        forward: Callable[[nn.Module, Any], Any],
        world: World,
        device: torch.device,
        strategy: str = "ddp",
        compile: bool = False,
        extra: nn.Module | None = None,
    ) -> None:
        self.model, self.world = model, world
        self.sharded = shards(world, strategy)
        step: nn.Module = Step(forward, model)
        if self.sharded:
            self._skeleton = _empty_like(model, "meta")  # the plain module the trained weights go back into
            _shard(step)
        elif world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            step = DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None)
        self.eager = step
        self.step = torch.compile(step) if compile else step
        if self.sharded:  # what the optimiser steps, as one module (the optimiser state's parameter names)
            self._stepped = nn.ModuleDict({"student": step} | ({"transfer": extra} if extra is not None else {}))

    def __call__(self, batch: Any, *, eager: bool = False) -> Any:
        """The family's outputs on ``batch``; ``eager`` skips compilation (the FLOP-counting step)."""
        return Outputs(**(self.eager if eager else self.step)(batch))

    def parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters())

    @contextlib.contextmanager
    def gathered(self) -> Iterator[nn.Module]:
        """The plain model, for evaluation mid-stage.

        Sharded, the root's own weights (embeddings, head) are gathered
        meanwhile; each block gathers its own for its forward and frees them
        after, so the whole model is never gathered at once.
        """
        if not self.sharded:
            yield self.model
            return
        self.eager.unshard()
        try:
            yield self.model
        finally:
            self.eager.reshard()

    def clip_grad_norm_(self, params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
        """Clip the gradients of ``params`` (the student's, sharded or not, and a transferer's) by their total norm.

        Returns the norm before clipping (non-finite when a gradient is).
        """
        if not self.sharded:
            return torch.nn.utils.clip_grad_norm_(params, max_norm)
        from torch.distributed.tensor import DTensor

        groups = [
            [p for p in params if p.grad is not None and isinstance(p, DTensor)],
            [p for p in params if p.grad is not None and not isinstance(p, DTensor)],
        ]
        norms = []
        for group in groups:
            if group:
                norm = torch.nn.utils.get_total_norm([p.grad for p in group])
                norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
        total = torch.linalg.vector_norm(torch.stack(norms))
        for group in groups:
            if group:
                torch.nn.utils.clip_grads_with_norm_(group, max_norm, total)
        return total

    # -- checkpoints: plain state dicts, or (sharded) this rank's shards for torch.distributed.checkpoint --
    def state(self, opt: torch.optim.Optimizer) -> dict[str, Any]:
        """The student's and the optimiser's state (``"student"``, ``"optimizer"``).

        Sharded: DTensors holding this rank's shards (the default, sharded
        options of ``get_state_dict``): nothing is gathered.
        """
        if not self.sharded:
            return {"student": self.model.state_dict(), "optimizer": opt.state_dict()}
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        return {"student": get_model_state_dict(self.model), "optimizer": get_optimizer_state_dict(self._stepped, opt)}

    def load(self, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Load what :meth:`state` gave (sharded: shards read into its layout)."""
        if not self.sharded:
            self.model.load_state_dict(state["student"])
            opt.load_state_dict(state["optimizer"])
            return
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        set_model_state_dict(self.model, state["student"])
        set_optimizer_state_dict(self._stepped, opt, state["optimizer"])

    def unwrap(self) -> nn.Module:
        """The plain model with the trained weights (sharded: a gathered :meth:`copy`)."""
        return self.copy() if self.sharded else self.model

    def copy(self) -> nn.Module:
        """A plain copy of the model as trained so far.

        Sharded: gathered on every rank (the chain grows the next student,
        keeps ``models_`` and shards the next teacher on every rank, each from
        its own full copy), one tensor at a time into an empty copy, so the
        peak is the plain model, this rank's shards and one gathered tensor
        (FSDP modules cannot be deep-copied).
        """
        if not self.sharded:
            return copy.deepcopy(self.model)
        from torch.distributed.tensor import DTensor

        device = next(self.model.parameters()).device
        plain = _empty_like(self._skeleton, device)
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                plain.get_parameter(name).copy_(param.full_tensor() if isinstance(param, DTensor) else param)
        _copy_buffers(self.model, plain)
        return plain
