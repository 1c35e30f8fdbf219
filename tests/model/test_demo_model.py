"""The bundled demo model: transformers reads the shipped folder and agrees with the engine."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from engine.loader import load_model
from engine.models import TINY_MODEL
from engine.page_pool import PagePool
from engine.runner import Runner, Segment
from engine.sequence import KVSequence

PROMPT = "The return value of a function is the value of the expression in its return statement."


@pytest.fixture(scope="module")
def loaded():  # noqa: ANN201
    return load_model(TINY_MODEL, dtype="float32", show_progress=False)


def test_the_shipped_folder_is_a_complete_hf_checkpoint() -> None:
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "README.md",
    ):
        assert (TINY_MODEL / name).is_file(), name
    assert json.loads((TINY_MODEL / "config.json").read_text())["architectures"] == [
        "LlamaForCausalLM"
    ]
    assert "## Samples (produced by the engine)" in (TINY_MODEL / "README.md").read_text()


def test_transformers_logits_match_the_engine(loaded) -> None:  # noqa: ANN001
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(TINY_MODEL, dtype=torch.float32).eval()
    ids = loaded.tokenizer.encode(PROMPT)
    assert len(ids) > 8
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]
    pool = PagePool.for_model(loaded.config, 64)
    seq = KVSequence()
    (ours,) = Runner(loaded.model, pool).forward([Segment(seq, ids, outputs=list(range(len(ids))))])
    assert (ours - ref).abs().max().item() <= 1e-4
    seq.release(pool)
    pool.check()


def test_tokenizer_round_trips_and_has_the_chat_roles(loaded) -> None:  # noqa: ANN001
    tok = loaded.tokenizer
    text = "def f(x):\n    return x + 1  # café"
    assert tok.decode(tok.encode(text)) == text
    assert 4000 <= tok.vocab_size <= 8200
    assert tok.bos_id is not None and tok.eos_id is not None
    chat = tok.apply_chat_template([{"role": "user", "content": "What is a list?"}])
    assert "What is a list?" in chat and chat.endswith("<|assistant|>\n")


def test_demo_command_uses_the_bundled_model_and_prints_only_what_was_asked() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", "demo", "--model", "tiny", "--prompt", "A list is"]
        + ["--tokens", "8"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stderr == ""
    assert "loaded tiny" in done.stdout and "A list is" in done.stdout
    assert "[8 tokens" in done.stdout or "tokens," in done.stdout
