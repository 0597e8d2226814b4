"""torchvision ``VisionTransformer``: growth, feature tap and classification objective.

Exact growth follows LEMON's mean-fill for pre-LN transformers: the residual
stream ``x`` of width ``d`` becomes ``[x, mean(x), ..., mean(x)]`` of width
``D``, every LayerNorm then outputs ``[LN(x), 0]`` (gamma scaled by
``sqrt(d/D)``, eps by ``d/D``), so any larger width works, integer ratio or
not. Source heads keep their place (a larger head_dim is zero-padded in Q and
Q is rescaled for the new ``1/sqrt(head_dim)``), new heads and MLP units get
zero output columns, and new blocks get zero residual writers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision.models.vision_transformer import Encoder, VisionTransformer

from comptlib.families.classification import classify, evaluate_classifier
from comptlib.families.transformer import Block, Embedding, Roles, Stack, TransformerGrower
from comptlib.family import Family, Outputs, register_family
from comptlib.grower import GrowthError, require_growth
from comptlib.ops import HeadPlan, Proj, ResidualStream, Writer, corner
from comptlib.portable import Spec, path_of
from comptlib.transferer import no_transfer

_GROW = ("hidden_dim", "num_heads", "mlp_dim", "num_layers")
_EQUAL = ("image_size", "patch_size", "num_classes", "in_channels", "representation_size")


def vit_dims(model: VisionTransformer) -> dict[str, int]:
    """The sizes of a torchvision ViT that a chain grows or keeps."""
    attn = model.encoder.layers[0].self_attention
    conv = model.conv_proj
    return {
        "image_size": model.image_size,
        "patch_size": model.patch_size,
        "hidden_dim": model.hidden_dim,
        "num_heads": attn.num_heads,
        "head_dim": model.hidden_dim // attn.num_heads,
        "mlp_dim": model.mlp_dim,
        "num_layers": len(model.encoder.layers),
        "num_classes": model.num_classes,
        "in_channels": conv.in_channels if isinstance(conv, nn.Conv2d) else -1,
        "representation_size": model.representation_size or 0,
    }


def vision_transformer(*, in_channels: int = 3, **kwargs: Any) -> VisionTransformer:
    """torchvision's ``VisionTransformer`` reading ``in_channels`` channels (1: grey images).

    torchvision's patch embedding reads RGB; this swaps in the same conv for
    other channel counts, initialised by torchvision's rule, so grey images
    are read as they are instead of repeated into three channels.
    """
    model = VisionTransformer(**kwargs)
    if in_channels != 3:
        conv = model.conv_proj
        model.conv_proj = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride)
        fan_in = in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        nn.init.trunc_normal_(model.conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(model.conv_proj.bias)
    return model


def build_vit(
    hidden_dim: int,
    num_layers: int,
    *,
    num_heads: int | None = None,
    mlp_dim: int | None = None,
    image_size: int = 8,
    patch_size: int = 2,
    num_classes: int = 10,
    in_channels: int = 3,
) -> VisionTransformer:
    """A torchvision ViT with head_dim 16 and an MLP twice as wide unless told otherwise.

    The defaults fit the 8x8 digits: 16 patches of 2x2 plus the class token.
    """
    return vision_transformer(
        image_size=image_size,
        patch_size=patch_size,
        num_layers=num_layers,
        num_heads=num_heads or max(hidden_dim // 16, 1),
        hidden_dim=hidden_dim,
        mlp_dim=mlp_dim or 2 * hidden_dim,
        num_classes=num_classes,
        in_channels=in_channels,
    )


def vit_spec(model: VisionTransformer) -> Spec:
    """The constructor call that rebuilds ``model``'s modules (a grown eps is saved as a changed attribute)."""
    dims = vit_dims(model)
    keys = ("image_size", "patch_size", "num_heads", "hidden_dim", "mlp_dim", "num_classes")
    kwargs = {k: dims[k] for k in keys} | {"num_layers": dims["num_layers"]}
    kwargs |= {"dropout": model.dropout, "attention_dropout": model.attention_dropout}
    kwargs |= {"representation_size": model.representation_size}
    if dims["in_channels"] == 3:  # torchvision's own class rebuilds it
        return Spec(path_of(VisionTransformer), kwargs)
    return Spec(path_of(vision_transformer), kwargs | {"in_channels": dims["in_channels"]})


def _roles(model: VisionTransformer) -> Roles:
    """A torchvision ViT as one mean-filled stack; Q, K and V are packed in ``in_proj_weight``."""
    d, blocks = model.hidden_dim, []
    for layer in model.encoder.layers:
        attn = layer.self_attention
        q, k, v = Proj.packed(attn.in_proj_weight, attn.in_proj_bias)
        blocks.append(
            Block(
                layer=layer,
                attn_norm=layer.ln_1,
                q=q,
                k=k,
                v=v,
                o=Proj.of(attn.out_proj),
                mlp_norm=layer.ln_2,
                readers=(Proj.of(layer.mlp[0]),),
                down=Proj.of(layer.mlp[3]),
                scaling=(d // attn.num_heads) ** -0.5,
            )
        )
    conv = model.conv_proj
    embeds = (conv.weight, conv.bias, model.class_token.movedim(-1, 0), model.encoder.pos_embedding.movedim(-1, 0))
    heads = model.encoder.layers[0].self_attention.num_heads
    return Roles(
        stacks=(
            Stack(
                width=d,
                heads=(heads, heads),
                head_dim=d // heads,
                embeds=tuple(Embedding(e) for e in embeds),
                blocks=tuple(blocks),
                norm=model.encoder.ln,
                head=Proj.of(_head_layers(model)[0]),
            ),
        ),
        packed=lambda name: 0 if name.endswith(("in_proj_weight", "in_proj_bias")) else None,
    )


def _head_layers(model: VisionTransformer) -> list[nn.Linear]:
    return [m for m in model.heads if isinstance(m, nn.Linear)]


class ViTGrower(TransformerGrower):
    """Grows a torchvision ``VisionTransformer`` in width, heads, MLP size and depth."""

    def roles(self, model: nn.Module) -> Roles:
        return _roles(model)

    def validate(self, source: nn.Module, target: nn.Module) -> None:
        self.require_type(source, target, VisionTransformer, "torchvision")
        for role, model in (("source", source), ("target", target)):
            if not isinstance(model.conv_proj, nn.Conv2d):
                raise GrowthError(f"conv_stem: the {role} uses a convolutional stem, which ViTGrower does not grow")
        s, t = vit_dims(source), vit_dims(target)
        require_growth(s, t, grow=_GROW, equal=_EQUAL)
        if self.exact and t["head_dim"] < s["head_dim"]:
            raise GrowthError(
                f"head_dim shrinks {s['head_dim']} -> {t['head_dim']} (hidden_dim {s['hidden_dim']} -> {t['hidden_dim']}, "
                f"num_heads {s['num_heads']} -> {t['num_heads']}): source heads cannot be placed exactly; "
                f"use at most {t['hidden_dim'] // s['head_dim']} heads or method='compt'"
            )

    def init_module(self, model: nn.Module, name: str, module: nn.Module) -> None:
        """torchvision's ViT init: xavier MLPs, a fan-in patch embedding, zero class token and head."""
        if isinstance(module, nn.Linear) and name.rpartition(".")[0].endswith(".mlp"):
            nn.init.xavier_uniform_(module.weight)  # what MLPBlock sets, in place of Linear's own init
            nn.init.normal_(module.bias, std=1e-6)
            return
        super().init_module(model, name, module)
        if isinstance(module, Encoder):
            nn.init.normal_(module.pos_embedding, std=0.02)
        elif module is model:
            conv = model.conv_proj
            if isinstance(conv, nn.Conv2d):  # a convolutional stem keeps PyTorch's init (growth refuses it)
                nn.init.trunc_normal_(conv.weight, std=math.sqrt(1 / (conv.in_channels * math.prod(conv.kernel_size))))
                nn.init.zeros_(conv.bias)
            nn.init.zeros_(model.class_token)
            pre_logits = getattr(model.heads, "pre_logits", None)
            if isinstance(pre_logits, nn.Linear):
                nn.init.trunc_normal_(pre_logits.weight, std=math.sqrt(1 / pre_logits.in_features))
                nn.init.zeros_(pre_logits.bias)
            nn.init.zeros_(model.heads.head.weight)
            nn.init.zeros_(model.heads.head.bias)

    def feature_map(self, source: nn.Module, target: nn.Module) -> torch.Tensor | None:
        if not self.exact:
            return None
        d, big = source.hidden_dim, target.hidden_dim
        return torch.eye(big, d)

    def q_scale(self, source: Block, target: Block, plan: HeadPlan) -> float:
        """``sqrt(new_head_dim / head_dim)``: the same value as the default's ratio of scales, to within rounding."""
        return (plan.new_head_dim / plan.head_dim) ** 0.5

    def finish_exact(
        self, source: nn.Module, target: nn.Module, streams: Sequence[ResidualStream], writer: Writer
    ) -> None:
        """Head layers after the first (``representation_size``) keep their size: copied whole."""
        for s_layer, t_layer in zip(_head_layers(source)[1:], _head_layers(target)[1:]):
            corner(t_layer.weight, s_layer.weight, writer)
            corner(t_layer.bias, s_layer.bias, writer)


def vit_forward(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> Outputs:
    """Classification cross-entropy; the features are the class token after the final LayerNorm."""
    images, labels = batch
    x = model._process_input(images)
    x = torch.cat([model.class_token.expand(x.shape[0], -1, -1), x], dim=1)
    return classify(model.encoder(x)[:, 0], model.heads, labels)


VIT = register_family(
    Family(
        name="vit",
        model_types=(VisionTransformer,),
        grower=ViTGrower,
        transferer=no_transfer,  # measured best: see comptlib.transferer.no_transfer
        forward=vit_forward,
        evaluate=evaluate_classifier,
        sample_means=True,  # accuracy and mean loss: ranks split the held-out set
        dims=vit_dims,
        spec=vit_spec,
    )
)
