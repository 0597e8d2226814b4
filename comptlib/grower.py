"""Parameter-space transfer: the `Grower` base class and growth checks.

A grower writes a trained *source* model into a freshly built, larger *target*
of the same family. ``method="exact"`` keeps the function (in eval mode);
``method="compt"`` reproduces the CoM-PT warm start (leading-corner copy plus
block duplication), with packed Q/K/V split first.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator
from typing import Any, Literal

import attrs
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from comptlib.errors import ComptError
from comptlib.ops import Canvas, Writer, corner, lazy_init

Method = Literal["exact", "compt"]
METHODS: tuple[str, ...] = ("exact", "compt")


class GrowthError(ComptError, ValueError):
    """A growth that cannot be done, naming the dimension and why.

    Raised by :meth:`Grower.validate` before any weight is written (and by
    :class:`~comptlib.Chain` before any training step).

    Examples
    --------
    >>> import comptlib
    >>> from comptlib.families.vit import build_vit
    >>> comptlib.grow(build_vit(64, 2), build_vit(32, 2))
    Traceback (most recent call last):
    comptlib.grower.GrowthError: hidden_dim shrinks: 64 -> 32
    """


@attrs.frozen
class GrowthCheck:
    """Measured output difference between a source and its grown target.

    ``exact`` is what the grower promised (:meth:`Grower.keeps_function`);
    ``max_abs`` and ``max_rel`` (relative to the source's largest output) are
    what :meth:`Grower.check` measured.

    Examples
    --------
    The paper's warm start (``"compt"``) changes the function; exact growth
    does not:

    >>> import torch
    >>> import comptlib
    >>> from comptlib.families.vit import build_vit
    >>> _ = torch.manual_seed(0)
    >>> small, x = build_vit(32, 2), torch.randn(2, 3, 8, 8)
    >>> _ = torch.nn.init.normal_(small.heads.head.weight)  # torchvision zero-inits the head
    >>> growers = {m: comptlib.family_of(small).grower(m) for m in ("exact", "compt")}
    >>> checks = {m: g.check(small, g.grow(small, build_vit(64, 4)), x) for m, g in growers.items()}
    >>> checks["exact"].exact, checks["exact"].max_rel < 1e-5
    (True, True)
    >>> checks["compt"].exact, checks["compt"].max_rel > 0.1
    (False, True)
    """

    max_abs: float
    max_rel: float
    method: str
    exact: bool

    def __str__(self) -> str:
        kind = "exact" if self.exact else "approximate"
        name = self.method if self.method == kind else f"{self.method} ({kind})"
        return f"{name}: max |diff| {self.max_abs:.3g}, relative {self.max_rel:.3g}"


def _primary_output(out: Any) -> torch.Tensor:
    """The tensor a model's output is compared on: logits where there are any."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("logits", "logits_per_image", "last_hidden_state"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"cannot compare model outputs of type {type(out).__name__}")


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


def _on_meta(model: nn.Module) -> bool:
    return any(t.is_meta for t in _tensors(model))


def _storage(tensor: torch.Tensor) -> int:
    """What identifies a tensor and its views: the address of its storage."""
    return tensor.untyped_storage().data_ptr()


def _allocate(target: nn.Module) -> bool:
    """Give every meta tensor of ``target`` uninitialised CPU storage (tied tensors stay tied); whether any was meta."""
    meta = [t.is_meta for t in _tensors(target)]
    if not any(meta):
        return False
    if not all(meta):
        raise ValueError("the target has tensors on the meta device and others not: build it wholly on meta")
    fresh: dict[int, torch.Tensor] = {}
    for module in target.modules():
        for store, wrap in ((module._parameters, True), (module._buffers, False)):
            for name, old in store.items():
                if old is not None:
                    if id(old) not in fresh:
                        new = torch.empty_like(old, device="cpu")
                        fresh[id(old)] = nn.Parameter(new, requires_grad=old.requires_grad) if wrap else new
                    store[name] = fresh[id(old)]
    return True


class _Only(TorchDispatchMode):
    """Lets init rules write only the ``only`` tensors (by storage) of a model whose tensors are ``model``.

    A rule's in-place write into any other tensor of the model (already grown,
    or drawn later) is skipped, and ``writers`` records which modules' rules
    (``module``, set by the caller) wrote it; everything else runs as usual.
    """

    def __init__(self, model: set[int], only: set[int]) -> None:
        super().__init__()
        self.skip = model - only
        self.module = ""
        self.writers: dict[int, list[str]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        for spec, arg in zip(func._schema.arguments, args):
            written = spec.alias_info is not None and spec.alias_info.is_write
            if written and isinstance(arg, torch.Tensor) and arg.numel():
                key = _storage(arg)
                if key in self.skip:
                    names = self.writers.setdefault(key, [])
                    if self.module not in names:
                        names.append(self.module)
                    return arg
        return func(*args, **(kwargs or {}))


class Grower(abc.ABC):
    """Abstract base for parameter-space transfer within one model family.

    Subclasses implement :meth:`validate` (raise before any training when a
    growth is impossible) and :meth:`grow`. ``noise`` adds Gaussian noise, in
    units of each tensor's standard deviation, only where it keeps the chosen
    method's promise: for ``"exact"`` on entries the function does not depend
    on, for ``"compt"`` on every copied entry.

    Examples
    --------
    The ViT family's grower, step by step (:func:`grow` does the first two):

    >>> import torch
    >>> from comptlib import family_of
    >>> from comptlib.families.vit import build_vit
    >>> _ = torch.manual_seed(0)
    >>> small, large = build_vit(32, 2), build_vit(64, 4)
    >>> with torch.no_grad():  # stand in for training: move every weight off its init
    ...     for p in small.parameters():
    ...         _ = p.add_(0.1 * torch.randn_like(p))
    >>> grower = family_of(small).grower("exact")
    >>> grower.validate(small, large)  # raises GrowthError if it cannot be done
    >>> large = grower.grow(small, large)
    >>> grower.check(small, large, torch.randn(2, 3, 8, 8)).max_rel < 1e-5
    True

    After exact growth the teacher's features are a fixed linear map of the
    student's, which :class:`~comptlib.FeatureMSE` uses instead of a
    trainable projector:

    >>> batch = (torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))
    >>> forward = family_of(small).forward
    >>> student, teacher = forward(large.eval(), batch), forward(small.eval(), batch)
    >>> fmap = grower.feature_map(small, large)
    >>> tuple(fmap.shape), torch.allclose(student.features @ fmap, teacher.features, atol=1e-5)
    ((64, 32), True)

    :func:`~comptlib.register_family` shows a grower written from scratch.
    """

    defers_init: bool = False
    """Whether :meth:`grow` takes a meta target itself, in :meth:`growing` (writing only through canvases);
    otherwise :func:`grow` materialises it first."""

    def __init__(self, method: Method = "exact", *, noise: float = 0.0, seed: int | None = None) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.method = method
        self.noise = noise
        self.seed = seed

    def __repr__(self) -> str:
        return f"{type(self).__name__}(method={self.method!r}, noise={self.noise}, seed={self.seed})"

    @property
    def exact(self) -> bool:
        """Whether :meth:`grow` promises to keep the function."""
        return self.method == "exact"

    @abc.abstractmethod
    def validate(self, source: nn.Module, target: nn.Module) -> None:
        """Raise :class:`GrowthError` (or TypeError) if ``source`` cannot grow into ``target``."""

    @abc.abstractmethod
    def grow(self, source: nn.Module, target: nn.Module) -> nn.Module:
        """Write ``source`` into ``target`` in place and return ``target``."""

    def materialize(self, target: nn.Module) -> nn.Module:
        """Give a target built on the ``meta`` device real CPU storage, each module drawn from its own init rule.

        Building a large target under ``torch.device("meta")`` costs nothing;
        here each tensor is allocated once and initialised once by
        :meth:`init_module` (children before parents, as constructors do).
        Growth does better (:meth:`growing`): it skips the init of tensors it
        writes whole. A target with no meta tensor is returned as it is; one
        with some tensors on meta and others not is a ValueError.
        """
        if _allocate(target):
            self._init(target)
        return target

    @contextlib.contextmanager
    def growing(self, source: nn.Module, target: nn.Module) -> Iterator[None]:
        """Where :meth:`grow` writes: a meta target gets storage, and each tensor its init only if growth needs it.

        A tensor the growth writes whole (a residual writer, a zero-filled
        embedding) is never drawn; one it writes in part is drawn from
        :meth:`init_module` (that tensor alone) just before its first write;
        the rest after the growth, and buffers before it (growers read them).
        With ``noise`` the whole target is initialised first (noise is scaled
        by each tensor's init). A meta source grows into a meta target at the
        shape level: nothing is allocated. A target with storage is left as it is.
        """
        if _on_meta(source):
            if not _on_meta(target):
                raise ValueError("a source on the meta device has no values to grow into a real target")
            yield
            return
        if not _allocate(target):
            yield
            return
        order = list(reversed(list(target.named_modules())))  # children first, as constructors run
        if self.noise:
            self._init(target, order)
            yield
            return
        model = {_storage(t) for t in _tensors(target)}
        pending = {_storage(p): p for p in target.parameters() if p.numel()}
        first = _Only(model, {_storage(b) for b in target.buffers()})
        self._init(target, order, first)  # buffers now; and which rules write each parameter
        modules = dict(order)

        def settle(tensor: torch.Tensor, whole: bool) -> None:
            key = _storage(tensor)
            base = pending.pop(key, None)
            if base is None:  # drawn, or written whole, already
                return
            if not (whole and tensor.data_ptr() == base.data_ptr() and tensor.numel() == base.numel()):
                self._init(target, [(n, modules[n]) for n in first.writers.get(key, [])], _Only(model, {key}))

        with lazy_init(settle):
            yield
        if pending:
            self._init(target, order, _Only(model, set(pending)))

    def _init(
        self, target: nn.Module, walk: list[tuple[str, nn.Module]] | None = None, mode: _Only | None = None
    ) -> None:
        """Run :meth:`init_module` on ``walk`` (default: every module, children first), under ``mode``."""
        walk = list(reversed(list(target.named_modules()))) if walk is None else walk
        with torch.no_grad(), mode or contextlib.nullcontext():
            for name, module in walk:
                if mode is not None:
                    mode.module = name
                self.init_module(target, name, module)

    def init_module(self, model: nn.Module, name: str, module: nn.Module) -> None:
        """Initialise ``module``'s own tensors as ``model``'s constructor would.

        Here: a Hugging Face model's ``_init_weights``, else PyTorch's ``reset_parameters``.

        Families override it with their library's rule (torchvision's ViT
        init, Hugging Face's ``_init_weights``, timm's). It sees every module
        (``name`` is its name in ``model``), children first; a rule that a
        parent overrides should skip the child, so no tensor is drawn twice.
        """
        hf_rule = getattr(model, "_init_weights", None)  # a Hugging Face model carries its own
        if callable(hf_rule):
            hf_rule(module)
            return
        reset = getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)
        if callable(reset):  # MultiheadAttention names it _reset_parameters
            reset()

    def require_type(self, source: nn.Module, target: nn.Module, cls: type, library: str) -> None:
        """Raise TypeError naming the model (source or target) that is not a ``library`` ``cls``."""
        for role, model in (("source", source), ("target", target)):
            if not isinstance(model, cls):
                raise TypeError(
                    f"{type(self).__name__} needs {library} {cls.__name__} models, the {role} is {type(model).__name__}"
                )

    def keeps_function(self, source: nn.Module, target: nn.Module) -> bool:
        """Whether growing ``source`` into ``target`` promises the same function (what :meth:`check` reports)."""
        return self.exact

    def feature_map(self, source: nn.Module, target: nn.Module) -> torch.Tensor | None:
        """A fixed matrix ``M`` with ``teacher_features == student_features @ M`` right after growth.

        Transferers use it instead of a trainable projector. ``None`` when no
        such map is known (e.g. after a ``"compt"`` warm start).
        """
        return None

    def _generator(self) -> torch.Generator:
        gen = torch.Generator()
        gen.manual_seed(0 if self.seed is None else self.seed)
        return gen

    def writer(self, gen: torch.Generator | None = None) -> Writer:
        """What writes canvases into the target: the grower's noise where its method allows.

        One growth uses one writer, whose generator (default: a fresh one
        from ``seed``) every noisy write draws from in turn.
        """
        where = "free" if self.method == "exact" else "written"
        return Writer(self.noise, where, self._generator() if gen is None else gen)

    def _write(self, param: torch.Tensor, canvas: Canvas, gen: torch.Generator) -> None:
        """Copy a finished canvas into ``param`` (or a view of it), with noise where the method allows.

        Kept for growers written before :meth:`writer`, which the built-in ones use.
        """
        self.writer(gen)(param, canvas)

    def _corner(self, target: torch.Tensor, source: torch.Tensor, gen: torch.Generator) -> None:
        """CoM-PT's copy: ``source`` into the leading corner of ``target``; the rest keeps its init.

        Kept for growers written before :func:`comptlib.ops.corner`, which the built-in ones use.
        """
        corner(target, source, self.writer(gen))

    @torch.no_grad()
    def check(self, source: nn.Module, target: nn.Module, inputs: Any) -> GrowthCheck:
        """Measure max absolute and relative output difference on ``inputs`` in eval mode."""
        modes = source.training, target.training
        source.eval()
        target.eval()
        try:
            args = inputs if isinstance(inputs, tuple) else (inputs,)
            kwargs = inputs if isinstance(inputs, dict) else None
            a = _primary_output(source(**kwargs) if kwargs is not None else source(*args)).float()
            b = _primary_output(target(**kwargs) if kwargs is not None else target(*args)).float()
        finally:
            source.train(modes[0])
            target.train(modes[1])
        if a.shape != b.shape:
            raise GrowthError(f"output shape {tuple(b.shape)} of the target differs from the source's {tuple(a.shape)}")
        diff = (a - b).abs().max().item()
        scale = a.abs().max().item()
        exact = self.keeps_function(source, target)
        return GrowthCheck(max_abs=diff, max_rel=diff / max(scale, 1e-12), method=self.method, exact=exact)


def grow(source: nn.Module, target: nn.Module, method: Method = "exact", **kwargs: Any) -> nn.Module:
    """Grow ``source`` into ``target`` with the grower registered for its type.

    >>> import torch, comptlib
    >>> from torchvision.models import VisionTransformer
    >>> small = VisionTransformer(8, 2, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=3)
    >>> _ = torch.nn.init.normal_(small.heads.head.weight)  # torchvision zero-inits the head
    >>> large = VisionTransformer(8, 2, num_layers=3, num_heads=3, hidden_dim=24, mlp_dim=40, num_classes=3)
    >>> large = comptlib.grow(small, large)
    >>> x = torch.randn(2, 3, 8, 8)
    >>> torch.allclose(small.eval()(x), large.eval()(x), atol=1e-5)
    True

    A target built on the ``meta`` device is allocated once and grown in
    place, each tensor drawn from its init rule only where growth leaves
    entries free (:meth:`Grower.growing`):

    >>> with torch.device("meta"):
    ...     large = VisionTransformer(8, 2, num_layers=3, num_heads=3, hidden_dim=24, mlp_dim=40, num_classes=3)
    >>> torch.allclose(small(x), comptlib.grow(small, large).eval()(x), atol=1e-5)
    True
    """
    from comptlib.family import family_of

    grower = family_of(source).grower(method, **kwargs)
    family_of(target)  # a target of an unknown type fails here with the registry's message
    if not grower.defers_init:
        grower.materialize(target)
    grower.validate(source, target)
    return grower.grow(source, target)


def require_growth(
    source: dict[str, int],
    target: dict[str, int],
    *,
    grow: tuple[str, ...],
    equal: tuple[str, ...] = (),
) -> None:
    """Raise :class:`GrowthError` naming the first dim that shrinks (``grow``) or differs (``equal``).

    Also raises when no ``grow`` dim gets larger: a chain must ascend.
    """
    for name in equal:
        if source[name] != target[name]:
            raise GrowthError(f"{name} must be equal along a chain, got {source[name]} -> {target[name]}")
    for name in grow:
        if target[name] < source[name]:
            raise GrowthError(f"{name} shrinks: {source[name]} -> {target[name]}")
    if all(target[name] == source[name] for name in grow):
        sizes = ", ".join(f"{n}={source[n]}" for n in grow)
        raise GrowthError(f"target is not larger than its source in any dimension ({sizes})")
