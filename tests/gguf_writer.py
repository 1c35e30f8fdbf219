"""Writes GGUF files from random-weight Hugging Face models with `gguf`'s own writer, the way
llama.cpp's converter lays them out (q/k rows permuted for Llama, norms in float32), for the
engine's GGUF loader to read. Independent of the engine: only `gguf` and the HF model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

Q = gguf.GGMLQuantizationType
# What gguf itself quantizes (gguf.quants.quantize) and what it only reads.
WRITABLE = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1]
UNSUPPORTED_WRITABLE = [Q.TQ1_0, Q.TQ2_0, Q.MXFP4]  # gguf writes them; the engine refuses them
K_QUANTS = [Q.Q4_K, Q.Q5_K, Q.Q6_K]  # gguf reads but cannot write: random blocks instead

LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def gguf_name(hf: str) -> str:
    if hf in GLOBAL:
        return GLOBAL[hf]
    _, _, i, rest = hf.split(".", 3)  # model.layers.N.rest
    return f"blk.{i}.{LAYER[rest]}"


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter (`LlamaModel.permute`): each head's rotary halves interleaved."""
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def byte_alphabet() -> list[str]:
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    extra = [b for b in range(256) if b not in keep]
    chars = {b: chr(b) for b in keep} | {b: chr(256 + n) for n, b in enumerate(extra)}
    return [chars[b] for b in range(256)]


def random_blocks(qtype: Q, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Random K-quant blocks with small, finite float16 scales (bytes [rows, row_bytes])."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, (rows * cols // block, size), dtype=np.uint8)
    if qtype == Q.Q6_K:  # ql, qh, int8 scales, then d
        blocks[:, -2:] = np.full((len(blocks), 1), 2e-5, np.float16).view(np.uint8)
    else:  # d and dmin first
        scales = rng.uniform(1e-4, 3e-4, (len(blocks), 2)).astype(np.float16)
        blocks[:, :4] = scales.view(np.uint8)
    return blocks.reshape(rows, cols // block * size)


def write_gguf(
    path: Path,
    model: Any,
    qtype: Q,
    *,
    tokenizer: str = "gpt2",
    pre: str = "default",
    arch: str | None = None,
    extra_tensors: dict[str, np.ndarray] | None = None,
    seed: int = 0,
) -> None:
    """Write `model` (a transformers model) to path with its 2-D weights in qtype (K-quants:
    random blocks, since gguf cannot quantize to them)."""
    cfg = model.config
    arch = arch or cfg.model_type  # llama, qwen2, qwen3: the same names in both worlds
    w = gguf.GGUFWriter(path, arch)
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_vocab_size(cfg.vocab_size)
    w.add_tokenizer_model(tokenizer)
    w.add_tokenizer_pre(pre)
    tokens = byte_alphabet()[: cfg.vocab_size]
    w.add_token_list(tokens)
    w.add_token_types([1] * len(tokens))
    w.add_token_merges([])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    rng = np.random.default_rng(seed)
    for hf, tensor in model.state_dict().items():
        if hf == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        data = tensor.detach().float().numpy()
        if arch == "llama" and hf.endswith(("q_proj.weight", "k_proj.weight")):
            data = permute(data, heads if "q_proj" in hf else kv_heads)
        name = gguf_name(hf)
        if data.ndim == 1:  # norms and biases stay float32, as llama.cpp keeps them
            w.add_tensor(name, data)
            continue
        if qtype in K_QUANTS:
            packed = random_blocks(qtype, *data.shape, rng)
        elif qtype == Q.F32:
            packed = data
        elif qtype == Q.F16:
            packed = data.astype(np.float16)
        else:
            packed = gguf.quants.quantize(data, qtype)
        w.add_tensor(name, packed, raw_dtype=None if qtype in (Q.F32, Q.F16) else qtype)
    for name, data in (extra_tensors or {}).items():
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def roundtrip_model(model: Any, qtype: Q) -> Any:
    """model with each 2-D weight quantized to qtype and back by gguf, in place.

    Blocks run along rows, so this is what the file holds, whatever order its rows are in.
    """
    with torch.no_grad():
        for tensor in model.parameters():
            if tensor.ndim == 2:
                data = tensor.float().numpy()
                packed = data.astype(np.float16) if qtype == Q.F16 else data
                if qtype not in (Q.F32, Q.F16):
                    packed = gguf.quants.quantize(data, qtype)
                back = gguf.quants.dequantize(packed, qtype).reshape(data.shape)
                tensor.copy_(torch.from_numpy(np.array(back, dtype=np.float32)))
    return model
