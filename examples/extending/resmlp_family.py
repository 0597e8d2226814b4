"""A family comptlib does not ship: a pre-RMSNorm residual MLP, registered and chained.

The model is plain PyTorch (no comptlib classes): an input projection, blocks
``x + fc2(gelu(fc1(norm(x))))`` and a final norm and head. The file defines the
three things a family needs, registers it, and trains a chain on scikit-learn's
digits:

- ``ResMLPGrower``: exact growth of width, MLP size and depth (zero-fill, as
  for RMSNorm decoders), and the paper's ``"compt"`` warm start;
- ``GramMSE``: a transferer that needs no projector (it compares the batch's
  pairwise feature similarities, which have the same shape at any width);
- ``RESMLP``: the registered ``Family``.

Run ``python examples/extending/resmlp_family.py``; ``--smoke`` checks it end
to end in seconds. ``tests/test_extending.py`` runs it and checks each part;
``docs/extending.md`` walks through it.

Measured on 2 CPU cores (16 s in all, shared with other jobs)::

    resmlp-0      14,986 params   600 steps  accuracy 0.975
    resmlp-1      62,986 params   112 steps  accuracy 0.975
    resmlp-2     290,314 params    75 steps  accuracy 0.978
    acceleration ratio (FLOPs): 5.70x
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from comptlib import Chain, Family, Grower, GrowthError, Outputs, Transferer, register_family
from comptlib.data import digits_loaders
from comptlib.families.classification import evaluate_classifier
from comptlib.ops import (
    Proj,
    ResidualStream,
    compt_copy,
    compt_depth_map,
    exact_depth_map,
    grow_norm,
    grow_reader,
    grow_writer,
    identity_block,
)


# -- the architecture: plain PyTorch ------------------------------------------------
class Block(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(width, eps=1e-6)
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class ResMLP(nn.Module):
    def __init__(self, width: int, depth: int, *, hidden: int | None = None, in_features: int = 192) -> None:
        super().__init__()
        self.embed = nn.Linear(in_features, width)
        self.blocks = nn.ModuleList(Block(width, hidden or 2 * width) for _ in range(depth))
        self.norm = nn.RMSNorm(width, eps=1e-6)
        self.head = nn.Linear(width, 10)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.embed(images.flatten(1))
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def resmlp_dims(model: ResMLP) -> dict[str, int]:
    return {
        "width": model.embed.out_features,
        "hidden": model.blocks[0].fc1.out_features,
        "depth": len(model.blocks),
        "in_features": model.embed.in_features,
    }


# -- the grower -----------------------------------------------------------------------
class ResMLPGrower(Grower):
    """Exact: the residual stream ``x`` becomes ``[x, 0]``; new blocks are identities.

    RMSNorm of ``[x, 0]`` is ``[RMSNorm(x), 0]`` once gamma on the old dims is
    scaled by ``sqrt(d/D)`` and eps by ``d/D``; new hidden units and new blocks
    write nothing (zero rows and columns in ``fc2``).
    """

    def validate(self, source: nn.Module, target: nn.Module) -> None:
        s, t = resmlp_dims(source), resmlp_dims(target)
        if s["in_features"] != t["in_features"]:
            raise GrowthError(f"in_features must be equal along a chain, got {s['in_features']} -> {t['in_features']}")
        for name in ("width", "hidden", "depth"):
            if t[name] < s[name]:
                raise GrowthError(f"{name} shrinks: {s[name]} -> {t[name]}")
        if s == t:
            raise GrowthError("target is not larger than its source")

    def feature_map(self, source: nn.Module, target: nn.Module) -> torch.Tensor | None:
        """Exact growth keeps the teacher's features in the student's first dims."""
        if not self.exact:
            return None
        d, big = resmlp_dims(source)["width"], resmlp_dims(target)["width"]
        return torch.eye(big, d)

    @torch.no_grad()
    def grow(self, source: nn.Module, target: nn.Module) -> nn.Module:
        if self.exact:
            self._grow_exact(source, target)
        else:
            self._grow_compt(source, target)
        return target

    def _grow_exact(self, source: ResMLP, target: ResMLP) -> None:
        writer = self.writer()  # writes each canvas, with the grower's noise only where the function allows
        stream = ResidualStream(resmlp_dims(source)["width"], resmlp_dims(target)["width"], "zero")
        inputs = torch.arange(source.embed.in_features)
        grow_writer(Proj.of(source.embed), Proj.of(target.embed), inputs, stream, writer)  # new dims start at 0
        for j, i in enumerate(exact_depth_map(len(source.blocks), len(target.blocks))):
            tb = target.blocks[j]
            if i is None:  # a new block: its residual branch writes nothing, so it is the identity
                identity_block(tb.parameters(), (tb.fc2.weight, tb.fc2.bias), writer)
                continue
            sb = source.blocks[i]
            grow_norm(sb.norm, tb.norm, stream, writer)  # gamma * sqrt(d/D), eps * d/D
            grow_reader(Proj.of(sb.fc1), Proj.of(tb.fc1), stream, writer)  # new units read through their init
            units = torch.arange(sb.fc1.out_features)
            grow_writer(Proj.of(sb.fc2), Proj.of(tb.fc2), units, stream, writer)  # new units and dims: no writes
        grow_norm(source.norm, target.norm, stream, writer)
        grow_reader(Proj.of(source.head), Proj.of(target.head), stream, writer)  # new columns read zeros

    def _grow_compt(self, source: ResMLP, target: ResMLP) -> None:
        """The paper's warm start: leading-corner copy of every tensor, blocks duplicated (l -> 2l, 2l+1)."""
        depth = compt_depth_map(len(source.blocks), len(target.blocks))
        compt_copy(source, target, [(source.blocks, target.blocks, depth)], self.writer())


# -- the objective, and a transferer ----------------------------------------------------
def resmlp_forward(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> Outputs:
    images, labels = batch
    features = model.features(images)
    logits = model.head(features)
    return Outputs(loss=F.cross_entropy(logits, labels), logits=logits, features=features)


class GramMSE(Transferer):
    """MSE between the batch's cosine-similarity matrices: width-free, so no projector."""

    def divergence(self, student: Outputs, teacher: Outputs) -> torch.Tensor:
        s = F.normalize(student.features, dim=-1)
        t = F.normalize(teacher.features.detach(), dim=-1)
        return F.mse_loss(s @ s.T, t @ t.T)


RESMLP = register_family(
    Family(
        name="resmlp",
        model_types=(ResMLP,),
        grower=ResMLPGrower,
        transferer=lambda: GramMSE(weight=10.0),
        forward=resmlp_forward,
        evaluate=evaluate_classifier,
        dims=resmlp_dims,
    )
)


def main(argv: Sequence[str] | None = None) -> Chain:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few steps per model, to check the script runs")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    train, val = digits_loaders(batch_size=64)
    models = [ResMLP(32, 2), ResMLP(64, 3), ResMLP(128, 4)]
    budgets = [30, 6, 4] if args.smoke else [600, 112, 75]  # 128 : 24 : 16
    chain = Chain(models, budgets=budgets, unit="steps", lr=3e-3, progress=False).fit(train, val)
    for record in chain.report_["models"]:
        print(
            f"{record['name']:10} {record['params']:>9,} params  {record['steps']:>4} steps  "
            f"accuracy {record['accuracy']:.3f}"
        )
    print(f"acceleration ratio (FLOPs): {chain.report_['acceleration_ratio']:.2f}x")
    return chain


if __name__ == "__main__":
    main()
