"""Hugging Face ``CLIPModel``: growth of both towers, contrastive objective, distillation and retrieval evaluation.

This is the setting of the CoM-PT paper (CLIP pre-training), on Hugging Face's
CLIP built from a ``CLIPConfig``. Exact growth keeps the image and the text
embeddings in eval mode; each tower's residual stream is grown its own way:

* **text tower** (pre-LN, no norm before the first block): LEMON's mean-fill,
  ``[x, mean(x), ...]``, for any larger width, as in ``families/vit.py``;
  every LayerNorm then outputs ``[LN(x), 0]`` (gamma scaled by ``sqrt(d/D)``,
  eps by ``d/D``, also in the config);
* **vision tower**: Hugging Face applies ``pre_layrnorm`` to the embeddings
  before the first block. Its output on new dims is a per-dim constant, not
  each token's mean (unless its gamma is uniform), so mean-fill breaks there.
  The stream is tiled instead (HyperCloning): ``[x, x, ..., x]``, which keeps
  every LayerNorm's statistics, so gamma and beta are tiled and eps kept; a
  Linear reading the stream gets ``W/k`` on each of its ``k`` input blocks, a
  Linear writing it repeats its rows. This needs an integer width ratio ``k``;
  otherwise growth is refused unless ``approximate=True``, which mean-fills
  the vision tower too (the new dims after ``pre_layrnorm`` hold ``mean(beta)``
  instead of each token's mean) and :meth:`CLIPGrower.check` measures the error.
  Exact noise on the tiled stream cancels between copies: each copy's reader
  columns get ``W/k + n_c`` with ``sum_c n_c = 0``.

In both towers source heads keep their place (a larger head_dim is zero-padded
in Q, and Q rescaled for the new ``1/sqrt(head_dim)``); new heads, MLP units
and blocks get zero residual-writer entries. The projections read the grown
streams; a larger ``projection_dim`` gets zero new embedding dims, so the
embeddings become ``[e, 0]`` and :meth:`CLIPGrower.feature_map` is exact.
``logit_scale`` is copied.

The objective is CLIP's symmetric InfoNCE with the learned temperature in one
process (no cross-device gather). Features are ``[image_embeds, text_embeds]``
(each L2-normalised), which :class:`CLIPFeatureMSE` splits to compute the
paper's ``500 * [MSE(img) + MSE(txt)]``; :class:`CLIPLogitKL` distils the
image-text similarity distributions instead (or as well, with ``WeightedSum``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPConfig, CLIPModel
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

from comptlib.families.transformer import Block, Embedding, Roles, Stack, TransformerGrower
from comptlib.family import Family, Outputs, register_family
from comptlib.grower import GrowthCheck, GrowthError, Method, require_growth
from comptlib.image_text import EOS_ID, PAD_ID
from comptlib.ops import (
    Canvas,
    Proj,
    ResidualStream,
    Writer,
)
from comptlib.settings import non_negative, one_of, positive, setting
from comptlib.transferer import PROJECTORS, FeatureMSE, LogitKL, TransferConfig, Transferer

TOWERS = ("text", "vision")
_TOWER_GROW = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers")
_GROW = ("projection_dim", *(f"{t}_{k}" for t in TOWERS for k in _TOWER_GROW))
_EQUAL = ("text_vocab_size", "vision_image_size", "vision_patch_size", "vision_num_channels")
_SAME_CONFIG = ("hidden_act", "eos_token_id")  # per tower; absent ones compare as None
MAX_LOGIT_SCALE = math.log(100.0)
"""open_clip's clamp of the learned temperature: logits are at most 100 x cosine similarity."""


def clip_dims(model: CLIPModel) -> dict[str, int]:
    """The sizes of a CLIPModel that a chain grows (or keeps), per tower with a ``text_``/``vision_`` prefix."""
    dims = {"projection_dim": model.visual_projection.out_features}
    for tower in TOWERS:
        cfg = getattr(model, f"{tower}_model").config
        dims |= {f"{tower}_{k}": getattr(cfg, k) for k in _TOWER_GROW}
        dims[f"{tower}_head_dim"] = cfg.hidden_size // cfg.num_attention_heads
    text = model.text_model.embeddings
    vision = model.vision_model.config
    dims |= {
        "text_vocab_size": text.token_embedding.num_embeddings,
        "text_max_position_embeddings": text.position_embedding.num_embeddings,
        "vision_image_size": vision.image_size,
        "vision_patch_size": vision.patch_size,
        "vision_num_channels": vision.num_channels,
    }
    return dims


def _block(layer: CLIPEncoderLayer) -> Block:
    attn, mlp = layer.self_attn, layer.mlp
    return Block(
        layer=layer,
        attn_norm=layer.layer_norm1,
        q=Proj.of(attn.q_proj),
        k=Proj.of(attn.k_proj),
        v=Proj.of(attn.v_proj),
        o=Proj.of(attn.out_proj),
        mlp_norm=layer.layer_norm2,
        readers=(Proj.of(mlp.fc1),),
        down=Proj.of(mlp.fc2),
        scaling=attn.scale,
    )


def _stack(tower: nn.Module, embeds: tuple[Embedding, ...], norm: nn.LayerNorm, projection: nn.Linear) -> Stack:
    attn = tower.encoder.layers[0].self_attn
    return Stack(
        width=tower.config.hidden_size,
        heads=(attn.num_heads, attn.num_heads),
        head_dim=attn.head_dim,
        embeds=embeds,
        blocks=tuple(_block(layer) for layer in tower.encoder.layers),
        norm=norm,
        head=Proj.of(projection),
        pre_norm=getattr(tower, "pre_layrnorm", None),
    )


def _roles(model: CLIPModel) -> Roles:
    """Two stacks, text then vision; the vision tower's ``pre_layrnorm`` writes its residual stream."""
    text, vision = model.text_model, model.vision_model
    text_embeds = (
        Embedding(text.embeddings.token_embedding.weight, axis=1),
        Embedding(text.embeddings.position_embedding.weight, axis=1),
    )
    vision_embeds = (
        Embedding(vision.embeddings.patch_embedding.weight),
        Embedding(vision.embeddings.class_embedding),
        Embedding(vision.embeddings.position_embedding.weight, axis=1),
    )
    return Roles(
        stacks=(
            _stack(text, text_embeds, text.final_layer_norm, model.text_projection),
            _stack(vision, vision_embeds, vision.post_layernorm, model.visual_projection),
        )
    )


class CLIPGrower(TransformerGrower):
    """Grows a Hugging Face ``CLIPModel``: both towers in width, heads, MLP size and depth, and the projection.

    ``approximate=True`` lets a vision width grow by a non-integer ratio
    (mean-fill through ``pre_layrnorm``: not exact, :meth:`check` measures
    it); integer ratios stay exact either way.
    """

    def __init__(
        self, method: Method = "exact", *, noise: float = 0.0, seed: int | None = None, approximate: bool = False
    ) -> None:
        super().__init__(method, noise=noise, seed=seed)
        self.approximate = approximate

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(method={self.method!r}, noise={self.noise}, seed={self.seed}, "
            f"approximate={self.approximate})"
        )

    def validate(self, source: nn.Module, target: nn.Module) -> None:
        self.require_type(source, target, CLIPModel, "transformers")
        s, t = clip_dims(source), clip_dims(target)
        require_growth(s, t, grow=_GROW, equal=_EQUAL)
        if t["text_max_position_embeddings"] < s["text_max_position_embeddings"]:
            raise GrowthError(
                f"text_max_position_embeddings shrinks: {s['text_max_position_embeddings']} -> "
                f"{t['text_max_position_embeddings']}"
            )
        for tower in TOWERS:
            for key in _SAME_CONFIG:
                a, b = (getattr(getattr(m, f"{tower}_model").config, key, None) for m in (source, target))
                if a != b:
                    raise GrowthError(f"{tower}_{key} must be equal along a chain, got {a!r} -> {b!r}")
        if not self.exact:
            return
        for tower in TOWERS:
            key = f"{tower}_head_dim"
            if t[key] < s[key]:
                raise GrowthError(
                    f"{key} shrinks {s[key]} -> {t[key]}: source heads cannot be placed exactly; use at most "
                    f"{t[f'{tower}_hidden_size'] // s[key]} heads or method='compt'"
                )
        d, big = s["vision_hidden_size"], t["vision_hidden_size"]
        if big % d and not self.approximate:
            raise GrowthError(
                f"vision_hidden_size {d} -> {big} is not an integer multiple: Hugging Face CLIP normalises the "
                f"vision embeddings (pre_layrnorm) before the first block, so LEMON's mean-fill cannot keep the "
                f"function there, and exact growth tiles the stream instead, which needs an integer ratio; use a "
                f"multiple of {d}, pass approximate=True (check() measures the error) or use method='compt'"
            )

    def keeps_function(self, source: nn.Module, target: nn.Module) -> bool:
        """False after an approximate (non-integer) vision width growth."""
        return self.exact and clip_dims(target)["vision_hidden_size"] % clip_dims(source)["vision_hidden_size"] == 0

    def feature_map(self, source: nn.Module, target: nn.Module) -> torch.Tensor | None:
        """After exact growth each embedding is ``[e, 0]``: the map of ``[img, txt]`` is block-diagonal.

        After an approximate vision growth the map is approximate too.
        """
        if not self.exact:
            return None
        eye = torch.eye(clip_dims(target)["projection_dim"], clip_dims(source)["projection_dim"])
        return torch.block_diag(eye, eye)

    @torch.no_grad()
    def check_towers(
        self, source: nn.Module, target: nn.Module, inputs: Mapping[str, torch.Tensor]
    ) -> dict[str, GrowthCheck]:
        """Max absolute and relative difference of the image and of the text embeddings, in eval mode.

        ``inputs`` holds ``pixel_values``, ``input_ids`` and optionally
        ``attention_mask``. The source's embeddings are zero-padded to a larger
        ``projection_dim``, so new embedding dims must come out 0.
        """
        modes = source.training, target.training
        source.eval()
        target.eval()
        try:
            pairs = zip(("image", "text"), _embeddings(source, inputs), _embeddings(target, inputs))
            exact = self.keeps_function(source, target)
            checks = {}
            for name, a, b in pairs:
                a = F.pad(a.float(), (0, b.shape[-1] - a.shape[-1]))
                diff = (a - b.float()).abs().max().item()
                rel = diff / max(a.abs().max().item(), 1e-12)
                checks[name] = GrowthCheck(max_abs=diff, max_rel=rel, method=self.method, exact=exact)
        finally:
            source.train(modes[0])
            target.train(modes[1])
        return checks

    def check(self, source: nn.Module, target: nn.Module, inputs: Mapping[str, torch.Tensor]) -> GrowthCheck:
        """The worse of :meth:`check_towers`' image and text checks."""
        return max(self.check_towers(source, target, inputs).values(), key=lambda c: c.max_rel)

    def roles(self, model: nn.Module) -> Roles:
        return _roles(model)

    def streams(self, source: Roles, target: Roles) -> tuple[ResidualStream, ...]:
        """The text stream is mean-filled; the vision stream is tiled, or mean-filled when only an
        approximation exists (non-integer ratio)."""
        (st, sv), (tt, tv) = source.stacks, target.stacks
        vision = "tile" if tv.width % sv.width == 0 else "mean"
        return ResidualStream(st.width, tt.width, "mean"), ResidualStream(sv.width, tv.width, vision)

    def finish_exact(
        self, source: nn.Module, target: nn.Module, streams: Sequence[ResidualStream], writer: Writer
    ) -> None:
        """Every LayerNorm of a tower (and its config) gets the tower's eps; ``logit_scale`` is copied."""
        for tower, stream in zip(TOWERS, streams):
            s_model, t_model = getattr(source, f"{tower}_model"), getattr(target, f"{tower}_model")
            eps = s_model.config.layer_norm_eps * stream.eps_scale
            t_model.config.layer_norm_eps = eps
            for module in t_model.modules():
                if isinstance(module, nn.LayerNorm):
                    module.eps = eps
        Canvas(target.logit_scale).put((), source.logit_scale)  # 0-dim: () is all of it


def _embeddings(model: CLIPModel, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The projected (not yet normalised) image and text embeddings of one batch."""
    image = model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
    text = model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
    return image, text.pooler_output


def clip_loss(logits_per_image: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: image i matches text i among the batch, and text i matches image i."""
    labels = torch.arange(len(logits_per_image), device=logits_per_image.device)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_image.T, labels)) / 2


def clip_forward(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> Outputs:
    """CLIP's contrastive loss with the learned temperature (clamped at 100, as open_clip does).

    ``logits`` are the image-to-text logits ``(B, B)``; ``features`` are
    ``[normalised image embeds, normalised text embeds]``, each of
    ``projection_dim``, which :class:`CLIPFeatureMSE` splits.
    """
    image, text = (F.normalize(e, dim=-1) for e in _embeddings(model, batch))
    logits = model.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp() * image @ text.T
    return Outputs(loss=clip_loss(logits), logits=logits, features=torch.cat([image, text], dim=-1))


def _half(out: Outputs, part: int) -> Outputs:
    """The image (0) or text (1) embedding of :func:`clip_forward`'s features, as a one-embedding output."""
    return attrs.evolve(out, features=out.features.chunk(2, dim=-1)[part])


def _transposed(out: Outputs) -> Outputs:
    return attrs.evolve(out, logits=out.logits.T)


@attrs.frozen(kw_only=True)
class CLIPFeatureMSEConfig(TransferConfig):
    weight: float = setting(500.0, "Loss weight (the paper's 500).", non_negative)
    projector: str = setting("auto", "auto, linear or fixed, per modality.", one_of(*PROJECTORS))

    def build(self) -> CLIPFeatureMSE:
        return CLIPFeatureMSE(**attrs.asdict(self))


class CLIPFeatureMSE(Transferer):
    """The paper's CLIP loss: ``weight * [MSE(norm(s_img), norm(t_img)) + MSE(norm(s_txt), norm(t_txt))]``.

    Each embedding is one :class:`FeatureMSE` term: a trainable projector per
    modality when the embedding sizes differ, or the grower's fixed map
    (its diagonal blocks) after exact growth.
    """

    Config = CLIPFeatureMSEConfig

    def __init__(
        self,
        weight: float = 500.0,
        *,
        projector: str = "auto",
        schedule: str = "constant",
        decay_steps: int | None = None,
    ) -> None:
        super().__init__(weight, schedule, decay_steps, projector=projector)
        self.image = FeatureMSE(1.0, projector=projector)
        self.text = FeatureMSE(1.0, projector=projector)

    def setup(self, student: Outputs, teacher: Outputs, feature_map: torch.Tensor | None = None) -> None:
        for part, term in enumerate((self.image, self.text)):
            block = None if feature_map is None else feature_map.chunk(2, dim=0)[part].chunk(2, dim=1)[part]
            term.setup(_half(student, part), _half(teacher, part), block)

    def divergence(self, student: Outputs, teacher: Outputs) -> torch.Tensor:
        terms = enumerate((self.image, self.text))
        return sum(term.divergence(_half(student, part), _half(teacher, part)) for part, term in terms)


@attrs.frozen(kw_only=True)
class CLIPLogitKLConfig(TransferConfig):
    temperature: float = setting(1.0, "Softmax temperature.", positive)

    def build(self) -> CLIPLogitKL:
        return CLIPLogitKL(**attrs.asdict(self))


class CLIPLogitKL(Transferer):
    """Cross-modal distillation: KL from the teacher's to the student's image-to-text and text-to-image
    similarity distributions over the batch, averaged (each model at its own learned temperature)."""

    Config = CLIPLogitKLConfig

    def __init__(
        self,
        weight: float = 1.0,
        *,
        temperature: float = 1.0,
        schedule: str = "constant",
        decay_steps: int | None = None,
    ) -> None:
        super().__init__(weight, schedule, decay_steps, temperature=temperature)
        self.kl = LogitKL(1.0, temperature=temperature)

    def divergence(self, student: Outputs, teacher: Outputs) -> torch.Tensor:
        image_to_text = self.kl.divergence(student, teacher)
        text_to_image = self.kl.divergence(_transposed(student), _transposed(teacher))
        return (image_to_text + text_to_image) / 2


# -- evaluation -----------------------------------------------------------------
def retrieval_metrics(image: torch.Tensor, text: torch.Tensor, ks: Iterable[int] = (1, 5)) -> dict[str, float]:
    """Image-to-text and text-to-image recall@k where pair i is the only match of i.

    Ties count against the match (a text scoring as high as the true one ranks
    before it), so constant embeddings do not score perfectly.
    """
    sim = F.normalize(image.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T
    out = {}
    for name, s in (("i2t", sim), ("t2i", sim.T)):
        rank = (s >= s.diagonal()[:, None]).sum(1) - 1
        out |= {f"{name}_recall@{k}": (rank < k).float().mean().item() for k in ks}
    for k in ks:
        out[f"recall@{k}"] = (out[f"i2t_recall@{k}"] + out[f"t2i_recall@{k}"]) / 2
    return out


@torch.no_grad()
def evaluate_clip(
    model: nn.Module, loader: Iterable[Mapping[str, torch.Tensor]], device: torch.device
) -> dict[str, float]:
    """Retrieval recall@1/@5 (both directions and their mean) over the whole held-out set, in eval mode,
    and, when batches carry ``prompt_ids``, zero-shot accuracy with the held-out captions as classes.

    A class embedding is the normalised mean of the normalised embeddings of
    its caption in every template (``prompt_ids`` ``(B, templates, L)``).
    """
    was_training = model.training
    model.eval()
    images, texts, classes = [], [], []
    try:
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            image, text = _embeddings(model, batch)
            images.append(image)
            texts.append(text)
            if "prompt_ids" in batch:
                n, templates, length = batch["prompt_ids"].shape
                prompts = {"input_ids": batch["prompt_ids"].view(-1, length)}
                prompts["attention_mask"] = batch["prompt_mask"].view(-1, length)
                embeds = F.normalize(model.get_text_features(**prompts).pooler_output, dim=-1)
                classes.append(F.normalize(embeds.view(n, templates, -1).mean(1), dim=-1))
    finally:
        model.train(was_training)
    if not images:
        raise ValueError("the evaluation loader yielded no samples")
    image = torch.cat(images)
    out = retrieval_metrics(image, torch.cat(texts))
    if classes:
        if len(classes) != len(images):
            raise ValueError("prompt_ids is in some batches only: give it in every batch or none")
        out["zero_shot_accuracy"] = retrieval_metrics(image, torch.cat(classes), ks=(1,))["i2t_recall@1"]
    return out


# -- builder ----------------------------------------------------------------------
HEAD_DIM = 16


def build_clip(
    width: int,
    depth: int,
    *,
    vocab_size: int,
    max_length: int = 32,
    image_size: int = 32,
    patch_size: int = 4,
    projection_dim: int = 64,
) -> CLIPModel:
    """A tiny CLIPModel whose towers both have ``width``, ``depth`` blocks, head_dim 16 and a 4x MLP.

    The text side fits :class:`comptlib.image_text.WordTokenizer` (pad 0,
    end-of-text 1). Chains keep ``projection_dim``, so the embeddings keep
    their size, and grow ``width`` by integer factors, so the vision tower
    grows exactly.

    >>> build_clip(32, 2, vocab_size=100).config.vision_config.num_attention_heads
    2
    """
    tower = {
        "hidden_size": width,
        "intermediate_size": 4 * width,
        "num_hidden_layers": depth,
        "num_attention_heads": max(width // HEAD_DIM, 1),
    }
    text = {
        **tower,
        "vocab_size": vocab_size,
        "max_position_embeddings": max_length,
        "pad_token_id": PAD_ID,
        "eos_token_id": EOS_ID,
        "bos_token_id": None,
    }
    vision = {**tower, "image_size": image_size, "patch_size": patch_size}
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim))


CLIP = register_family(
    Family(
        name="clip",
        model_types=(CLIPModel,),
        grower=CLIPGrower,
        transferer=CLIPFeatureMSE,
        forward=clip_forward,
        evaluate=evaluate_clip,
        dims=clip_dims,
        metric="recall@5",
    )
)
