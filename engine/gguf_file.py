"""Reads a Llama-family model from a GGUF file (llama.cpp's format; what Ollama and LM Studio use).

A GGUF file holds everything: the config as metadata (`llama.embedding_length`, ...), the
tokenizer (vocabulary, merges, pre-tokenizer type, special token ids, chat template) and the
tensors, often quantized. Here the metadata becomes a `ModelConfig` (through the same checks as
a `config.json`), the tokenizer a `tokenizers.Tokenizer`, and each tensor is dequantized with
the `gguf` package, renamed to its Hugging Face name and put back in Hugging Face's layout
(llama.cpp permutes the rows of Llama's q and k projections; that is undone).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import tokenizers
import torch
from tokenizers import AddedToken, Regex, decoders, pre_tokenizers
from tokenizers.models import BPE
from tqdm import tqdm

from engine.config import ModelConfig
from engine.tokenizer import Tokenizer
from engine.wire.errors import ModelLoadError

# general.architecture -> the Hugging Face architecture it is (Mistral files say "llama").
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
PERMUTED_QK = {"llama"}  # llama.cpp's converter interleaves q/k rows for these

# The quantization types the engine reads (gguf dequantizes each of them).
Q = gguf.GGMLQuantizationType
SUPPORTED_TYPES = {
    Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q4_K, Q.Q5_K, Q.Q6_K,
}  # fmt: skip

# Pre-tokenizer regexes of byte-level BPE vocabularies, by `tokenizer.ggml.pre` (llama.cpp's
# names), as in the models' own tokenizer.json files.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLITS = {"llama3": LLAMA3_SPLIT, "llama-v3": LLAMA3_SPLIT, "llama-bpe": LLAMA3_SPLIT}
SPLITS.update({"qwen2": QWEN2_SPLIT, "deepseek-r1-qwen": QWEN2_SPLIT})
GPT2_PRE = ("default", "gpt2", "smollm")  # GPT-2's own regex (SmolLM: digits one by one first)
SUPPORTED_PRE = (*GPT2_PRE, *SPLITS)

CONTROL, USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values


class GGUFFile:
    """One GGUF file, opened (memory-mapped): its metadata, config, tokenizer and tensors."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.reader = gguf.GGUFReader(path)
        except Exception as e:  # gguf raises ValueError and friends for a damaged file
            raise ModelLoadError(path, f"not a readable GGUF file: {e}") from e
        self.tensors = {t.name: t for t in self.reader.tensors}
        arch = self.get("general.architecture")
        if arch not in ARCHITECTURES:
            raise ModelLoadError(
                path,
                f"field 'general.architecture' = {arch!r} is not supported "
                f"(supported: {', '.join(ARCHITECTURES)})",
            )
        self.arch: str = arch

    def get(self, key: str, default: Any = None) -> Any:
        """A metadata value as plain Python (str, int, float, list), or default if absent."""
        field = self.reader.fields.get(key)
        return default if field is None else field.contents()

    def need(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise ModelLoadError(self.path, f"missing field {key!r}")
        return value

    # --- the config ------------------------------------------------------------------------------

    def config(self) -> ModelConfig:
        """The model's config, as the Hugging Face config.json this file was converted from."""
        a = self.arch
        heads = int(self.need(f"{a}.attention.head_count"))
        hidden = int(self.need(f"{a}.embedding_length"))
        head_dim = int(self.get(f"{a}.attention.key_length", hidden // heads))
        rope_dim = int(self.get(f"{a}.rope.dimension_count", head_dim))
        if rope_dim != head_dim:
            raise ModelLoadError(
                self.path,
                f"field '{a}.rope.dimension_count' = {rope_dim}: RoPE over part of each "
                f"{head_dim}-wide head is not supported",
            )
        tokens = self.need("tokenizer.ggml.tokens")
        eos = [self.get(f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
        raw: dict[str, Any] = {
            "architectures": [ARCHITECTURES[a]],
            "vocab_size": int(self.get(f"{a}.vocab_size", len(tokens))),
            "hidden_size": hidden,
            "intermediate_size": int(self.need(f"{a}.feed_forward_length")),
            "num_hidden_layers": int(self.need(f"{a}.block_count")),
            "num_attention_heads": heads,
            "num_key_value_heads": int(self.get(f"{a}.attention.head_count_kv", heads)),
            "head_dim": head_dim,
            "rms_norm_eps": float(self.need(f"{a}.attention.layer_norm_rms_epsilon")),
            "rope_theta": float(self.get(f"{a}.rope.freq_base", 10000.0)),
            "max_position_embeddings": int(self.need(f"{a}.context_length")),
            "tie_word_embeddings": "output.weight" not in self.tensors,
            "attention_bias": False,
            "bos_token_id": self.get("tokenizer.ggml.bos_token_id"),
            "eos_token_id": list(dict.fromkeys(int(i) for i in eos if i is not None)),
        }
        scaling = self.get(f"{a}.rope.scaling.type")
        if scaling not in (None, "none"):
            raw["rope_scaling"] = {
                "rope_type": scaling,
                "factor": self.get(f"{a}.rope.scaling.factor"),
            }
        window = self.get(f"{a}.attention.sliding_window")
        if window is not None:
            raw["sliding_window"], raw["use_sliding_window"] = int(window), True
        return ModelConfig.from_dict(raw, self.path)

    # --- the tokenizer ---------------------------------------------------------------------------

    def tokenizer(self) -> Tokenizer:
        """The tokenizer the metadata describes, with its special tokens and chat template."""
        kind = self.get("tokenizer.ggml.model")
        tokens: list[str] = self.need("tokenizer.ggml.tokens")
        if kind == "gpt2":
            backend = self._byte_level_bpe(tokens)
        elif kind == "llama":
            backend = self._sentencepiece_bpe(tokens)
        else:
            raise ModelLoadError(
                self.path,
                f"field 'tokenizer.ggml.model' = {kind!r} is not supported (supported: gpt2, "
                "a byte-level BPE; llama, a SentencePiece-style BPE)",
            )
        types = self.get("tokenizer.ggml.token_type") or [1] * len(tokens)
        spelled = set(byte_to_char().values()) if kind == "gpt2" else None
        backend.add_special_tokens(
            [
                AddedToken(t, normalized=False, special=True)
                for t, kind_ in zip(tokens, types, strict=True)
                # (a byte-level vocab spells every real token in its byte alphabet: a control
                # token spelled otherwise is a converter's mislabel, not a token to match)
                if kind_ == CONTROL and (spelled is None or set(t) <= spelled)
            ]
        )
        backend.add_tokens(
            [
                AddedToken(t, normalized=False, special=False)
                for t, kind_ in zip(tokens, types, strict=True)
                if kind_ == USER_DEFINED
            ]
        )

        def token(key: str) -> str | None:
            i = self.get(f"tokenizer.ggml.{key}_token_id")
            return tokens[i] if i is not None and 0 <= i < len(tokens) else None

        config = {
            "bos_token": token("bos"),
            "eos_token": token("eos"),
            "unk_token": token("unknown"),
            "pad_token": token("padding"),
            "chat_template": self.get("tokenizer.chat_template"),
            "add_bos_token": bool(self.get("tokenizer.ggml.add_bos_token", kind == "llama")),
        }
        return Tokenizer(backend, config)

    def _byte_level_bpe(self, tokens: list[str]) -> tokenizers.Tokenizer:
        pre = self.get("tokenizer.ggml.pre", "default")
        if pre not in SUPPORTED_PRE:
            raise ModelLoadError(
                self.path,
                f"field 'tokenizer.ggml.pre' = {pre!r}: this pre-tokenizer is not supported "
                f"(supported: {', '.join(SUPPORTED_PRE)})",
            )
        merges = [tuple(m.split(" ", 1)) for m in self.get("tokenizer.ggml.merges", [])]
        chars = byte_to_char()
        alphabet = set(chars.values())
        vocab = {
            t if set(t) <= alphabet else "".join(chars[b] for b in t.encode()): i
            for i, t in enumerate(tokens)
        }
        tok = tokenizers.Tokenizer(BPE(vocab, merges, fuse_unk=False, ignore_merges=pre in SPLITS))
        if pre in SPLITS:
            tok.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(Regex(SPLITS[pre]), behavior="isolated"),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                ]
            )
        elif pre == "smollm":
            tok.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Digits(individual_digits=True),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
                ]
            )
        else:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        return tok

    def _sentencepiece_bpe(self, tokens: list[str]) -> tokenizers.Tokenizer:
        """A SentencePiece BPE vocabulary (Llama 2, Mistral): `▁` for spaces, byte fallback."""
        vocab = {t: i for i, t in enumerate(tokens)}
        file_merges = self.get("tokenizer.ggml.merges")
        if file_merges is not None:
            merges = [tuple(m.split(" ", 1)) for m in file_merges]
        else:
            scores = self.need("tokenizer.ggml.scores")
            merges = merges_from_scores(vocab, dict(zip(tokens, scores, strict=True)))
        unk = self.get("tokenizer.ggml.unknown_token_id")
        tok = tokenizers.Tokenizer(
            BPE(
                vocab,
                merges,
                unk_token=tokens[unk] if unk is not None else None,
                fuse_unk=True,
                byte_fallback=True,
            )
        )
        prefix = bool(self.get("tokenizer.ggml.add_space_prefix", True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="▁", prepend_scheme="first" if prefix else "never", split=False
        )
        steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        tok.decoder = decoders.Sequence(
            [*steps, decoders.Strip(content=" ", left=1, right=0)] if prefix else steps
        )
        return tok

    # --- the tensors -----------------------------------------------------------------------------

    def rope_factors(self) -> torch.Tensor | None:
        """llama.cpp's RoPE frequency factors (`rope_freqs.weight`, in Llama 3.1 and later files:
        their rope scaling, computed): each rotary frequency is divided by its factor."""
        tensor = self.tensors.get(ROPE_FREQS)
        if tensor is None:
            return None
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        return torch.from_numpy(np.array(values, dtype=np.float32)).flatten()

    def hf_tensors(
        self, config: ModelConfig, dtype: torch.dtype, show_progress: bool
    ) -> dict[str, torch.Tensor]:
        """Every tensor, dequantized to dtype, under its Hugging Face name and in HF's layout.

        ModelLoadError for a tensor of a type the engine does not read, or one it does not know.
        """
        out: dict[str, torch.Tensor] = {}
        bar = tqdm(
            total=len(self.tensors),
            desc=f"loading {self.path.name}",
            unit="tensor",
            disable=not show_progress,
            leave=False,
        )
        with bar:
            for name, tensor in self.tensors.items():
                if name == ROPE_FREQS:
                    bar.update()
                    continue  # not a weight: see rope_factors
                hf = hf_name(name)
                if hf is None:
                    raise ModelLoadError(
                        self.path, f"tensor {name!r} is not one of a {self.arch} model's"
                    )
                if tensor.tensor_type not in SUPPORTED_TYPES:
                    raise ModelLoadError(
                        self.path,
                        f"tensor {name!r} is {tensor.tensor_type.name}, a quantization type the "
                        f"engine does not read (supported: "
                        f"{', '.join(t.name for t in sorted(SUPPORTED_TYPES))})",
                    )
                values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
                # (a copy: the file is mapped read-only)
                weight = torch.from_numpy(np.array(values, dtype=np.float32))
                if self.arch in PERMUTED_QK and hf.endswith(("q_proj.weight", "k_proj.weight")):
                    heads = config.num_heads if "q_proj" in hf else config.num_kv_heads
                    weight = unpermute_rows(weight, heads)
                out[hf] = weight.to(dtype)
                bar.update()
        return out


ROPE_FREQS = "rope_freqs.weight"


def _layer_names() -> Iterator[tuple[str, str]]:
    yield "attn_norm.weight", "input_layernorm.weight"
    yield "ffn_norm.weight", "post_attention_layernorm.weight"
    for ours, theirs in (("q", "q"), ("k", "k"), ("v", "v"), ("output", "o")):
        for kind in ("weight", "bias"):
            yield f"attn_{ours}.{kind}", f"self_attn.{theirs}_proj.{kind}"
    yield "attn_q_norm.weight", "self_attn.q_norm.weight"
    yield "attn_k_norm.weight", "self_attn.k_norm.weight"
    for part in ("gate", "up", "down"):
        yield f"ffn_{part}.weight", f"mlp.{part}_proj.weight"


GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
LAYER_NAMES = dict(_layer_names())


def hf_name(name: str) -> str | None:
    """llama.cpp's tensor name -> Hugging Face's (`blk.3.attn_q.weight` ->
    `model.layers.3.self_attn.q_proj.weight`), or None for a tensor the engine does not know."""
    if name in GLOBAL_NAMES:
        return GLOBAL_NAMES[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in LAYER_NAMES:
        return f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}"
    return None


def unpermute_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row order: per head it interleaves the two rotary halves
    (rows 0, d/2, 1, d/2+1, ...); Hugging Face keeps the halves apart (rotate-half RoPE)."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:])
        .transpose(1, 2)
        .reshape(weight.shape)
    )


def byte_to_char() -> dict[int, str]:
    """GPT-2's byte-level alphabet: each byte as the printable character BPE vocabularies use."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    chars = {b: chr(b) for b in keep}
    extra = (b for b in range(256) if b not in chars)
    chars.update({b: chr(256 + n) for n, b in enumerate(extra)})
    return chars


def merges_from_scores(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """The merges a SentencePiece vocabulary implies: every split of a token into two tokens,
    best-scored result first (what transformers and llama.cpp do for files without merges)."""
    merges: list[tuple[str, str, float]] = []
    for token, score in scores.items():
        pairs = [
            (token[:i], token[i:], score)
            for i in range(1, len(token))
            if token[:i] in vocab and token[i:] in vocab
        ]
        merges.extend(sorted(pairs, key=lambda p: (vocab[p[0]], vocab[p[1]])))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(a, b) for a, b, _ in merges]
