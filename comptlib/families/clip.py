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
import re
from collections.abc import Iterable, Mapping

import attrs
import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPConfig, CLIPModel
from transformers.models.clip.modeling_clip import CLIPEncoder, CLIPEncoderLayer

from comptlib.family import Family, Outputs, register_family
from comptlib.grower import Grower, GrowthCheck, GrowthError, Method, require_growth
from comptlib.image_text import EOS_ID, PAD_ID
from comptlib.ops import Canvas, compt_depth_map, exact_depth_map, head_dims, mean_rows, norm_scale
from comptlib.settings import non_negative, one_of, positive, setting
from comptlib.transferer import PROJECTORS, FeatureMSE, LogitKL, TransferConfig, Transferer

TOWERS = ("text", "vision")
_TOWER_GROW = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers")
_GROW = ("projection_dim", *(f"{t}_{k}" for t in TOWERS for k in _TOWER_GROW))
_EQUAL = ("text_vocab_size", "vision_image_size", "vision_patch_size", "vision_num_channels")
_SAME_CONFIG = ("hidden_act", "eos_token_id")  # per tower; absent ones compare as None
MAX_LOGIT_SCALE = math.log(100.0)
"""open_clip's clamp of the learned temperature: logits are at most 100 x cosine similarity."""
_LAYER = re.compile(r"^(text|vision)_model\.encoder\.layers\.(\d+)\.")


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


@attrs.frozen
class _Stream:
    """Where a source residual stream of width ``d`` sits in a target stream of width ``big``.

    Mean-fill (LEMON) keeps ``[x, mean(x), ...]``; tiling (HyperCloning) keeps
    ``[x, x, ..., x]`` with copy ``c`` at dims ``c*d ... (c+1)*d - 1``.
    """

    d: int
    big: int
    tile: bool

    @property
    def copies(self) -> int:
        return self.big // self.d

    @property
    def eps_scale(self) -> float:
        """Mean-fill shrinks the variance by ``d/big``, tiling keeps it."""
        return 1.0 if self.tile else self.d / self.big

    def fill(self, rows: torch.Tensor) -> torch.Tensor:
        """A residual writer's ``(d, ...)`` rows as the target's ``(big, ...)``."""
        if self.tile:
            return rows.repeat(self.copies, *(1,) * (rows.dim() - 1))
        return mean_rows(rows, self.big)

    def read(self, weight: torch.Tensor, noise: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A residual reader's ``(out, d)`` weight as target input columns and their values.

        Mean-fill writes the old columns only: the others read the zeros a
        LayerNorm outputs on new dims, so they are free. Tiling spreads ``W``
        over the ``k`` copies as ``W/k`` each, plus noise that sums to 0 over
        the copies (so the copies can drift apart in training).
        """
        if not self.tile:
            return torch.arange(self.d), weight
        share = weight / self.copies
        blocks = share.expand(self.copies, *share.shape)
        if noise:
            eps = torch.randn(blocks.shape, generator=gen) * (noise * share.float().std().item())
            blocks = blocks + (eps - eps.mean(0)).to(share)
        return torch.arange(self.big), blocks.permute(1, 0, 2).reshape(weight.shape[0], self.big)


class CLIPGrower(Grower):
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
        for role, model in (("source", source), ("target", target)):
            if not isinstance(model, CLIPModel):
                raise TypeError(f"CLIPGrower needs transformers CLIPModel models, the {role} is {type(model).__name__}")
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
    def grow(self, source: nn.Module, target: nn.Module) -> nn.Module:
        self.validate(source, target)
        if self.exact:
            self._grow_exact(source, target)
        else:
            self._grow_compt(source, target)
        return target

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

    # -- exact -----------------------------------------------------------------
    def _streams(self, source: CLIPModel, target: CLIPModel) -> tuple[_Stream, _Stream]:
        """The text stream is mean-filled; the vision stream is tiled, or mean-filled when only an
        approximation exists (non-integer ratio)."""
        s, t = clip_dims(source), clip_dims(target)
        d, big = s["vision_hidden_size"], t["vision_hidden_size"]
        return _Stream(s["text_hidden_size"], t["text_hidden_size"], tile=False), _Stream(d, big, tile=big % d == 0)

    def _grow_exact(self, source: CLIPModel, target: CLIPModel) -> None:
        gen = self._generator()
        text, vision = self._streams(source, target)
        st, tt = source.text_model, target.text_model
        self._embed(st.embeddings.token_embedding.weight, tt.embeddings.token_embedding.weight, text, gen, 1)
        self._embed(st.embeddings.position_embedding.weight, tt.embeddings.position_embedding.weight, text, gen, 1)
        sv, tv = source.vision_model, target.vision_model
        self._embed(sv.embeddings.patch_embedding.weight, tv.embeddings.patch_embedding.weight, vision, gen, 0)
        self._embed(sv.embeddings.class_embedding, tv.embeddings.class_embedding, vision, gen, 0)
        self._embed(sv.embeddings.position_embedding.weight, tv.embeddings.position_embedding.weight, vision, gen, 1)
        self._norm(sv.pre_layrnorm, tv.pre_layrnorm, vision, gen, writes_residual=True)

        towers = (
            (st, tt, st.final_layer_norm, tt.final_layer_norm, source.text_projection, target.text_projection),
            (sv, tv, sv.post_layernorm, tv.post_layernorm, source.visual_projection, target.visual_projection),
        )
        for stream, (s_model, t_model, s_norm, t_norm, s_proj, t_proj) in zip((text, vision), towers):
            self._encoder(s_model.encoder, t_model.encoder, stream, gen)
            self._norm(s_norm, t_norm, stream, gen)
            width = s_proj.out_features
            self._read(s_proj, t_proj, torch.arange(width), stream, gen, zero=torch.arange(width, t_proj.out_features))
            eps = s_model.config.layer_norm_eps * stream.eps_scale
            t_model.config.layer_norm_eps = eps
            for module in t_model.modules():
                if isinstance(module, nn.LayerNorm):
                    module.eps = eps
        target.logit_scale.copy_(source.logit_scale)

    def _embed(self, src: torch.Tensor, tgt: torch.Tensor, stream: _Stream, gen: torch.Generator, axis: int) -> None:
        """An embedding (a residual writer along ``axis``); target rows past the source's (positions) are free."""
        values = stream.fill(src.movedim(axis, 0)).movedim(0, axis)
        canvas = Canvas(tgt)
        canvas.put(tuple(slice(0, n) for n in values.shape), values)
        self._write(tgt, canvas, gen)

    def _norm(
        self, src: nn.LayerNorm, tgt: nn.LayerNorm, stream: _Stream, gen: torch.Generator, writes_residual: bool = False
    ) -> None:
        """Tiling tiles gamma and beta. Mean-fill scales the old gammas by ``sqrt(d/D)``; new gammas are free
        (they scale zeros) and new betas 0, or ``mean(beta)`` for a norm whose output is the residual stream."""
        gamma, beta = Canvas(tgt.weight), Canvas(tgt.bias)
        if stream.tile:
            gamma.put(slice(None), stream.fill(src.weight))
            beta.put(slice(None), stream.fill(src.bias))
        else:
            gamma.put(slice(0, stream.d), src.weight * norm_scale(stream.d, stream.big))
            new_beta = stream.fill(src.bias) if writes_residual else F.pad(src.bias, (0, stream.big - stream.d))
            beta.put(slice(None), new_beta)
        self._write(tgt.weight, gamma, gen)
        self._write(tgt.bias, beta, gen)

    def _read(
        self,
        src: nn.Linear,
        tgt: nn.Linear,
        rows: torch.Tensor,
        stream: _Stream,
        gen: torch.Generator,
        scale: float = 1.0,
        zero: torch.Tensor | None = None,
    ) -> None:
        """A Linear reading the residual stream: source outputs go to ``rows``, ``zero`` rows are zeroed."""
        cols, values = stream.read(src.weight * scale, self.noise, gen)
        parts = [(tgt.weight, Canvas(tgt.weight))]
        parts[0][1].put((rows[:, None], cols[None, :]), values)
        if tgt.bias is not None:
            parts.append((tgt.bias, Canvas(tgt.bias)))
            parts[1][1].put(rows, src.bias * scale)
        for param, canvas in parts:
            if zero is not None:
                canvas.put(zero, 0.0)
            self._write(param, canvas, gen)

    def _write_residual(
        self, src: nn.Linear, tgt: nn.Linear, cols: torch.Tensor, stream: _Stream, gen: torch.Generator
    ) -> None:
        """A Linear writing the residual stream: source inputs come from ``cols``, every other input column is 0."""
        old = src.weight.new_zeros(src.out_features, tgt.in_features)
        old[:, cols] = src.weight
        weight, bias = Canvas(tgt.weight), Canvas(tgt.bias)
        weight.put(slice(None), stream.fill(old))
        bias.put(slice(None), stream.fill(src.bias))
        self._write(tgt.weight, weight, gen)
        self._write(tgt.bias, bias, gen)

    def _encoder(self, src: CLIPEncoder, tgt: CLIPEncoder, stream: _Stream, gen: torch.Generator) -> None:
        for tb, idx in zip(tgt.layers, exact_depth_map(len(src.layers), len(tgt.layers))):
            if idx is None:
                self._identity_block(tb, gen)
            else:
                self._exact_block(src.layers[idx], tb, stream, gen)

    def _exact_block(self, sb: CLIPEncoderLayer, tb: CLIPEncoderLayer, stream: _Stream, gen: torch.Generator) -> None:
        sa, ta = sb.self_attn, tb.self_attn
        heads = torch.arange(sa.num_heads)
        placed = head_dims(heads, torch.arange(sa.head_dim), ta.head_dim)
        gaps = head_dims(heads, torch.arange(sa.head_dim, ta.head_dim), ta.head_dim)  # must not add to q.k
        self._norm(sb.layer_norm1, tb.layer_norm1, stream, gen)
        self._norm(sb.layer_norm2, tb.layer_norm2, stream, gen)
        self._read(sa.q_proj, ta.q_proj, placed, stream, gen, scale=sa.scale / ta.scale, zero=gaps)
        self._read(sa.k_proj, ta.k_proj, placed, stream, gen)
        self._read(sa.v_proj, ta.v_proj, placed, stream, gen)
        self._write_residual(sa.out_proj, ta.out_proj, placed, stream, gen)
        units = torch.arange(sb.mlp.fc1.out_features)
        self._read(sb.mlp.fc1, tb.mlp.fc1, units, stream, gen)
        self._write_residual(sb.mlp.fc2, tb.mlp.fc2, units, stream, gen)

    def _identity_block(self, tb: CLIPEncoderLayer, gen: torch.Generator) -> None:
        """A new block whose residual branches output zero: attention and MLP writers are zeroed."""
        writers = {id(p) for layer in (tb.self_attn.out_proj, tb.mlp.fc2) for p in layer.parameters()}
        for param in tb.parameters():
            canvas = Canvas(param)
            if id(param) in writers:
                canvas.put(slice(None), 0.0)
            self._write(param, canvas, gen)  # every other entry is free: noise may go there

    # -- compt -----------------------------------------------------------------
    def _grow_compt(self, source: CLIPModel, target: CLIPModel) -> None:
        """Leading-corner copy of every tensor (q, k and v are separate in HF CLIP) and block duplication."""
        gen = self._generator()
        depth = {
            tower: compt_depth_map(len(s.encoder.layers), len(t.encoder.layers))
            for tower, s, t in zip(
                TOWERS, (source.text_model, source.vision_model), (target.text_model, target.vision_model)
            )
        }
        src = dict(source.named_parameters())
        for name, param in target.named_parameters():
            match = _LAYER.match(name)
            if match:
                tower, j = match.groups()
                name = f"{tower}_model.encoder.layers.{depth[tower][int(j)]}.{name[match.end() :]}"
            self._corner(param, src[name], gen)


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
