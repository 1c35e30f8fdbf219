"""The Llama-family decoder: Llama 2/3, Mistral, Qwen2 (qkv bias), Qwen3 (q/k norm).

The model does the math and nothing else. Where keys and values live, and which of them a
query may see, is the business of the `attend` function passed to `forward`: the runner passes
one that writes into the page pool and attends over pages; training passes dense causal SDPA.
Tokens are flat: `[num_tokens, hidden]`, whatever sequences they belong to.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.config import ModelConfig
from engine.errors import ModelLoadError

# attend(layer, q [T, H, D], k [T, Hkv, D], v [T, Hkv, D]) -> [T, H, D]
AttendFn = Callable[[int, Tensor, Tensor, Tensor], Tensor]


def rope_inv_freq(cfg: ModelConfig) -> Tensor:
    """Inverse frequencies, with Llama 3 or linear scaling applied when the config asks."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    scaling = cfg.rope_scaling
    if not scaling:
        return inv_freq.float()
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "linear":
        return (inv_freq / scaling["factor"]).float()
    if kind != "llama3":
        raise ModelLoadError("config.json", f"unsupported rope scaling {kind!r}")
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, smoothed, scaled).float()


def rope_cos_sin(inv_freq: Tensor, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos and sin of shape [T, 1, D] for the given positions (computed once per forward)."""
    freqs = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


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

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, layer: int, attend: AttendFn) -> Tensor:
        t = x.shape[0]
        y = F.rms_norm(x, x.shape[-1:], self.input_norm, self.eps)
        qkv = F.linear(y, self.qkv, self.qkv_bias)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(t, self.num_heads, self.head_dim)
        k = k.view(t, self.num_kv_heads, self.head_dim)
        v = v.view(t, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q = F.rms_norm(q, q.shape[-1:], self.q_norm, self.eps)
            k = F.rms_norm(k, k.shape[-1:], self.k_norm, self.eps)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = attend(layer, q, k, v).reshape(t, self.q_size)
        x = x + F.linear(out, self.o, self.o_bias)
        y = F.rms_norm(x, x.shape[-1:], self.post_norm, self.eps)
        gate, up = F.linear(y, self.gate_up).chunk(2, dim=-1)
        return x + F.linear(F.silu(gate) * up, self.down)


class LlamaModel(nn.Module):
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

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.device

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
        return F.linear(y, head).float()

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
                layer = self.layers[0]
                sizes = [layer.q_size, layer.kv_size, layer.kv_size]
            for name, part in zip(theirs, w.split(sizes, dim=0), strict=True):
                out[name] = part.contiguous()
        return out
