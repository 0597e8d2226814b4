"""timm ``VisionTransformer``: a role map for :class:`~comptlib.families.transformer.TransformerGrower`.

Needs ``pip install 'comptlib[timm]'``. Everything the growth does is shared
with the other transformers; what is timm's own is where its tensors are:
``patch_embed.proj``, ``cls_token``, ``reg_token`` and ``pos_embed`` write
the residual stream, ``blocks[i].attn.qkv`` packs Q, K and V, the final norm
is ``norm`` (class-token pooling) or ``fc_norm`` (average pooling), and
``norm_pre`` (``pre_norm=True``, CLIP-style) makes the stream tiled, which
needs an integer width ratio. Layer scale, QK norm, attention-output norm,
gated attention and attention pooling are refused by exact growth (a warm
start copies them like any tensor).
"""

from __future__ import annotations

import torch
from timm.layers import Attention, Mlp
from timm.models.vision_transformer import Block as TimmBlock
from timm.models.vision_transformer import VisionTransformer, init_weights_vit_timm
from torch import nn

from comptlib.families.classification import classify, evaluate_classifier
from comptlib.families.transformer import Block, Embedding, Roles, Stack, TransformerGrower
from comptlib.family import Family, Outputs, register_family
from comptlib.grower import GrowthError, require_growth
from comptlib.ops import Proj
from comptlib.portable import Spec, path_of
from comptlib.transferer import no_transfer

_GROW = ("embed_dim", "num_heads", "mlp_dim", "depth")
_EQUAL = ("img_size", "patch_size", "in_chans", "num_classes", "num_prefix_tokens", "pre_norm")
_POOLS = ("token", "avg")


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm)


def timm_vit_dims(model: VisionTransformer) -> dict[str, int]:
    """The sizes of a timm ViT that a chain grows or keeps."""
    attn = model.blocks[0].attn
    return {
        "img_size": model.patch_embed.img_size[0],
        "patch_size": model.patch_embed.patch_size[0],
        "in_chans": model.patch_embed.proj.in_channels,
        "embed_dim": model.embed_dim,
        "num_heads": attn.num_heads,
        "head_dim": attn.head_dim,
        "mlp_dim": model.blocks[0].mlp.fc1.out_features,
        "depth": len(model.blocks),
        "num_classes": model.num_classes,
        "num_prefix_tokens": model.num_prefix_tokens,
        "pre_norm": int(_is_norm(model.norm_pre)),
    }


def build_timm_vit(
    width: int, depth: int, *, img_size: int = 8, patch_size: int = 2, num_classes: int = 10, **kw
) -> VisionTransformer:
    """A timm ViT with head_dim 16 and a 4x MLP, sized for the 8x8 digits by default; ``kw`` goes to timm."""
    return VisionTransformer(
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=width,
        depth=depth,
        num_heads=max(width // 16, 1),
        num_classes=num_classes,
        **kw,
    )


def timm_vit_spec(model: VisionTransformer) -> Spec:
    """The constructor call that rebuilds ``model``'s modules; layer scale and norm eps come from the weights and attributes."""
    dims, block = timm_vit_dims(model), model.blocks[0]
    hidden, width = dims["mlp_dim"], dims["embed_dim"]
    ratio = (
        hidden / width if int(width * (hidden / width)) == hidden else (hidden + 0.5) / width
    )  # timm: int(width * ratio)
    kwargs = {
        k: dims[k] for k in ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "num_heads", "depth")
    }
    kwargs |= {
        "mlp_ratio": ratio,
        "global_pool": model.global_pool,
        "class_token": model.has_class_token,
        "reg_tokens": model.num_reg_tokens,
        "no_embed_class": model.no_embed_class,
        "pre_norm": _is_norm(model.norm_pre),
        "final_norm": _is_norm(model.norm),
        "fc_norm": _is_norm(model.fc_norm),
        "qkv_bias": block.attn.qkv.bias is not None,
        "init_values": None if isinstance(block.ls1, nn.Identity) else 1.0,
    }
    return Spec(path_of(VisionTransformer), kwargs)


def _block(layer: TimmBlock) -> Block:
    attn = layer.attn
    q, k, v = Proj.packed(attn.qkv.weight, attn.qkv.bias)
    return Block(
        layer=layer,
        attn_norm=layer.norm1,
        q=q,
        k=k,
        v=v,
        o=Proj.of(attn.proj),
        mlp_norm=layer.norm2,
        readers=(Proj.of(layer.mlp.fc1),),
        down=Proj.of(layer.mlp.fc2),
        scaling=attn.scale,
    )


def _roles(model: VisionTransformer) -> Roles:
    """One stack; tiled under ``norm_pre``, mean-filled otherwise."""
    proj = model.patch_embed.proj
    writers = ((proj.weight, 0), (proj.bias, 0), (model.cls_token, 2), (model.reg_token, 2), (model.pos_embed, 2))
    embeds = tuple(Embedding(tensor, axis) for tensor, axis in writers if tensor is not None)
    attn = model.blocks[0].attn
    pre_norm = model.norm_pre if _is_norm(model.norm_pre) else None
    return Roles(
        stacks=(
            Stack(
                width=model.embed_dim,
                heads=(attn.num_heads, attn.num_heads),
                head_dim=attn.head_dim,
                embeds=embeds,
                blocks=tuple(_block(layer) for layer in model.blocks),
                norm=model.fc_norm if _is_norm(model.fc_norm) else model.norm,
                head=Proj.of(model.head) if isinstance(model.head, nn.Linear) else None,
                fill="tile" if pre_norm is not None else "mean",
                pre_norm=pre_norm,
            ),
        ),
        packed=lambda name: 0 if name.startswith("attn.qkv.") else None,
    )


def _unsupported(model: VisionTransformer) -> str | None:
    """What exact growth cannot keep in ``model``, or None."""
    if model.attn_pool is not None or model.global_pool not in _POOLS:
        return f"global_pool={model.global_pool!r}: only 'token' and 'avg' pooling keep the function"
    if model.dynamic_img_size or not isinstance(model.patch_embed.norm, nn.Identity):
        return "patch_embed: dynamic image size and a patch norm are not grown"
    if sum(_is_norm(n) for n in (model.norm, model.fc_norm)) != 1:
        return "norm/fc_norm: exactly one final LayerNorm is needed"
    for j, block in enumerate(model.blocks):
        attn = block.attn
        if type(block) is not TimmBlock or type(attn) is not Attention or not isinstance(block.mlp, Mlp):
            return f"blocks.{j}: only timm's Block with Attention and Mlp is grown ({type(block).__name__})"
        if not all(isinstance(m, nn.Identity) for m in (block.ls1, block.ls2)):
            return f"blocks.{j}: layer scale (init_values) is not grown exactly"
        extras = (attn.q_norm, attn.k_norm, attn.norm, block.mlp.norm)
        if not all(isinstance(m, nn.Identity) for m in extras) or attn.gate is not None:
            return f"blocks.{j}: QK norm, attention/MLP output norms and gated attention are not grown exactly"
    return None


class TimmViTGrower(TransformerGrower):
    """Grows a timm ``VisionTransformer`` in width, heads, MLP size and depth."""

    def init_module(self, model: nn.Module, name: str, module: nn.Module) -> None:
        """timm's default ViT init (``init_weights_vit_timm``), tokens and position embedding included."""
        if module is not model:
            init_weights_vit_timm(module, name)
            return
        for token, std in ((model.cls_token, 1e-6), (model.reg_token, 1e-6)):
            if token is not None:
                nn.init.normal_(token, std=std)
        if model.pos_embed is not None:
            nn.init.trunc_normal_(model.pos_embed, std=0.02)

    def roles(self, model: nn.Module) -> Roles:
        return _roles(model)

    def validate(self, source: nn.Module, target: nn.Module) -> None:
        self.require_type(source, target, VisionTransformer, "timm")
        s, t = timm_vit_dims(source), timm_vit_dims(target)
        require_growth(s, t, grow=_GROW, equal=_EQUAL)
        if not self.exact:
            return
        for role, model in (("source", source), ("target", target)):
            why = _unsupported(model)
            if why is not None:
                raise GrowthError(f"the {role}'s {why}; use method='compt'")
        if t["head_dim"] < s["head_dim"]:
            raise GrowthError(
                f"head_dim shrinks {s['head_dim']} -> {t['head_dim']}: source heads cannot be placed exactly; "
                f"use at most {t['embed_dim'] // s['head_dim']} heads or method='compt'"
            )
        if s["pre_norm"] and t["embed_dim"] % s["embed_dim"]:
            raise GrowthError(
                f"embed_dim {s['embed_dim']} -> {t['embed_dim']} is not an integer multiple: norm_pre writes the "
                f"residual stream, so it is tiled, which needs one; use a multiple of {s['embed_dim']} or method='compt'"
            )

    def feature_map(self, source: nn.Module, target: nn.Module) -> torch.Tensor | None:
        """Pre-logits features are ``[f, 0]`` after mean-fill and ``[f, ..., f]`` after tiling."""
        if not self.exact:
            return None
        (stream,) = self.streams(self.roles(source), self.roles(target))
        if stream.tile:
            return torch.eye(stream.d).repeat(stream.copies, 1) / stream.copies
        return torch.eye(stream.big, stream.d)


def timm_vit_forward(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> Outputs:
    """Classification cross-entropy; the features are the pooled, normalised tokens the head reads."""
    images, labels = batch
    return classify(model.forward_head(model.forward_features(images), pre_logits=True), model.head, labels)


TIMM_VIT = register_family(
    Family(
        name="timm_vit",
        model_types=(VisionTransformer,),
        grower=TimmViTGrower,
        transferer=no_transfer,  # measured best: see comptlib.transferer.no_transfer
        forward=timm_vit_forward,
        evaluate=evaluate_classifier,
        sample_means=True,  # accuracy and mean loss: ranks split the held-out set
        dims=timm_vit_dims,
        spec=timm_vit_spec,
    )
)
