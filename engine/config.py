"""The model configuration, read from a Hugging Face `config.json`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.wire.errors import ModelLoadError

SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
)


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool  # Qwen2; Llama's `attention_bias` also biases o_proj
    o_bias: bool
    qk_norm: bool  # Qwen3
    mlp_bias: bool = False  # Llama's `mlp_bias`: gate, up and down projections biased
    dtype: str | None = None
    bos_token_id: int | None = None
    eos_token_id: list[int] = field(default_factory=list)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: object = "config.json") -> ModelConfig:
        archs = raw.get("architectures") or []
        arch = archs[0] if archs else None
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ModelLoadError(
                source,
                f"unsupported architecture {arch!r}; "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}",
            )
        check_fields(raw, arch, source)
        try:
            hidden = int(raw["hidden_size"])
            heads = int(raw["num_attention_heads"])
            rope = raw.get("rope_parameters") or {}  # transformers 5 folds theta and scaling here
            scaling = raw.get("rope_scaling") or (
                rope if rope.get("rope_type") != "default" else None
            )
            if scaling and scaling.get("rope_type", scaling.get("type")) == "default":
                scaling = None
            attention_bias = bool(raw.get("attention_bias", False))
            eos = raw.get("eos_token_id")
            config = cls(
                architecture=arch,
                vocab_size=int(raw["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(raw["intermediate_size"]),
                num_layers=int(raw["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(raw.get("num_key_value_heads") or heads),
                head_dim=int(raw.get("head_dim") or hidden // heads),
                rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
                rope_theta=float(rope.get("rope_theta", raw.get("rope_theta", 10000.0))),
                rope_scaling=dict(scaling) if scaling else None,
                max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
                tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
                qkv_bias=arch == "Qwen2ForCausalLM" or attention_bias,
                o_bias=arch != "Qwen2ForCausalLM" and attention_bias,
                qk_norm=arch == "Qwen3ForCausalLM",
                mlp_bias=bool(raw.get("mlp_bias", False)),
                dtype=raw.get("dtype") or raw.get("torch_dtype"),
                bos_token_id=raw.get("bos_token_id"),
                eos_token_id=[] if eos is None else ([eos] if isinstance(eos, int) else list(eos)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModelLoadError(source, f"bad or missing field: {e}") from e
        check_rope_scaling(config.rope_scaling, source)
        return config

    @classmethod
    def from_file(cls, path: Path) -> ModelConfig:
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError as e:
            raise ModelLoadError(path, "missing config.json") from e
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelLoadError(path, f"not valid JSON: {e}") from e
        return cls.from_dict(raw, path)

    @property
    def num_params(self) -> int:
        h, i, d = self.hidden_size, self.intermediate_size, self.head_dim
        attn = h * d * (self.num_heads * 2 + self.num_kv_heads * 2)
        layer = attn + 3 * h * i + 2 * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return self.num_layers * layer + self.vocab_size * h + head + h


ROPE_SCALING_KEYS = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def check_fields(raw: dict[str, Any], arch: str, source: object) -> None:
    """Refuse, naming the file and the field, what would load silently and compute wrong logits.

    The engine implements full causal attention with RoPE over the whole head and SwiGLU (SiLU)
    MLPs; a config asking for anything else is refused rather than approximated.
    """

    def refuse(field_name: str, problem: str) -> None:
        raise ModelLoadError(source, f"field {field_name!r} = {raw[field_name]!r}: {problem}")

    act = raw.get("hidden_act", "silu")
    if act != "silu":
        refuse("hidden_act", "only SiLU (SwiGLU) MLPs are supported")
    max_pos = int(raw.get("max_position_embeddings", 2048))
    window = raw.get("sliding_window")
    uses_window = raw.get("use_sliding_window", arch == "MistralForCausalLM")
    # A window at least the context length never hides a key: positions past the context length
    # are refused (`ContextTooLong`), so such a window changes nothing.
    if uses_window and window is not None and int(window) < max_pos:
        field_name = "use_sliding_window" if "use_sliding_window" in raw else "sliding_window"
        refuse(
            field_name,
            f"sliding-window attention (a window of {window} tokens, shorter than the "
            f"{max_pos}-position context) is not supported",
        )
    layer_types = raw.get("layer_types") or []
    if any(t != "full_attention" for t in layer_types) and window and int(window) < max_pos:
        refuse("layer_types", "only full-attention layers are supported")
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    if float(rope.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0))) != 1.0:
        partial = "partial_rotary_factor"
        problem = "RoPE over part of each head is not supported"
        refuse(partial if partial in raw else "rope_parameters", problem)


def check_rope_scaling(scaling: dict[str, Any] | None, source: object) -> None:
    """A RoPE scaling the engine computes, with every key it needs (ModelLoadError if not)."""
    if not scaling:
        return
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind not in ROPE_SCALING_KEYS:
        raise ModelLoadError(
            source,
            f"field 'rope_scaling': rope type {kind!r} is not supported "
            f"(supported: default, {', '.join(ROPE_SCALING_KEYS)})",
        )
    missing = [k for k in ROPE_SCALING_KEYS[kind] if k not in scaling]
    if missing:
        raise ModelLoadError(
            source,
            f"field 'rope_scaling': {kind} rope scaling is missing {', '.join(map(repr, missing))} "
            f"(it needs {', '.join(ROPE_SCALING_KEYS[kind])})",
        )
