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
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

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

from comptlib.families.transformer import Block, Embedding, Roles, Stack, TransformerGrower
from comptlib.family import Family, Outputs, register_family
from comptlib.grower import GrowthError, Method, require_growth
from comptlib.ops import (
    HeadPlan,
    Proj,
    ResidualStream,
    Writer,
    compt_depth_map,
    exact_depth_map,
    head_plan,
    rope_dim_map,
    rope_mismatch,
    shared_head_plan,
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


def _gpt2_block(layer: nn.Module) -> Block:
    attn, mlp = layer.attn, layer.mlp
    q, k, v = Proj.packed(attn.c_attn.weight.T, attn.c_attn.bias)
    return Block(
        layer=layer,
        attn_norm=layer.ln_1,
        q=q,
        k=k,
        v=v,
        o=Proj.transposed(attn.c_proj),
        mlp_norm=layer.ln_2,
        readers=(Proj.transposed(mlp.c_fc),),
        down=Proj.transposed(mlp.c_proj),
        scaling=attn.scaling,
    )


def _llama_block(layer: nn.Module) -> Block:
    attn, mlp = layer.self_attn, layer.mlp
    return Block(
        layer=layer,
        attn_norm=layer.input_layernorm,
        q=Proj.of(attn.q_proj),
        k=Proj.of(attn.k_proj),
        v=Proj.of(attn.v_proj),
        o=Proj.of(attn.o_proj),
        mlp_norm=layer.post_attention_layernorm,
        readers=(Proj.of(mlp.gate_proj), Proj.of(mlp.up_proj)),
        down=Proj.of(mlp.down_proj),
        scaling=attn.scaling,
    )


def _gpt2(model: nn.Module) -> bool:
    return isinstance(model, GPT2LMHeadModel)


def _attn(layer: nn.Module) -> nn.Module:
    return layer.self_attn if hasattr(layer, "self_attn") else layer.attn


def _roles(model: nn.Module) -> Roles:
    """The role map of a GPT-2 or Llama-layout causal LM; TypeError for anything else.

    GPT-2 is mean-filled under LayerNorm, its Conv1D weights are transposed
    views and ``c_attn`` packs Q, K and V along its last axis; the Llama
    layout is zero-filled under RMSNorm. A tied lm_head has no role of its own.
    """
    cfg = model.config
    try:
        if _gpt2(model):
            body = model.transformer
            embeds, layers, norm = (body.wte, body.wpe), body.h, body.ln_f
            blocks, fill, eps_attr = tuple(_gpt2_block(layer) for layer in layers), "mean", "eps"
            rotary = None
        else:
            body = model.model
            embeds, layers, norm = (body.embed_tokens,), body.layers, body.norm
            blocks, fill, eps_attr = tuple(_llama_block(layer) for layer in layers), "zero", "variance_epsilon"
            rotary = body.rotary_emb
    except AttributeError as err:
        raise TypeError(
            f"DecoderLMGrower needs GPT2LMHeadModel or a Llama-layout causal LM "
            f"(model.layers[i].self_attn.q_proj ..., mlp.gate_proj ...), got {type(model).__name__}: {err}"
        ) from err
    heads = cfg.num_attention_heads
    tied = model.lm_head.weight is embeds[0].weight
    return Roles(
        stacks=(
            Stack(
                width=cfg.hidden_size,
                heads=(heads, getattr(cfg, "num_key_value_heads", None) or heads),
                head_dim=_attn(layers[0]).head_dim,
                embeds=tuple(Embedding(e.weight, axis=1) for e in embeds),
                blocks=blocks,
                norm=norm,
                head=None if tied else Proj.of(model.lm_head),
                fill=fill,
                eps_attr=eps_attr,
                rotary=rotary,
            ),
        ),
        packed=lambda name: -1 if name.startswith("attn.c_attn.") else None,
    )


def decoder_lm_dims(model: nn.Module) -> dict[str, int]:
    """The sizes of a causal LM that a chain grows (or keeps: vocab_size, and max positions must not shrink)."""
    stack, cfg = _roles(model).stacks[0], model.config
    return {
        "vocab_size": stack.embeds[0].tensor.shape[0],
        "hidden_size": cfg.hidden_size,
        "intermediate_size": stack.blocks[0].down.weight.shape[1],
        "num_attention_heads": stack.heads[0],
        "num_key_value_heads": stack.heads[1],
        "head_dim": stack.head_dim,
        "num_hidden_layers": len(stack.blocks),
        "max_position_embeddings": cfg.max_position_embeddings,
    }


def _window(attn: nn.Module, config: Any) -> int | None:
    """The sliding window of one attention layer (Qwen2 per layer, Mistral per model), None for full attention."""
    return getattr(attn, "sliding_window", getattr(config, "sliding_window", None))


def _inv_freq(rotary: nn.Module) -> torch.Tensor:
    """A rotary embedding's ``inv_freq``, recomputed on the CPU from its config when built on the meta device.

    Growth places head dims by these frequencies, so a model with no weights yet (a meta source or
    target) still grows: its frequencies are the config's, not data.
    """
    if not rotary.inv_freq.is_meta:
        return rotary.inv_freq
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope_type = getattr(rotary, "rope_type", "default")
    init = rotary.compute_default_rope_parameters if rope_type == "default" else ROPE_INIT_FUNCTIONS[rope_type]
    with torch.device("cpu"):
        return init(rotary.config)[0]


def _eps_key(model: nn.Module) -> str:
    """The config entry of every norm's eps."""
    return "layer_norm_epsilon" if _gpt2(model) else "rms_norm_eps"


class DecoderLMGrower(TransformerGrower):
    """Grows a causal LM (Llama layout or GPT-2) in width, heads, kv heads, MLP size and depth.

    ``approximate=True`` allows, under RoPE, a head_dim change whose rotation
    frequencies do not all reappear in the target, and fewer, wider query
    heads (Qwen2.5 0.5B -> 1.5B: source heads share target heads,
    :func:`~comptlib.ops.shared_head_plan`); the grower then no longer
    promises exactness and :meth:`check` measures the error. ``depth`` picks
    how ``method="compt"`` fills extra blocks: ``"interleave"`` (CoM-PT,
    ``l -> 2l, 2l+1``) or ``"stack"`` (G_stack, the whole stack repeated).
    """

    zero_writers_last = True
    compt_blocks_last = True

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

    def roles(self, model: nn.Module) -> Roles:
        return _roles(model)

    def validate(self, source: nn.Module, target: nn.Module) -> None:
        if type(source) is not type(target):
            raise TypeError(
                f"source and target must be the same model class, got {type(source).__name__} -> {type(target).__name__}"
            )
        s_roles, t_roles = _roles(source).stacks[0], _roles(target).stacks[0]
        s, t = decoder_lm_dims(source), decoder_lm_dims(target)
        fewer_heads = t["num_attention_heads"] < s["num_attention_heads"]
        if fewer_heads and self.exact:
            raise GrowthError(
                f"num_attention_heads shrinks: {s['num_attention_heads']} -> {t['num_attention_heads']}; "
                f"approximate=True lets source heads share wider target heads, method='compt' warm-starts"
            )
        if fewer_heads and t["num_attention_heads"] * t["head_dim"] < s["num_attention_heads"] * s["head_dim"]:
            raise GrowthError(
                f"attention width (heads x head_dim) shrinks: {s['num_attention_heads']} x {s['head_dim']} -> "
                f"{t['num_attention_heads']} x {t['head_dim']}"
            )
        grow = tuple(k for k in _GROW if not (fewer_heads and k == "num_attention_heads"))
        require_growth(s, t, grow=grow, equal=("vocab_size",))
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
            self.head_plan(s_roles, t_roles)
            windows = [_window(_attn(b.layer), source.config) for b in s_roles.blocks]
            for j, idx in enumerate(exact_depth_map(s["num_hidden_layers"], t["num_hidden_layers"])):
                window = _window(_attn(t_roles.blocks[j].layer), target.config)
                if idx is not None and window != windows[idx]:
                    raise GrowthError(
                        f"sliding_window: target layer {j} attends with window {window}, "
                        f"but copies source layer {idx} with window {windows[idx]}"
                    )

    def feature_map(self, source: nn.Module, target: nn.Module) -> torch.Tensor | None:
        """After exact growth the final (post-norm) hidden states are ``[h, 0]``: the map is ``eye(D, d)``."""
        if self.method != "exact":
            return None
        return torch.eye(target.config.hidden_size, source.config.hidden_size)

    def depth_map(self, src: int, dst: int) -> list[int]:
        return (compt_depth_map if self.depth == "interleave" else stack_depth_map)(src, dst)

    def head_plan(self, source: Stack, target: Stack) -> HeadPlan:
        """Place heads (GQA groups kept) and head dims (RoPE frequencies kept); GrowthError if impossible."""
        hd, new_hd = source.head_dim, target.head_dim
        dim_map, gain = None, 1.0
        if source.rotary is not None:
            freqs, new_freqs = _inv_freq(source.rotary), _inv_freq(target.rotary)
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
            gain = (source.rotary.attention_scaling / target.rotary.attention_scaling) ** 2
        try:
            if target.heads[0] >= source.heads[0]:
                return head_plan(source.heads, target.heads, hd, new_hd, dim_map=dim_map, gain=gain)
        except ValueError as err:
            if not self.approximate:
                raise GrowthError(f"{err}; approximate=True lets source heads share wider target heads") from err
        try:
            return shared_head_plan(source.heads, target.heads, hd, new_hd, rope_map=dim_map, gain=gain)
        except ValueError as err:
            raise GrowthError(str(err)) from err

    def finish_exact(
        self, source: nn.Module, target: nn.Module, streams: Sequence[ResidualStream], writer: Writer
    ) -> None:
        """The config's eps entry follows the norms'."""
        key, (stream,) = _eps_key(source), streams
        setattr(target.config, key, getattr(source.config, key) * stream.d / stream.big)


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
