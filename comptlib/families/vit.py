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

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vision_transformer import EncoderBlock, VisionTransformer

from comptlib.families.classification import evaluate_classifier
from comptlib.family import Family, Outputs, register_family
from comptlib.grower import Grower, GrowthError, require_growth
from comptlib.ops import Canvas, compt_depth_map, exact_depth_map, head_dims, mean_rows, norm_scale
from comptlib.transferer import FeatureMSE

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


def build_vit(
    hidden_dim: int,
    num_layers: int,
    *,
    num_heads: int | None = None,
    mlp_dim: int | None = None,
    image_size: int = 8,
    patch_size: int = 2,
    num_classes: int = 10,
) -> VisionTransformer:
    """A torchvision ViT with head_dim 16 and an MLP twice as wide unless told otherwise.

    The defaults fit the 8x8 digits: 16 patches of 2x2 plus the class token.
    """
    return VisionTransformer(
        image_size,
        patch_size,
        num_layers=num_layers,
        num_heads=num_heads or max(hidden_dim // 16, 1),
        hidden_dim=hidden_dim,
        mlp_dim=mlp_dim or 2 * hidden_dim,
        num_classes=num_classes,
    )


def _blocks(model: VisionTransformer) -> list[EncoderBlock]:
    return list(model.encoder.layers)


class ViTGrower(Grower):
    """Grows a torchvision ``VisionTransformer`` in width, heads, MLP size and depth."""

    def validate(self, source: nn.Module, target: nn.Module) -> None:
        for role, model in (("source", source), ("target", target)):
            if not isinstance(model, VisionTransformer):
                raise TypeError(
                    f"ViTGrower needs torchvision VisionTransformer models, the {role} is {type(model).__name__}"
                )
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

    @torch.no_grad()
    def grow(self, source: nn.Module, target: nn.Module) -> nn.Module:
        self.validate(source, target)
        if self.exact:
            self._grow_exact(source, target)
        else:
            self._grow_compt(source, target)
        return target

    def feature_map(self, source: nn.Module, target: nn.Module) -> torch.Tensor | None:
        if not self.exact:
            return None
        d, big = source.hidden_dim, target.hidden_dim
        return torch.eye(big, d)

    # -- exact -----------------------------------------------------------------
    def _grow_exact(self, source: VisionTransformer, target: VisionTransformer) -> None:
        gen = self._generator()
        d, big = source.hidden_dim, target.hidden_dim

        def writer_rows(param: torch.Tensor, rows: torch.Tensor) -> None:
            canvas = Canvas(param)
            canvas.put(slice(None), mean_rows(rows, big))
            self._write(param, canvas, gen)

        def last_axis(x: torch.Tensor) -> torch.Tensor:
            return x.movedim(-1, 0)

        writer_rows(target.conv_proj.weight, source.conv_proj.weight)
        writer_rows(target.conv_proj.bias, source.conv_proj.bias)
        writer_rows(last_axis(target.class_token), last_axis(source.class_token))
        writer_rows(last_axis(target.encoder.pos_embedding), last_axis(source.encoder.pos_embedding))

        depth = exact_depth_map(len(source.encoder.layers), len(target.encoder.layers))
        src_blocks, tgt_blocks = _blocks(source), _blocks(target)
        for tb, idx in zip(tgt_blocks, depth):
            if idx is None:
                self._identity_block(tb, gen)
            else:
                self._exact_block(src_blocks[idx], tb, d, big, gen)
        self._exact_norm(source.encoder.ln, target.encoder.ln, gen)
        self._exact_heads(source, target, gen)

    def _exact_norm(self, src: nn.LayerNorm, tgt: nn.LayerNorm, gen: torch.Generator) -> None:
        d, big = src.normalized_shape[0], tgt.normalized_shape[0]
        gamma, beta = Canvas(tgt.weight), Canvas(tgt.bias)
        gamma.put(slice(0, d), src.weight * norm_scale(d, big))
        beta.put(slice(0, d), src.bias)
        beta.put(slice(d, big), 0.0)
        self._write(tgt.weight, gamma, gen)
        self._write(tgt.bias, beta, gen)
        tgt.eps = src.eps * d / big

    def _identity_block(self, tb: EncoderBlock, gen: torch.Generator) -> None:
        """A new block whose residual branches output zero: attention and MLP writers are zeroed."""
        writers = {id(p) for layer in (tb.self_attention.out_proj, tb.mlp[3]) for p in layer.parameters()}
        for param in tb.parameters():
            canvas = Canvas(param)
            if id(param) in writers:
                canvas.put(slice(None), 0.0)
            self._write(param, canvas, gen)  # every other entry is free: noise may go there

    def _exact_block(self, sb: EncoderBlock, tb: EncoderBlock, d: int, big: int, gen: torch.Generator) -> None:
        sa, ta = sb.self_attention, tb.self_attention
        h, heads = sa.num_heads, ta.num_heads
        hd, new_hd = d // h, big // heads
        placed = head_dims(torch.arange(h), torch.arange(hd), new_hd)
        gaps = head_dims(torch.arange(h), torch.arange(hd, new_hd), new_hd)
        unplaced = torch.ones(big, dtype=torch.bool)
        unplaced[placed] = False

        self._exact_norm(sb.ln_1, tb.ln_1, gen)
        self._exact_norm(sb.ln_2, tb.ln_2, gen)

        # Q, K, V are packed in one tensor: place each part (a view) per head.
        q_scale = (new_hd / hd) ** 0.5
        parts = zip(
            sa.in_proj_weight.chunk(3), sa.in_proj_bias.chunk(3), ta.in_proj_weight.chunk(3), ta.in_proj_bias.chunk(3)
        )
        for i, (ws, bs, wt, bt) in enumerate(parts):
            scale = q_scale if i == 0 else 1.0
            w, b = Canvas(wt), Canvas(bt)
            w.put((placed[:, None], torch.arange(d)[None, :]), ws * scale)
            b.put(placed, bs * scale)
            if i == 0 and len(gaps):  # new dims of old heads must not add to q.k
                w.put(gaps, 0.0)
                b.put(gaps, 0.0)
            self._write(wt, w, gen)
            self._write(bt, b, gen)

        w, b = Canvas(ta.out_proj.weight), Canvas(ta.out_proj.bias)
        w.put((torch.arange(d)[:, None], placed[None, :]), sa.out_proj.weight)
        w.put((slice(0, d), unplaced), 0.0)
        w.put(slice(d, big), w.data[:d].mean(0))
        b.put(slice(None), mean_rows(sa.out_proj.bias, big))
        self._write(ta.out_proj.weight, w, gen)
        self._write(ta.out_proj.bias, b, gen)

        fc1_s, fc2_s, fc1_t, fc2_t = sb.mlp[0], sb.mlp[3], tb.mlp[0], tb.mlp[3]
        m = fc1_s.out_features
        w, b = Canvas(fc1_t.weight), Canvas(fc1_t.bias)
        w.put((slice(0, m), slice(0, d)), fc1_s.weight)
        b.put(slice(0, m), fc1_s.bias)
        self._write(fc1_t.weight, w, gen)
        self._write(fc1_t.bias, b, gen)
        w, b = Canvas(fc2_t.weight), Canvas(fc2_t.bias)
        w.put((slice(0, d), slice(0, m)), fc2_s.weight)
        w.put((slice(0, d), slice(m, None)), 0.0)
        w.put(slice(d, big), w.data[:d].mean(0))
        b.put(slice(None), mean_rows(fc2_s.bias, big))
        self._write(fc2_t.weight, w, gen)
        self._write(fc2_t.bias, b, gen)

    def _exact_heads(self, source: VisionTransformer, target: VisionTransformer, gen: torch.Generator) -> None:
        """The first head layer reads the residual stream (old columns copied); later ones keep their size."""
        src_layers = [m for m in source.heads if isinstance(m, nn.Linear)]
        tgt_layers = [m for m in target.heads if isinstance(m, nn.Linear)]
        for i, (s_layer, t_layer) in enumerate(zip(src_layers, tgt_layers)):
            w, b = Canvas(t_layer.weight), Canvas(t_layer.bias)
            w.put((slice(None), slice(0, s_layer.in_features)) if i == 0 else slice(None), s_layer.weight)
            b.put(slice(None), s_layer.bias)
            self._write(t_layer.weight, w, gen)
            self._write(t_layer.bias, b, gen)

    # -- compt -----------------------------------------------------------------
    def _grow_compt(self, source: VisionTransformer, target: VisionTransformer) -> None:
        """Leading-corner copy of every tensor (Q, K, V split first) and block duplication."""
        gen = self._generator()
        depth = compt_depth_map(len(source.encoder.layers), len(target.encoder.layers))
        src = dict(source.named_parameters())
        for name, param in target.named_parameters():
            src_name = name
            if name.startswith("encoder.layers.encoder_layer_"):
                rest = name.removeprefix("encoder.layers.encoder_layer_")
                j, tail = rest.split(".", 1)
                src_name = f"encoder.layers.encoder_layer_{depth[int(j)]}.{tail}"
            value = src[src_name]
            if name.endswith(("in_proj_weight", "in_proj_bias")):  # split Q, K, V: never copy K into Q
                for t_part, s_part in zip(param.chunk(3), value.chunk(3)):
                    self._corner(t_part, s_part, gen)
            else:
                self._corner(param, value, gen)


def vit_forward(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> Outputs:
    """Classification cross-entropy; the features are the class token after the final LayerNorm."""
    images, labels = batch
    x = model._process_input(images)
    x = torch.cat([model.class_token.expand(x.shape[0], -1, -1), x], dim=1)
    features = model.encoder(x)[:, 0]
    logits = model.heads(features)
    return Outputs(loss=F.cross_entropy(logits, labels), logits=logits, features=features)


VIT = register_family(
    Family(
        name="vit",
        model_types=(VisionTransformer,),
        grower=ViTGrower,
        transferer=FeatureMSE,
        forward=vit_forward,
        evaluate=evaluate_classifier,
        dims=vit_dims,
    )
)
