"""The models benches run on: the bundled tiny model and random checkpoints of known shapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tokenizers
import torch
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit

CACHE = Path.home() / ".cache" / "symphony" / "bench"

# Random weights in SmolLM2-135M's shape (HF config field names).
SMOLLM2_135M_SHAPE = dict(
    architectures=["LlamaForCausalLM"],
    hidden_size=576,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    intermediate_size=1536,
    vocab_size=49152,
    tie_word_embeddings=True,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
)
# Random weights in Llama-3.2-1B's shape (1.24B parameters; for GPU benches).
LLAMA_3_2_1B_SHAPE = dict(
    architectures=["LlamaForCausalLM"],
    hidden_size=2048,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    intermediate_size=8192,
    vocab_size=128256,
    tie_word_embeddings=True,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    rope_scaling={
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
)
SHAPES = {"smollm2-135m-shape": SMOLLM2_135M_SHAPE, "llama-3.2-1b-shape": LLAMA_3_2_1B_SHAPE}
TINY_RANDOM_SHAPE = dict(
    architectures=["LlamaForCausalLM"],
    hidden_size=256,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    intermediate_size=704,
    vocab_size=4096,
    tie_word_embeddings=True,
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
)


def write_wordlevel_tokenizer(path: Path, vocab: int) -> None:
    """A whitespace word-level tokenizer `w0 w1 ...` with bos/eos, enough for random models."""
    words = {f"w{i}": i for i in range(vocab - 3)}
    words.update({"<|bos|>": vocab - 3, "<|eos|>": vocab - 2, "<|unk|>": vocab - 1})
    tok = tokenizers.Tokenizer(WordLevel(words, unk_token="<|unk|>"))
    tok.pre_tokenizer = WhitespaceSplit()
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<|bos|>", "eos_token": "<|eos|>"})
    )


def random_checkpoint(name: str, shape: dict, seed: int = 0) -> Path:
    """A random-weight checkpoint in HF layout under the cache, written once and reused.

    Saved in bfloat16, as SmolLM2 and most published checkpoints are.
    """
    path = CACHE / f"{name}-bf16"
    if (path / "model.safetensors").exists():
        return path
    import transformers  # bench-only dependency: the baseline

    path.mkdir(parents=True, exist_ok=True)
    fields = {k: v for k, v in shape.items() if k != "architectures"}
    config = transformers.LlamaConfig(**fields, dtype="bfloat16")
    torch.manual_seed(seed)
    model: Any = transformers.LlamaForCausalLM(config)
    model.to(torch.bfloat16).save_pretrained(path)
    write_wordlevel_tokenizer(path, shape["vocab_size"])
    return path


def bench_model(name: str) -> Path:
    """The checkpoint (an HF-layout directory or a .gguf file) a bench model name stands for."""
    from engine.models import REGISTRY, TINY_MODEL, resolve

    if name in REGISTRY and name != "tiny":  # a real model, as set-up installs it
        return resolve(name).path
    if name == "tiny":
        if (TINY_MODEL / "config.json").exists():
            return TINY_MODEL
        return random_checkpoint("tiny-random", TINY_RANDOM_SHAPE)
    if name in SHAPES:
        return random_checkpoint(name, SHAPES[name])
    raise ValueError(
        f"unknown bench model {name!r}; choose one of {', '.join([*REGISTRY, *SHAPES])}"
    )


def checkpoint_dtype(path: Path) -> str:
    """The dtype a checkpoint's weights are stored in (a GGUF file's run as float32)."""
    from engine.config import ModelConfig

    if path.suffix == ".gguf":
        return "float32"
    return ModelConfig.from_file(path / "config.json").dtype or "float32"


def load_transformers(path: Path, dtype: Any) -> Any:
    """transformers' model for a checkpoint: `from_pretrained`, with `gguf_file` for a GGUF."""
    import transformers

    if path.suffix == ".gguf":
        return transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=dtype
        )
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
