"""The Llama-family decoder: Llama 2/3, Mistral, Qwen2 (qkv bias), Qwen3 (q/k norm).

The model does the math and nothing else. Where keys and values live, and which of them a
query may see, is the business of the `attend` function passed to `forward`: the runner passes
one that writes into the page pool and attends over pages; training passes dense causal SDPA.
Tokens are flat: `[num_tokens, hidden]`, whatever sequences they belong to.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.config import ModelConfig

# attend(layer, q [T, H, D], k [T, Hkv, D], v [T, Hkv, D]) -> [T, H, D]
AttendFn = Callable[[int, Tensor, Tensor, Tensor], Tensor]

# From this many rows up, a bfloat16 matmul on a CPU without bf16 arithmetic is faster through
# a float32 copy of the weight (measured crossover on AVX2: 4 rows).
FLOAT32_ROWS = 4


def bf16_matmul_is_slow(device: torch.device) -> bool:
    """True on CPUs without AVX512-BF16 or AMX: bfloat16 matmuls there run one row at a time."""
    return device.type == "cpu" and not (
        torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    )


def packs_bf16_weights(device: torch.device) -> bool:
    """True where bfloat16 matmuls run natively on this CPU through oneDNN: there the model keeps
    oneDNN-packed copies of its matrices (`LlamaModel.pack_weights`)."""
    return (
        device.type == "cpu"
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        and not bf16_matmul_is_slow(device)
    )


# ---- Hot path: oneDNN-packed weights (issue 19 item 5) -------------------------------------------
# A bfloat16 `F.linear` on a CPU is a oneDNN matmul that first reorders the weight into oneDNN's
# blocked layout, on every call: for a decode step, where each weight meets a few rows, that
# copy costs about as much as the product. `pack_weights` reorders each matrix once, at load;
# `linear` then multiplies by the packed copy. Same kernel, same accumulation: the results are
# bit for bit those of `F.linear`. Measured side by side by `symphony bench decode --cases
# "packed vs plain"`: SmolLM2-135M's shape decodes about 1.3-1.6x faster at batch 1 and 16.
# A float32 model gains nothing (its matmuls go to MKL, which reorders nothing), so it packs
# nothing. The packed copies double the memory of the matrices.
# At batch 1 (a GEMV per matrix) the packed copies are also the fastest of the kernels torch
# offers for bfloat16 here: on the AMD EPYC (AVX512-BF16, no AMX) the 135M shape's 121 products
# of one decode step took ~16 ms packed, ~50 ms through float32 copies (MKL, twice the bytes)
# and ~400 ms through plain `F.linear` (interleaved medians, loaded machine, indicative). The
# packed products reach about half the read bandwidth; `symphony bench decode --cases "batch 1
# vs bound"` times them alone ("batch 1 matmuls vs bound") beside a whole step.


def linear(
    x: Tensor, w: Tensor, bias: Tensor | None, w32: Tensor | None, packed: Tensor | None = None
) -> Tensor:
    """`F.linear`, through `packed` (a oneDNN-packed copy of `w`, see above) where there is one,
    or through `w32` (a float32 copy of bfloat16 `w`) when x has many rows.

    The float32 way multiplies the same values and accumulates in float32, so a row's result does
    not depend on which way it went beyond summation order.
    """
    if packed is not None:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [None], "")
    if w32 is None or x.shape[0] < FLOAT32_ROWS:
        return F.linear(x, w, bias)
    return F.linear(x.float(), w32, None if bias is None else bias.float()).to(x.dtype)


def rope_inv_freq(cfg: ModelConfig) -> Tensor:
    """Inverse frequencies, with Llama 3 or linear scaling applied when the config asks.

    Computed in float32 step by step as transformers does, so that the angles (position times
    frequency) agree bit for bit at positions in the thousands. The config was checked when it
    was read (`engine.config.check_rope_scaling`).
    """
    d = cfg.head_dim
    exponents = torch.arange(0, d, 2, dtype=torch.int64).to(torch.float32) / d
    inv_freq = 1.0 / (cfg.rope_theta**exponents)
    scaling = cfg.rope_scaling
    if not scaling:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "linear":
        return inv_freq / scaling["factor"]
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
    return torch.where(medium, smoothed, scaled)


def rope_cos_sin(inv_freq: Tensor, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos and signed sin, [T, 1, D], for the given positions (computed once per forward).

    The sin's first half is negated so that rotation is one roll: see `apply_rope`.
    """
    freqs = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    cos, sin = freqs.cos(), freqs.sin()
    cos, signed_sin = torch.cat((cos, cos), -1), torch.cat((-sin, sin), -1)
    return cos[:, None].to(dtype), signed_sin[:, None].to(dtype)


def apply_rope(x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
    """Rotate-half RoPE: x * cos + (-x2, x1) * sin, with (-x2, x1) * sin = roll(x) * signed_sin."""
    return x * cos + x.roll(x.shape[-1] // 2, -1) * signed_sin


# A layer's matrices, by the names of its parameters (each may have a `<name>_bias`).
MATRICES = ("qkv", "o", "gate_up", "down")


class DecoderLayer(nn.Module):
    """One transformer block with fused qkv and gate/up projections."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, d
        self.q_size, self.kv_size = cfg.num_heads * d, cfg.num_kv_heads * d
        self.eps = cfg.rms_norm_eps
        self.input_norm = nn.Parameter(torch.ones(h))
        self.qkv = nn.Parameter(torch.empty(self.q_size + 2 * self.kv_size, h))
        self.qkv_bias = (
            nn.Parameter(torch.zeros(self.q_size + 2 * self.kv_size)) if cfg.qkv_bias else None
        )
        self.q_norm = nn.Parameter(torch.ones(d)) if cfg.qk_norm else None
        self.k_norm = nn.Parameter(torch.ones(d)) if cfg.qk_norm else None
        self.o = nn.Parameter(torch.empty(h, self.q_size))
        self.o_bias = nn.Parameter(torch.zeros(h)) if cfg.o_bias else None
        self.post_norm = nn.Parameter(torch.ones(h))
        self.gate_up = nn.Parameter(torch.empty(2 * cfg.intermediate_size, h))
        self.down = nn.Parameter(torch.empty(h, cfg.intermediate_size))
        i, mlp_bias = cfg.intermediate_size, cfg.mlp_bias  # Llama's mlp_bias
        self.gate_up_bias = nn.Parameter(torch.zeros(2 * i)) if mlp_bias else None
        self.down_bias = nn.Parameter(torch.zeros(h)) if mlp_bias else None
        self.f32: dict[str, Tensor] = {}  # float32 copies of the matrices (keep_float32_copies)
        self.packed: dict[str, Tensor] = {}  # oneDNN-packed copies of them (pack_weights)

    def _qk_norm_weight(self) -> Tensor:
        """[H + Hkv, D]: q_norm for the query heads, k_norm for the key heads."""
        assert self.q_norm is not None and self.k_norm is not None
        d = self.head_dim
        return torch.cat(
            (self.q_norm.expand(self.num_heads, d), self.k_norm.expand(self.num_kv_heads, d))
        )

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, layer: int, attend: AttendFn) -> Tensor:
        t = x.shape[0]
        y = F.rms_norm(x, x.shape[-1:], self.input_norm, self.eps)
        qkv = self.project("qkv", y)
        # q and k heads side by side, so that norm and rope run once over both
        qk = qkv[:, : self.q_size + self.kv_size].view(t, -1, self.head_dim)
        v = qkv[:, self.q_size + self.kv_size :].view(t, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            qk = F.rms_norm(qk, qk.shape[-1:], None, self.eps) * self._qk_norm_weight()
        q, k = apply_rope(qk, cos, sin).split([self.num_heads, self.num_kv_heads], dim=1)
        out = attend(layer, q, k, v).reshape(t, self.q_size)
        x = x + self.project("o", out)
        y = F.rms_norm(x, x.shape[-1:], self.post_norm, self.eps)
        gate, up = self.project("gate_up", y).chunk(2, dim=-1)
        return x + self.project("down", F.silu(gate) * up)

    def project(self, name: str, x: Tensor) -> Tensor:
        """x times the matrix `name` (one of `MATRICES`), plus its bias if it has one."""
        w, bias = getattr(self, name), getattr(self, name + "_bias")
        return linear(x, w, bias, self.f32.get(name), self.packed.get(name))


class LlamaModel(nn.Module):
    inv_freq: Tensor  # a buffer (register_buffer)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Parameter(torch.empty(cfg.vocab_size, cfg.hidden_size))
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.lm_head = (
            None
            if cfg.tie_word_embeddings
            else nn.Parameter(torch.empty(cfg.vocab_size, cfg.hidden_size))
        )
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)
        self.head_f32: Tensor | None = None
        self.head_packed: Tensor | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.device

    def keep_float32_copies(self) -> None:
        """Keep float32 copies of every matrix for many-row matmuls (bfloat16 on slow CPUs).

        Costs twice the weights' memory again; frozen weights only (copies are not updated).
        """
        for layer in cast("list[DecoderLayer]", self.layers):
            layer.f32 = {n: getattr(layer, n).float() for n in MATRICES}
        self.head_f32 = (self.embed if self.lm_head is None else self.lm_head).float()

    def pack_weights(self, packed: bool = True) -> None:
        """Keep oneDNN-packed copies of every matrix, LM head included, and multiply by them
        (bfloat16 on CPUs with bf16 arithmetic: see "oneDNN-packed weights" above); with
        packed=False, drop them. Frozen weights only (copies are not updated)."""
        pack = torch.ops.mkldnn._reorder_linear_weight
        for layer in cast("list[DecoderLayer]", self.layers):
            layer.packed = (
                {n: pack(getattr(layer, n).detach(), None) for n in MATRICES} if packed else {}
            )
        head = self.embed if self.lm_head is None else self.lm_head
        self.head_packed = pack(head.detach(), None) if packed else None

    def forward(self, input_ids: Tensor, positions: Tensor, attend: AttendFn) -> Tensor:
        """Hidden states `[T, hidden]` after the last layer (before the final norm)."""
        x = F.embedding(input_ids, self.embed)
        cos, sin = rope_cos_sin(self.inv_freq, positions, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, i, attend)
        return x

    def logits(self, hidden: Tensor) -> Tensor:
        """Final norm and LM head, for the rows that want outputs only. Float32 out."""
        y = F.rms_norm(hidden, hidden.shape[-1:], self.norm, self.cfg.rms_norm_eps)
        head = self.embed if self.lm_head is None else self.lm_head
        return linear(y, head, None, self.head_f32, self.head_packed).float()

    # --- Hugging Face weight names ------------------------------------------------------------

    def hf_names(self) -> dict[str, tuple[str, ...]]:
        """Our parameter name -> the HF tensor names it is made of (concatenated on dim 0)."""
        names: dict[str, tuple[str, ...]] = {
            "embed": ("model.embed_tokens.weight",),
            "norm": ("model.norm.weight",),
        }
        if self.lm_head is not None:
            names["lm_head"] = ("lm_head.weight",)
        for i, layer in enumerate(self.layers):
            p, a = f"model.layers.{i}.", f"model.layers.{i}.self_attn."
            ours = f"layers.{i}."
            names[ours + "input_norm"] = (p + "input_layernorm.weight",)
            names[ours + "post_norm"] = (p + "post_attention_layernorm.weight",)
            names[ours + "qkv"] = tuple(a + f"{x}_proj.weight" for x in "qkv")
            names[ours + "o"] = (a + "o_proj.weight",)
            names[ours + "gate_up"] = (p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight")
            names[ours + "down"] = (p + "mlp.down_proj.weight",)
            if layer.qkv_bias is not None:
                names[ours + "qkv_bias"] = tuple(a + f"{x}_proj.bias" for x in "qkv")
            if layer.o_bias is not None:
                names[ours + "o_bias"] = (a + "o_proj.bias",)
            if layer.gate_up_bias is not None:
                names[ours + "gate_up_bias"] = (p + "mlp.gate_proj.bias", p + "mlp.up_proj.bias")
                names[ours + "down_bias"] = (p + "mlp.down_proj.bias",)
            if layer.q_norm is not None:
                names[ours + "q_norm"] = (a + "q_norm.weight",)
                names[ours + "k_norm"] = (a + "k_norm.weight",)
        return names

    def hf_state_dict(self) -> dict[str, Tensor]:
        """The weights under HF names, split back out of the fused tensors (for saving)."""
        out: dict[str, Tensor] = {}
        params = dict(self.named_parameters())
        for ours, theirs in self.hf_names().items():
            w = params[ours].detach()
            sizes = [w.shape[0] // len(theirs)] * len(theirs)
            if ours.endswith(("qkv", "qkv_bias")):
                layer = cast(DecoderLayer, self.layers[0])
                sizes = [layer.q_size, layer.kv_size, layer.kv_size]
            for name, part in zip(theirs, w.split(sizes, dim=0), strict=True):
                out[name] = part.contiguous()
        return out
