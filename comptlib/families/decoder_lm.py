"""Decoder-only causal LMs (Llama layout and GPT-2): growth, LM objective and bits-per-byte evaluation.

The grower sees every model through its *roles* (embeddings, per-block
norms, Q/K/V/O, MLP readers and writer, final norm, lm_head), so Llama,
Qwen2, Mistral and any other Llama-layout model share one code path, and
GPT-2's transposed, packed ``Conv1D`` is just another view of the same roles.

Exact growth keeps the function in eval mode for any larger width and depth:

* residual stream: zero-filled under RMSNorm (Llama layout), mean-filled under
  LayerNorm (GPT-2, LEMON); every norm then outputs ``[norm(x), 0]`` once
  gamma is scaled by ``sqrt(d/D)`` and eps by ``d/D`` (also in the config);
* heads: source query heads are placed so each keeps its kv head under the
  target's grouping (``repeat_kv``), o_proj columns follow; a larger head_dim
  zero-pads Q and rescales it for the new ``1/sqrt(head_dim)``. Under RoPE the
  source dims go to the target dims rotating at the same frequency, which
  exists for an integer head_dim ratio; otherwise the growth is refused
  unless ``approximate=True``;
* new heads, MLP units and blocks get zero residual-writer entries.

Tied embeddings stay tied and exact: the lm_head reads ``[h, 0]``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import attrs
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from comptlib.family import Family, Outputs, register_family
from comptlib.grower import Grower, GrowthError, Method, require_growth
from comptlib.ops import (
    Canvas,
    compt_depth_map,
    exact_depth_map,
    gqa_placement,
    head_dims,
    mean_rows,
    norm_scale,
    rope_dim_map,
    rope_mismatch,
    stack_depth_map,
)
from comptlib.transferer import LogitKL

Depth = Literal["interleave", "stack"]
DEPTHS: tuple[str, ...] = ("interleave", "stack")

_GROW = (
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "num_hidden_layers",
)
# Config entries that change the function in ways growth cannot compensate; absent ones compare as None.
_SAME_CONFIG = (
    "hidden_act",
    "activation_function",
    "rope_parameters",
    "attention_bias",
    "mlp_bias",
    "tie_word_embeddings",
)
_ROPE_TOLERANCE = 1e-6


@attrs.frozen
class _Proj:
    """A linear map as an ``(out, in)`` weight and a bias, whatever its storage.

    GPT-2's ``Conv1D`` stores ``(in, out)`` and packs Q, K and V in one module;
    these are views, so writing into them writes the parameters.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None


@attrs.frozen
class _Block:
    layer: nn.Module
    attn: nn.Module
    attn_norm: nn.Module
    q: _Proj
    k: _Proj
    v: _Proj
    o: _Proj
    mlp_norm: nn.Module
    readers: tuple[_Proj, ...]  # MLP input projections (gate, up / c_fc)
    down: _Proj
    packed: nn.Module | None  # GPT-2's c_attn: split into Q, K, V for the corner copy


@attrs.frozen
class _Roles:
    embeds: tuple[nn.Embedding, ...]  # token embedding first, then position embedding if any
    layers: nn.ModuleList
    blocks: tuple[_Block, ...]
    norm: nn.Module
    lm_head: nn.Linear
    rotary: nn.Module | None
    mean_fill: bool  # LayerNorm: new residual dims hold the mean; RMSNorm: they hold 0
    eps_key: str  # the config entry of every norm's eps

    @property
    def eps_attr(self) -> str:
        return "eps" if self.mean_fill else "variance_epsilon"

    @property
    def tied(self) -> bool:
        return self.lm_head.weight is self.embeds[0].weight


def _linear(module: nn.Linear) -> _Proj:
    return _Proj(module.weight, module.bias)


def _conv1d(module: nn.Module) -> _Proj:
    return _Proj(module.weight.T, module.bias)


def _gpt2_roles(model: GPT2LMHeadModel) -> _Roles:
    body = model.transformer
    blocks = []
    for layer in body.h:
        attn, mlp = layer.attn, layer.mlp
        q, k, v = (_Proj(w, b) for w, b in zip(attn.c_attn.weight.T.chunk(3), attn.c_attn.bias.chunk(3)))
        blocks.append(
            _Block(
                layer=layer,
                attn=attn,
                attn_norm=layer.ln_1,
                q=q,
                k=k,
                v=v,
                o=_conv1d(attn.c_proj),
                mlp_norm=layer.ln_2,
                readers=(_conv1d(mlp.c_fc),),
                down=_conv1d(mlp.c_proj),
                packed=attn.c_attn,
            )
        )
    return _Roles(
        embeds=(body.wte, body.wpe),
        layers=body.h,
        blocks=tuple(blocks),
        norm=body.ln_f,
        lm_head=model.lm_head,
        rotary=None,
        mean_fill=True,
        eps_key="layer_norm_epsilon",
    )


def _llama_roles(model: nn.Module) -> _Roles:
    body = model.model
    blocks = tuple(
        _Block(
            layer=layer,
            attn=layer.self_attn,
            attn_norm=layer.input_layernorm,
            q=_linear(layer.self_attn.q_proj),
            k=_linear(layer.self_attn.k_proj),
            v=_linear(layer.self_attn.v_proj),
            o=_linear(layer.self_attn.o_proj),
            mlp_norm=layer.post_attention_layernorm,
            readers=(_linear(layer.mlp.gate_proj), _linear(layer.mlp.up_proj)),
            down=_linear(layer.mlp.down_proj),
            packed=None,
        )
        for layer in body.layers
    )
    return _Roles(
        embeds=(body.embed_tokens,),
        layers=body.layers,
        blocks=blocks,
        norm=body.norm,
        lm_head=model.lm_head,
        rotary=body.rotary_emb,
        mean_fill=False,
        eps_key="rms_norm_eps",
    )


def _roles(model: nn.Module) -> _Roles:
    """The role map of a GPT-2 or Llama-layout causal LM; TypeError for anything else."""
    if isinstance(model, GPT2LMHeadModel):
        return _gpt2_roles(model)
    try:
        return _llama_roles(model)
    except AttributeError as err:
        raise TypeError(
            f"DecoderLMGrower needs GPT2LMHeadModel or a Llama-layout causal LM "
            f"(model.layers[i].self_attn.q_proj ..., mlp.gate_proj ...), got {type(model).__name__}: {err}"
        ) from err


def decoder_lm_dims(model: nn.Module) -> dict[str, int]:
    """The sizes of a causal LM that a chain grows (or keeps: vocab_size, and max positions must not shrink)."""
    roles, cfg = _roles(model), model.config
    block = roles.blocks[0]
    return {
        "vocab_size": roles.embeds[0].num_embeddings,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": block.down.weight.shape[1],
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
        "head_dim": block.attn.head_dim,
        "num_hidden_layers": len(roles.blocks),
        "max_position_embeddings": cfg.max_position_embeddings,
    }


def _window(attn: nn.Module, config: Any) -> int | None:
    """The sliding window of one attention layer (Qwen2 per layer, Mistral per model), None for full attention."""
    return getattr(attn, "sliding_window", getattr(config, "sliding_window", None))


@attrs.frozen
class _HeadPlan:
    """Where source attention dims go in the target, shared by all blocks."""

    q_rows: torch.Tensor  # target Q dims receiving source Q dims, in source order
    q_gaps: torch.Tensor  # target Q dims of placed heads that receive nothing: zero, or they add to q.k
    kv_rows: torch.Tensor  # target K/V dims receiving source K/V dims
    kv_src: torch.Tensor  # the source K/V dims they copy
    gain: float  # RoPE attention_scaling ratio squared, folded into Q


class DecoderLMGrower(Grower):
    """Grows a causal LM (Llama layout or GPT-2) in width, heads, kv heads, MLP size and depth.

    ``approximate=True`` allows, under RoPE, a head_dim change whose rotation
    frequencies do not all reappear in the target; the grower then no longer
    promises exactness and :meth:`check` measures the error. ``depth`` picks
    how ``method="compt"`` fills extra blocks: ``"interleave"`` (CoM-PT,
    ``l -> 2l, 2l+1``) or ``"stack"`` (G_stack, the whole stack repeated).
    """

    def __init__(
        self,
        method: Method = "exact",
        *,
        noise: float = 0.0,
        seed: int | None = None,
        approximate: bool = False,
        depth: Depth = "interleave",
    ) -> None:
        super().__init__(method, noise=noise, seed=seed)
        if depth not in DEPTHS:
            raise ValueError(f"depth must be one of {DEPTHS}, got {depth!r}")
        if depth == "stack" and method == "exact":
            raise ValueError("depth='stack' duplicates blocks, a warm start: use it with method='compt'")
        self.approximate = approximate
        self.depth = depth

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(method={self.method!r}, noise={self.noise}, seed={self.seed}, "
            f"approximate={self.approximate}, depth={self.depth!r})"
        )

    @property
    def exact(self) -> bool:
        """Exact growth promises the function only when no RoPE approximation is allowed."""
        return self.method == "exact" and not self.approximate

    def validate(self, source: nn.Module, target: nn.Module) -> None:
        if type(source) is not type(target):
            raise TypeError(
                f"source and target must be the same model class, got {type(source).__name__} -> {type(target).__name__}"
            )
        s_roles, t_roles = _roles(source), _roles(target)
        s, t = decoder_lm_dims(source), decoder_lm_dims(target)
        require_growth(s, t, grow=_GROW, equal=("vocab_size",))
        if t["max_position_embeddings"] < s["max_position_embeddings"]:
            raise GrowthError(
                f"max_position_embeddings shrinks: {s['max_position_embeddings']} -> {t['max_position_embeddings']}"
            )
        for key in _SAME_CONFIG:
            a, b = getattr(source.config, key, None), getattr(target.config, key, None)
            if a != b:
                raise GrowthError(f"{key} must be equal along a chain, got {a!r} -> {b!r}")
        if any(getattr(m.config, "add_cross_attention", False) for m in (source, target)):
            raise GrowthError("add_cross_attention: cross-attention layers are not grown")
        if self.method == "exact":
            self._head_plan(s_roles, t_roles, s, t)
            windows = [_window(b.attn, source.config) for b in s_roles.blocks]
            for j, idx in enumerate(exact_depth_map(s["num_hidden_layers"], t["num_hidden_layers"])):
                window = _window(t_roles.blocks[j].attn, target.config)
                if idx is not None and window != windows[idx]:
                    raise GrowthError(
                        f"sliding_window: target layer {j} attends with window {window}, "
                        f"but copies source layer {idx} with window {windows[idx]}"
                    )

    @torch.no_grad()
    def grow(self, source: nn.Module, target: nn.Module) -> nn.Module:
        self.validate(source, target)
        if self.method == "exact":
            self._grow_exact(source, target)
        else:
            self._grow_compt(source, target)
        return target

    def feature_map(self, source: nn.Module, target: nn.Module) -> torch.Tensor | None:
        """After exact growth the final (post-norm) hidden states are ``[h, 0]``: the map is ``eye(D, d)``."""
        if self.method != "exact":
            return None
        return torch.eye(target.config.hidden_size, source.config.hidden_size)

    # -- exact -----------------------------------------------------------------
    def _head_plan(self, s: _Roles, t: _Roles, sd: Mapping[str, int], td: Mapping[str, int]) -> _HeadPlan:
        """Place heads (GQA groups kept) and head dims (RoPE frequencies kept); GrowthError if impossible."""
        heads = ("num_attention_heads", "num_key_value_heads")
        try:
            q_pos, kv_src = gqa_placement(*(sd[k] for k in heads), *(td[k] for k in heads))
        except ValueError as err:
            raise GrowthError(str(err)) from err
        hd, new_hd = sd["head_dim"], td["head_dim"]
        dim_map, gain = torch.arange(hd), 1.0
        if s.rotary is not None:
            freqs, new_freqs = s.rotary.inv_freq, t.rotary.inv_freq
            try:
                dim_map = rope_dim_map(freqs, new_freqs)
            except ValueError as err:
                raise GrowthError(str(err)) from err
            error = rope_mismatch(freqs, new_freqs, dim_map)
            if error > _ROPE_TOLERANCE and not self.approximate:
                raise GrowthError(
                    f"head_dim {hd} -> {new_hd} under RoPE: the source rotation frequencies are not all in the "
                    f"target (relative error up to {error:.3g}); keep head_dim, grow it by an integer factor, "
                    f"or pass approximate=True"
                )
            gain = (s.rotary.attention_scaling / t.rotary.attention_scaling) ** 2
        gaps = torch.ones(new_hd, dtype=torch.bool)
        gaps[dim_map] = False
        new_kv = torch.nonzero(kv_src >= 0).flatten()
        return _HeadPlan(
            q_rows=head_dims(q_pos, dim_map, new_hd),
            q_gaps=head_dims(q_pos, torch.nonzero(gaps).flatten(), new_hd),
            kv_rows=head_dims(new_kv, dim_map, new_hd),
            kv_src=head_dims(kv_src[new_kv], torch.arange(hd), hd),
            gain=gain,
        )

    def _residual(self, rows: torch.Tensor, total: int, mean_fill: bool) -> torch.Tensor:
        """``rows`` (d, ...) of a residual-stream writer extended to ``total``: mean rows (LayerNorm) or zeros (RMSNorm)."""
        if mean_fill:
            return mean_rows(rows, total)
        return torch.cat([rows, rows.new_zeros(total - rows.shape[0], *rows.shape[1:])])

    def _grow_exact(self, source: nn.Module, target: nn.Module) -> None:
        gen = self._generator()
        s, t = _roles(source), _roles(target)
        sd, td = decoder_lm_dims(source), decoder_lm_dims(target)
        d, big = sd["hidden_size"], td["hidden_size"]
        plan = self._head_plan(s, t, sd, td)

        for se, te in zip(s.embeds, t.embeds):  # rows past the source's positions are free
            canvas = Canvas(te.weight)
            canvas.put(slice(0, se.num_embeddings), self._residual(se.weight.T, big, t.mean_fill).T)
            self._write(te.weight, canvas, gen)
        for tb, idx in zip(t.blocks, exact_depth_map(sd["num_hidden_layers"], td["num_hidden_layers"])):
            if idx is None:
                self._identity_block(tb, gen)
            else:
                self._exact_block(s.blocks[idx], tb, plan, t, gen)
        self._norm(s.norm, t.norm, t, gen)
        if not t.tied:
            vocab = torch.arange(sd["vocab_size"])
            self._read(_linear(s.lm_head), _linear(t.lm_head), vocab, vocab, gen)
        setattr(target.config, t.eps_key, getattr(source.config, s.eps_key) * d / big)

    def _norm(self, src: nn.Module, tgt: nn.Module, roles: _Roles, gen: torch.Generator) -> None:
        """Gamma scaled by sqrt(d/D) and eps by d/D on the old dims; new gammas are free, new betas 0."""
        d, big = src.weight.shape[0], tgt.weight.shape[0]
        gamma = Canvas(tgt.weight)
        gamma.put(slice(0, d), src.weight * norm_scale(d, big))
        self._write(tgt.weight, gamma, gen)
        if getattr(tgt, "bias", None) is not None:
            beta = Canvas(tgt.bias)
            beta.put(slice(0, d), src.bias)
            beta.put(slice(d, big), 0.0)
            self._write(tgt.bias, beta, gen)
        setattr(tgt, roles.eps_attr, getattr(src, roles.eps_attr) * d / big)

    def _read(
        self,
        src: _Proj,
        tgt: _Proj,
        rows: torch.Tensor,
        src_rows: torch.Tensor,
        gen: torch.Generator,
        scale: float = 1.0,
        zero: torch.Tensor | None = None,
    ) -> None:
        """A projection reading the residual stream: source ``src_rows`` go to ``rows`` on the old input columns.

        Columns reading new residual dims and rows of new units are free;
        ``zero`` rows are zeroed (Q dims that must not add to q.k).
        """
        weight = Canvas(tgt.weight)
        weight.put((rows[:, None], torch.arange(src.weight.shape[1])[None, :]), src.weight[src_rows] * scale)
        parts = [(tgt.weight, weight)]
        if tgt.bias is not None:
            bias = Canvas(tgt.bias)
            bias.put(rows, src.bias[src_rows] * scale)
            parts.append((tgt.bias, bias))
        for param, canvas in parts:
            if zero is not None:
                canvas.put(zero, 0.0)
            self._write(param, canvas, gen)

    def _write_residual(self, src: _Proj, tgt: _Proj, cols: torch.Tensor, roles: _Roles, gen: torch.Generator) -> None:
        """A residual writer: source columns go to ``cols``, every other column of the old rows is 0, new rows filled."""
        big = tgt.weight.shape[0]
        old = src.weight.new_zeros(src.weight.shape[0], tgt.weight.shape[1])
        old[:, cols] = src.weight
        weight = Canvas(tgt.weight)
        weight.put(slice(None), self._residual(old, big, roles.mean_fill))
        self._write(tgt.weight, weight, gen)
        if tgt.bias is not None:
            bias = Canvas(tgt.bias)
            bias.put(slice(None), self._residual(src.bias, big, roles.mean_fill))
            self._write(tgt.bias, bias, gen)

    def _exact_block(self, sb: _Block, tb: _Block, plan: _HeadPlan, roles: _Roles, gen: torch.Generator) -> None:
        self._norm(sb.attn_norm, tb.attn_norm, roles, gen)
        self._norm(sb.mlp_norm, tb.mlp_norm, roles, gen)
        # Q absorbs the change of softmax scale (head_dim, GPT-2's per-layer scaling, RoPE attention_scaling).
        q_scale = sb.attn.scaling / tb.attn.scaling * plan.gain
        self._read(sb.q, tb.q, plan.q_rows, torch.arange(sb.q.weight.shape[0]), gen, q_scale, plan.q_gaps)
        self._read(sb.k, tb.k, plan.kv_rows, plan.kv_src, gen)
        self._read(sb.v, tb.v, plan.kv_rows, plan.kv_src, gen)
        self._write_residual(sb.o, tb.o, plan.q_rows, roles, gen)
        units = torch.arange(sb.down.weight.shape[1])
        for s_reader, t_reader in zip(sb.readers, tb.readers):
            self._read(s_reader, t_reader, units, units, gen)
        self._write_residual(sb.down, tb.down, units, roles, gen)

    def _identity_block(self, tb: _Block, gen: torch.Generator) -> None:
        """A new block whose residual branches output zero; every other entry is free."""
        for param in tb.layer.parameters():
            self._write(param, Canvas(param), gen)
        for proj in (tb.o, tb.down):
            proj.weight.zero_()
            if proj.bias is not None:
                proj.bias.zero_()

    # -- compt -----------------------------------------------------------------
    def _grow_compt(self, source: nn.Module, target: nn.Module) -> None:
        """Leading-corner copy of every tensor (GPT-2's packed Q, K, V split first) and block duplication."""
        gen = self._generator()
        s, t = _roles(source), _roles(target)
        in_blocks = {id(p) for p in t.layers.parameters()}
        src = dict(source.named_parameters())
        for name, param in target.named_parameters():
            if id(param) not in in_blocks:
                self._corner(param, src[name], gen)
        depth_map = compt_depth_map if self.depth == "interleave" else stack_depth_map
        for tb, idx in zip(t.blocks, depth_map(len(s.blocks), len(t.blocks))):
            sb = s.blocks[idx]
            packed = {id(p) for p in tb.packed.parameters()} if tb.packed is not None else set()
            src_block = dict(sb.layer.named_parameters())
            for name, param in tb.layer.named_parameters():
                if id(param) in packed:  # Conv1D (in, 3D) weight and (3D,) bias: Q, K, V along the last axis
                    for t_part, s_part in zip(param.chunk(3, dim=-1), src_block[name].chunk(3, dim=-1)):
                        self._corner(t_part, s_part, gen)
                else:
                    self._corner(param, src_block[name], gen)


def _mask_and_labels(batch: Mapping[str, torch.Tensor], input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention mask (all ones when absent) and next-token labels with padding set to -100."""
    mask = batch.get("attention_mask")
    mask = torch.ones_like(input_ids) if mask is None else mask.to(input_ids.device)
    return mask, input_ids.masked_fill(mask == 0, -100)


def lm_forward(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> Outputs:
    """Causal-LM cross-entropy over non-padding tokens.

    ``batch`` holds ``input_ids`` and optionally ``attention_mask``. The features
    are the final hidden states after the final norm (what the lm_head reads),
    and ``mask`` marks real tokens so token-level transfer terms skip padding.
    """
    input_ids = batch["input_ids"]
    mask, labels = _mask_and_labels(batch, input_ids)
    out = model(input_ids=input_ids, attention_mask=mask, labels=labels, output_hidden_states=True)
    return Outputs(loss=out.loss, logits=out.logits, features=out.hidden_states[-1], mask=mask)


@torch.no_grad()
def evaluate_lm(
    model: nn.Module, loader: Iterable[Mapping[str, torch.Tensor]], device: torch.device
) -> dict[str, float]:
    """Mean next-token loss (nats), perplexity and bits per byte over ``loader``, in eval mode.

    Bits per byte compares models across tokenizers: total nats / ln 2 / total
    bytes. Each batch may carry ``num_bytes``, a tensor whose sum is the number
    of text bytes of the tokens the batch predicts (every non-padding token but
    the first of each sequence). Without it, every token counts as one byte,
    which is exact for byte-level tokenizers; ``bits_per_token`` is always given.
    """
    was_training = model.training
    model.eval()
    nats, tokens, num_bytes, batches, with_bytes = 0.0, 0, 0, 0, 0
    try:
        for batch in loader:
            input_ids = batch["input_ids"].to(device)
            mask, labels = _mask_and_labels(batch, input_ids)
            logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1]
            targets = labels[:, 1:]
            nats += F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum").item()
            tokens += int((targets != -100).sum())
            batches += 1
            if "num_bytes" in batch:
                num_bytes += int(batch["num_bytes"].sum())
                with_bytes += 1
    finally:
        model.train(was_training)
    if tokens == 0:
        raise ValueError("the evaluation loader yielded no predicted tokens")
    if with_bytes not in (0, batches):
        raise ValueError(f"num_bytes is in {with_bytes} of {batches} batches: give it in every batch or none")
    bits = nats / math.log(2)
    return {
        "loss": nats / tokens,
        "perplexity": math.exp(nats / tokens),
        "bits_per_token": bits / tokens,
        "bits_per_byte": bits / (num_bytes if with_bytes else tokens),
    }


DECODER_LM = register_family(
    Family(
        name="decoder_lm",
        model_types=(LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM, GPT2LMHeadModel),
        grower=DecoderLMGrower,
        transferer=functools.partial(LogitKL, weight=1.0, temperature=1.0, schedule="linear"),
        forward=lm_forward,
        evaluate=evaluate_lm,
        dims=decoder_lm_dims,
        metric="bits_per_byte",
        higher_is_better=False,
    )
)


# -- small builders -------------------------------------------------------------
HEAD_DIM = 16
"""Head size of the built-in builders: RoPE's frequencies depend on head_dim, so
models meant to share a chain keep it fixed and grow by adding heads."""


def _llama_layout(
    hidden_size: int,
    num_layers: int,
    num_heads: int | None,
    num_kv_heads: int | None,
    intermediate_size: int | None,
    vocab_size: int,
    max_position_embeddings: int,
) -> dict[str, Any]:
    """Config entries shared by the Llama-layout builders: head_dim 16, a SwiGLU MLP ~8/3 as wide
    (rounded up to a multiple of 16, so ~2.7x), tied embeddings and no special tokens (bytes need none)."""
    heads = num_heads or max(hidden_size // HEAD_DIM, 1)
    return {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size or 16 * math.ceil(8 * hidden_size / 48),
        "num_hidden_layers": num_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": num_kv_heads or heads,
        "head_dim": HEAD_DIM,
        "max_position_embeddings": max_position_embeddings,
        "tie_word_embeddings": True,
        "bos_token_id": None,
        "eos_token_id": None,
    }


def build_llama(
    hidden_size: int,
    num_layers: int,
    *,
    num_heads: int | None = None,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    vocab_size: int = 256,
    max_position_embeddings: int = 1024,
) -> LlamaForCausalLM:
    """A tiny Llama whose default vocabulary fits :class:`comptlib.data.ByteTokenizer`.

    Heads default to ``hidden_size // 16`` and kv heads to as many (no GQA).

    >>> build_llama(64, 2).config.intermediate_size
    176
    """
    layout = _llama_layout(
        hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size, vocab_size, max_position_embeddings
    )
    return LlamaForCausalLM(LlamaConfig(**layout))


def build_qwen2(
    hidden_size: int,
    num_layers: int,
    *,
    num_heads: int | None = None,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    vocab_size: int = 256,
    max_position_embeddings: int = 1024,
) -> Qwen2ForCausalLM:
    """A tiny Qwen2 (the Llama layout with Q/K/V biases), sized as :func:`build_llama`."""
    layout = _llama_layout(
        hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size, vocab_size, max_position_embeddings
    )
    return Qwen2ForCausalLM(Qwen2Config(**layout))


def build_gpt2(
    hidden_size: int,
    num_layers: int,
    *,
    num_heads: int | None = None,
    inner_size: int | None = None,
    vocab_size: int = 256,
    max_position_embeddings: int = 1024,
    dropout: float = 0.0,
) -> GPT2LMHeadModel:
    """A tiny GPT-2 with head_dim 16, a 4x MLP, tied embeddings and byte-sized vocabulary.

    Dropout defaults to 0 (GPT-2's own default is 0.1): tiny models trained
    for minutes on megabytes of text underfit rather than overfit.
    """
    config = GPT2Config(
        vocab_size=vocab_size,
        n_embd=hidden_size,
        n_layer=num_layers,
        n_head=num_heads or max(hidden_size // HEAD_DIM, 1),
        n_inner=inner_size or 4 * hidden_size,
        n_positions=max_position_embeddings,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=None,
    )
    return GPT2LMHeadModel(config)
