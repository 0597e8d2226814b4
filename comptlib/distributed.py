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

    def mean_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Metrics averaged over ranks, so every rank reports (and stops on) the same numbers."""
        if not self.distributed or not metrics:
            return metrics
        values = self.mean(torch.tensor(list(metrics.values()), dtype=torch.float64, device=_collective_device()))
        return dict(zip(metrics, values.tolist()))

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


class Trainee:
    """The student as the ranks train it.

    On one process: the family forward, plain (bit-for-bit what it always
    was). Under several processes: in DDP (``strategy="ddp"``), or FSDP2
    ``fully_shard`` over its repeated blocks and the rest
    (``strategy="fsdp"``). With ``compile=True`` the step is
    ``torch.compile``-d (after wrapping, as DDP and FSDP2 expect).
    """

    def __init__(
        self,
        model: nn.Module,
        forward: Callable[[nn.Module, Any], Any],
        world: World,
        device: torch.device,
        strategy: str = "ddp",
        compile: bool = False,
    ) -> None:
        self.model, self.world = model, world
        self.sharded = world.distributed and strategy == "fsdp"
        step: nn.Module = Step(forward, model)
        if self.sharded:
            from torch.distributed.fsdp import fully_shard

            self._skeleton = copy.deepcopy(model).to("meta")  # the plain module the trained weights go back into
            for block in _blocks(model):
                fully_shard(block)
            fully_shard(step)
        elif world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            step = DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None)
        self.eager = step
        self.step = torch.compile(step) if compile else step

    def __call__(self, batch: Any, *, eager: bool = False) -> Any:
        """The family's outputs on ``batch``; ``eager`` skips compilation (the FLOP-counting step)."""
        return Outputs(**(self.eager if eager else self.step)(batch))

    def parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters())

    @contextlib.contextmanager
    def gathered(self) -> Iterator[nn.Module]:
        """The plain model with its full weights, for evaluation mid-stage (FSDP gathers them meanwhile)."""
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

    # -- checkpoints: full (unsharded) state, the same files with or without FSDP --
    def state_dict(self) -> dict[str, torch.Tensor]:
        if not self.sharded:
            return self.model.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return full

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if not self.sharded:
            self.model.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(self.model, state, options=StateDictOptions(full_state_dict=True))

    def optimizer_state_dict(self, opt: torch.optim.Optimizer) -> dict[str, Any]:
        if not self.sharded:
            return opt.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(
            self.eager, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )

    def load_optimizer_state_dict(self, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        if not self.sharded:
            opt.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(self.eager, opt, state, options=StateDictOptions(full_state_dict=True))

    def unwrap(self) -> nn.Module:
        """The plain model with the trained weights (FSDP: gathered into a fresh copy on every rank)."""
        if not self.sharded:
            return self.model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        device = next(self.model.parameters()).device
        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True))
        plain = self._skeleton.to_empty(device=device)
        plain.load_state_dict(full)
        with torch.no_grad():  # buffers a state dict leaves out (e.g. rotary frequencies) are not sharded
            for name, buffer in self.model.named_buffers():
                plain.get_buffer(name).copy_(buffer)
        return plain
