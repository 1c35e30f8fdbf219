"""The demo-model training script, run in its `--quick` mode (seconds)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from safetensors.torch import load_file

from engine.config import ModelConfig
from engine.tokenizer import Tokenizer
from engine.train_demo import BOS, EOS, QUICK, SPECIAL_TOKENS, build_corpus, main

HF_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "training.json",
    "README.md",
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    assert main(["--quick", "--quiet", "--seed", "3", "--out", str(out)]) == 0
    return out


def test_writes_hugging_face_layout(quick_run: Path) -> None:
    for name in HF_FILES:
        assert (quick_run / name).is_file(), name
    config = json.loads((quick_run / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    cfg = ModelConfig.from_dict(config)
    weights = load_file(str(quick_run / "model.safetensors"))
    assert sum(w.numel() for w in weights.values()) == cfg.num_params
    assert "model.layers.0.self_attn.q_proj.weight" in weights


def test_tokenizer_round_trips_and_has_special_tokens(quick_run: Path) -> None:
    tok = Tokenizer.from_dir(quick_run)
    text = "def f(x):\n    return x ** 2  # squares, naïvely — ok?\n"
    assert tok.decode(tok.encode(text)) == text
    for special in SPECIAL_TOKENS:
        assert len(tok.encode(special)) == 1, special
    assert tok.bos_token == BOS and tok.eos_token == EOS
    assert tok.bos_id is not None and tok.eos_id is not None
    config = json.loads((quick_run / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (tok.bos_id, tok.eos_id)


def test_chat_template_renders(quick_run: Path) -> None:
    tok = Tokenizer.from_dir(quick_run)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = tok.apply_chat_template(messages)
    assert text == f"{BOS}<|system|>\nBe brief.{EOS}\n<|user|>\nHi{EOS}\n<|assistant|>\n"
    ids = tok.encode(text)
    assert ids[0] == tok.bos_id and ids.count(tok.eos_id) == 2


def test_held_out_documents_are_not_trained_on(quick_run: Path) -> None:
    corpus = build_corpus(replace(QUICK, seed=3))
    assert corpus.held_out and corpus.train
    train_groups = {d.group for d in corpus.train}
    held_groups = {d.group for d in corpus.held_out}
    assert not train_groups & held_groups
    train_texts = {d.text for d in corpus.train}
    assert not any(d.text in train_texts for d in corpus.held_out)
    stats = json.loads((quick_run / "training.json").read_text())
    assert stats["held_out_names"] == sorted(held_groups)
    assert stats["corpus_sha256"] == corpus.digest


def test_same_seed_gives_same_weights(quick_run: Path, tmp_path: Path) -> None:
    assert main(["--quick", "--quiet", "--seed", "3", "--out", str(tmp_path)]) == 0
    for name in ("model.safetensors", "tokenizer.json"):
        assert (tmp_path / name).read_bytes() == (quick_run / name).read_bytes(), name
    first = json.loads((quick_run / "training.json").read_text())
    second = json.loads((tmp_path / "training.json").read_text())
    assert first["curve"] == second["curve"]
