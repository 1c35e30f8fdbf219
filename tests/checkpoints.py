"""Writes small random checkpoints in Hugging Face layout, for the real loader to read."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.bench.models import write_wordlevel_tokenizer

VOCAB = 256
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def hf_config(arch: str):  # noqa: ANN201 - a transformers config object
    import transformers as tf

    if arch == "llama":  # Llama 3 rope scaling, untied head, sharded
        return tf.LlamaConfig(
            **COMMON,
            tie_word_embeddings=False,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
                "rope_theta": 500000.0,
            },
        )
    if arch == "llama-tied":
        return tf.LlamaConfig(**COMMON, tie_word_embeddings=True)
    if arch == "mistral":
        return tf.MistralConfig(**COMMON, sliding_window=None, tie_word_embeddings=False)
    if arch == "qwen2":  # qkv bias
        return tf.Qwen2Config(**COMMON, tie_word_embeddings=True)
    if arch == "qwen3":  # q/k norm, head_dim decoupled from hidden / heads
        return tf.Qwen3Config(**COMMON, head_dim=32, tie_word_embeddings=False)
    raise ValueError(arch)


ARCHS = ["llama", "llama-tied", "mistral", "qwen2", "qwen3"]


def write_tokenizer(path: Path, vocab: int = VOCAB) -> None:
    """The bench's word-level tokenizer (`w0 w1 ...`), plus a chat template."""
    write_wordlevel_tokenizer(path, vocab)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["chat_template"] = CHAT_TEMPLATE
    (path / "tokenizer_config.json").write_text(json.dumps(config))


def write_checkpoint(path: Path, arch: str, seed: int = 0):  # noqa: ANN201 - the HF model
    """Random weights (every tensor, biases and norms included) saved with save_pretrained."""
    import transformers as tf

    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(hf_config(arch)).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if "norm" in name else 0.0, 0.1 if "norm" in name else 0.15)
    path.mkdir(parents=True, exist_ok=True)
    shard = "40KB" if arch == "llama" else "50GB"
    model.save_pretrained(path, max_shard_size=shard)
    write_tokenizer(path)
    return model
