"""Every config field that changes the math works or is refused, naming the file and the field;
RoPE stays within 1e-4 of transformers at positions in the thousands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from checkpoints import COMMON, write_checkpoint, write_tokenizer

from engine.loader import load_model
from engine.page_pool import PagePool
from engine.runner import Runner, Segment
from engine.sequence import KVSequence
from engine.wire.errors import ModelLoadError


def edited(path: Path, arch: str, **changes: Any) -> Path:
    write_checkpoint(path, arch)
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))
    return path


REFUSED = {
    "mistral-window": (
        "mistral",
        {"sliding_window": 16},
        r"field 'sliding_window' = 16: sliding-window attention \(a window of 16 tokens",
    ),
    "qwen2-window": (
        "qwen2",
        {"use_sliding_window": True, "sliding_window": 64},
        r"field 'use_sliding_window' = True: sliding-window attention",
    ),
    "gelu": ("llama-tied", {"hidden_act": "gelu"}, r"field 'hidden_act' = 'gelu': only SiLU"),
    "llama3-missing-key": (
        "llama-tied",
        {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0}},
        r"field 'rope_scaling': llama3 rope scaling is missing 'low_freq_factor', "
        r"'original_max_position_embeddings'",
    ),
    "yarn": (
        "llama-tied",
        {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
        r"field 'rope_scaling': rope type 'yarn' is not supported",
    ),
    "partial-rotary": (
        "llama-tied",
        {"partial_rotary_factor": 0.5},
        r"field 'partial_rotary_factor' = 0.5: RoPE over part of each head",
    ),
}


@pytest.mark.parametrize("case", REFUSED)
def test_refused_config_fields_name_the_file_and_the_field(case: str, tmp_path: Path) -> None:
    arch, changes, message = REFUSED[case]
    path = edited(tmp_path, arch, **changes)
    with pytest.raises(ModelLoadError, match=message) as e:
        load_model(path, show_progress=False)
    assert e.value.path == str(path / "config.json")


def test_a_window_no_shorter_than_the_context_changes_nothing_and_loads(tmp_path: Path) -> None:
    path = edited(tmp_path, "mistral", sliding_window=COMMON["max_position_embeddings"])
    assert load_model(path, show_progress=False).config.num_layers == 2


def logits(path: Path, tokens: list[int], positions: list[int]) -> torch.Tensor:
    loaded = load_model(path, dtype="float32", show_progress=False)
    pool = PagePool.for_model(loaded.config, 16, page_size=4)
    seq = KVSequence()
    (out,) = Runner(loaded.model, pool).forward(
        [Segment(seq, tokens, positions, outputs=list(range(len(tokens))))]
    )
    seq.release(pool)
    return out


def save(model: Any, path: Path) -> Path:
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if "norm" in name else 0.0, 0.1 if "norm" in name else 0.15)
    model.save_pretrained(path)
    write_tokenizer(path)
    return path


def test_llama_mlp_bias_is_computed(tmp_path: Path) -> None:
    import transformers as tf

    torch.manual_seed(0)
    hf = tf.LlamaForCausalLM(tf.LlamaConfig(**COMMON, mlp_bias=True)).float().eval()
    path = save(hf, tmp_path)
    tokens = [5, 17, 3, 99, 42, 7, 7, 120]
    with torch.no_grad():
        ref = hf(torch.tensor([tokens])).logits[0]
    assert (logits(path, tokens, list(range(8))) - ref).abs().max() <= 1e-4


def test_llama3_rope_matches_transformers_at_positions_in_the_thousands(tmp_path: Path) -> None:
    import transformers as tf

    rope = {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_theta": 500000.0,
    }
    fields = dict(COMMON, max_position_embeddings=131072, head_dim=64, num_attention_heads=2)
    torch.manual_seed(0)
    hf = tf.LlamaForCausalLM(tf.LlamaConfig(**fields, rope_scaling=rope)).float().eval()
    path = save(hf, tmp_path)
    tokens = [5, 17, 3, 99, 42, 7, 7, 120, 64, 31]
    for start in (2000, 7000, 60000):
        positions = [start + 3 * i for i in range(len(tokens))]
        with torch.no_grad():
            ref = hf(torch.tensor([tokens]), position_ids=torch.tensor([positions])).logits[0]
        diff = (logits(path, tokens, positions) - ref).abs().max().item()
        assert diff <= 1e-4, f"from position {start}: {diff:.2e}"
