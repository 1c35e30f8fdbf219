"""GGUF files the tests write with `gguf`'s own writer, from random-weight HF models, in every
quantization type gguf writes (and K-quants as random blocks): the engine loads each and matches
its dequantized reference; what it does not read is refused by name."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from checkpoints import COMMON, hf_config
from gguf_writer import K_QUANTS, UNSUPPORTED_WRITABLE, WRITABLE, Q, roundtrip_model, write_gguf

from engine.loader import load_model
from engine.page_pool import PagePool
from engine.runner import Runner, Segment
from engine.sequence import KVSequence
from engine.wire.errors import ModelLoadError

SMALL = COMMON  # the tests' small random Llama
K_SHAPED = dict(SMALL, hidden_size=256, intermediate_size=256)  # K-quant rows: 256 wide
TOKENS = [5, 17, 3, 99, 42, 7, 7, 120, 64, 31, 8, 200, 1, 0, 255, 16, 33]


def hf_model(kind: str, shape: dict[str, Any] = SMALL) -> Any:
    import transformers as tf

    config = {
        "llama": lambda: tf.LlamaConfig(**shape, tie_word_embeddings=False),
        "llama-tied": lambda: tf.LlamaConfig(**shape, tie_word_embeddings=True),
        "llama3-rope": lambda: hf_config("llama"),  # llama3 rope scaling, on SMALL
        "qwen2": lambda: tf.Qwen2Config(**shape, tie_word_embeddings=True),
        "qwen3": lambda: tf.Qwen3Config(**shape, head_dim=32, tie_word_embeddings=False),
    }[kind]()
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if "norm" in name else 0.0, 0.1 if "norm" in name else 0.15)
    return model


def engine_logits(path: Path, tokens: list[int] = TOKENS) -> torch.Tensor:
    loaded = load_model(path, dtype="float32", show_progress=False)
    pool = PagePool.for_model(loaded.config, 16, page_size=4)
    seq = KVSequence()
    (out,) = Runner(loaded.model, pool).forward(
        [Segment(seq, tokens, outputs=list(range(len(tokens))))]
    )
    seq.release(pool)
    pool.check()
    return out


def hf_logits(model: Any, tokens: list[int] = TOKENS) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float()


def assert_close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> None:
    diff = (a - b).abs().max().item()
    assert diff <= tol, f"max |logit difference| {diff:.2e} > {tol}"


@pytest.mark.parametrize("qtype", WRITABLE, ids=lambda q: q.name)
def test_every_type_gguf_writes_loads_and_matches_the_dequantized_model(
    qtype: Q, tmp_path: Path
) -> None:
    """Llama: q/k rows permuted in the file, untied head; the reference is the HF model with
    each weight quantized to qtype and back (blocks run along rows: the layout does not matter)."""
    model = hf_model("llama")
    write_gguf(tmp_path / "m.gguf", model, qtype)
    reference = roundtrip_model(copy.deepcopy(model), qtype)
    assert_close(engine_logits(tmp_path / "m.gguf"), hf_logits(reference))
    if qtype not in (Q.F32, Q.F16, Q.BF16):  # quantization changed the model: a real test
        assert (hf_logits(reference) - hf_logits(model)).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["llama-tied", "qwen2", "qwen3"])
def test_each_architecture_loads_from_gguf(kind: str, tmp_path: Path) -> None:
    """Tied heads, Qwen2's qkv bias (no permutation), Qwen3's q/k norms and wide heads."""
    model = hf_model(kind)
    write_gguf(tmp_path / "m.gguf", model, Q.Q8_0)
    assert_close(engine_logits(tmp_path / "m.gguf"), hf_logits(roundtrip_model(model, Q.Q8_0)))


@pytest.mark.parametrize("qtype", K_QUANTS, ids=lambda q: q.name)
def test_k_quants_match_transformers_gguf_loading(qtype: Q, tmp_path: Path) -> None:
    """gguf cannot write K-quants: the file holds random blocks, and the reference is
    transformers' own reading of the file (its own dequantization and row order)."""
    import transformers

    write_gguf(tmp_path / "m.gguf", hf_model("llama", K_SHAPED), qtype)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file="m.gguf", dtype=torch.float32
    ).eval()
    ours = engine_logits(tmp_path / "m.gguf")
    assert ours.abs().max() > 0.1  # the random blocks make a model with something to say
    assert_close(ours, hf_logits(theirs))


@pytest.mark.parametrize("qtype", UNSUPPORTED_WRITABLE, ids=lambda q: q.name)
def test_a_type_the_engine_does_not_read_is_refused_by_name(qtype: Q, tmp_path: Path) -> None:
    write_gguf(tmp_path / "m.gguf", hf_model("llama-tied", K_SHAPED), qtype)
    with pytest.raises(ModelLoadError, match=rf"m.gguf: tensor '.*' is {qtype.name}, a quant"):
        load_model(tmp_path / "m.gguf", show_progress=False)


def test_refusals_name_the_file_and_the_field(tmp_path: Path) -> None:
    model = hf_model("llama-tied")
    cases = {
        "arch.gguf": (dict(arch="gemma"), r"'general.architecture' = 'gemma' is not supported"),
        "tok.gguf": (dict(tokenizer="bert"), r"'tokenizer.ggml.model' = 'bert' is not supported"),
        "pre.gguf": (dict(pre="jais"), r"'tokenizer.ggml.pre' = 'jais': this pre-tokenizer"),
        "extra.gguf": (
            dict(extra_tensors={"cls.weight": np.ones(8, np.float32)}),
            r"tensor 'cls.weight' is not one of a llama model's",
        ),
        "freqs.gguf": (
            dict(extra_tensors={"rope_freqs.weight": np.ones(5, np.float32)}),
            r"tensor 'rope_freqs.weight' has shape \(5,\), expected \(8,\)",
        ),
    }
    for name, (kw, message) in cases.items():
        write_gguf(tmp_path / name, model, Q.F32, **kw)
        with pytest.raises(ModelLoadError, match=message) as e:
            load_model(tmp_path / name, show_progress=False)
        assert e.value.path == str(tmp_path / name)
    (tmp_path / "junk.gguf").write_bytes(b"GGUF not really")
    with pytest.raises(ModelLoadError, match="junk.gguf: not a readable GGUF file"):
        load_model(tmp_path / "junk.gguf", show_progress=False)


def test_llama_31_rope_factors_give_transformers_llama3_scaling(tmp_path: Path) -> None:
    """Llama 3.1+ files carry their rope scaling as one factor per rotary frequency
    (`rope_freqs.weight`, as llama.cpp's converter computes it): read so, the logits equal
    transformers' on the checkpoint with its llama3 rope scaling, past the original context."""
    model = hf_model("llama3-rope")
    scaled = model.model.rotary_emb.inv_freq.double()
    d = SMALL["hidden_size"] // SMALL["num_attention_heads"]
    plain = 1.0 / (500000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    factors = (plain / scaled).float().numpy()
    assert factors.max() > 2  # the low frequencies are scaled
    tokens = (TOKENS * 4)[:60]
    write_gguf(tmp_path / "plain.gguf", model, Q.F32)
    write_gguf(tmp_path / "m.gguf", model, Q.F32, extra_tensors={"rope_freqs.weight": factors})
    theirs = hf_logits(model, tokens)
    assert_close(engine_logits(tmp_path / "m.gguf", tokens), theirs)
    without = engine_logits(tmp_path / "plain.gguf", tokens)
    assert (without - theirs).abs().max() > 1e-2  # the factors are what makes them equal


def test_config_tokenizer_and_chat_template_come_from_the_metadata(tmp_path: Path) -> None:
    write_gguf(tmp_path / "m.gguf", hf_model("llama"), Q.Q8_0)
    loaded = load_model(tmp_path / "m.gguf", show_progress=False)
    c = loaded.config
    assert (c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads) == (64, 2, 4, 2)
    assert c.max_position_embeddings == 512 and not c.tie_word_embeddings
    assert loaded.name == "m" and loaded.model.dtype == torch.float32
    tok = loaded.tokenizer
    assert tok.vocab_size == 256 and tok.bos_id == 0 and tok.eos_id == 1
    assert tok.decode(tok.encode("héllo wörld\n\t")) == "héllo wörld\n\t"
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "hi"


def test_sentencepiece_vocabulary_equals_transformers(tmp_path: Path) -> None:
    """A `llama` (SentencePiece BPE) vocabulary: ▁ for spaces, byte fallback, merges derived
    from the scores; the engine's tokenizer equals transformers' reading of the file."""
    import gguf
    import transformers

    pieces = ["▁", "t", "h", "e", "a", "n", "d", "▁t", "he", "▁the", "▁a", "an", "▁and", "s"]
    tokens = ["<unk>", "<s>", "</s>", *[f"<0x{b:02X}>" for b in range(256)], *pieces]
    types = [2, 3, 3, *[6] * 256, *[1] * len(pieces)]
    scores = [0.0, 0.0, 0.0, *[0.0] * 256, *[-float(i) for i in range(len(pieces))]]
    w = gguf.GGUFWriter(tmp_path / "sp.gguf", "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_scores(scores)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    from engine.gguf_file import GGUFFile

    ours = GGUFFile(tmp_path / "sp.gguf").tokenizer()
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="sp.gguf")
    for text in ["the and a", " the", "thé ande", "x\ny", "  the  and", "</s>the<s>", ""]:
        want = theirs(text, add_special_tokens=False).input_ids
        assert ours.encode(text) == want, text
        assert ours.decode(want) == theirs.decode(want), text


def test_loading_prints_nothing_unless_asked(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The progress bar shows only on a terminal or when asked (stderr here is a pipe)."""
    write_gguf(tmp_path / "m.gguf", hf_model("llama-tied"), Q.Q8_0)
    capfd.readouterr()
    load_model(tmp_path / "m.gguf")
    assert capfd.readouterr() == ("", "")
    load_model(tmp_path / "m.gguf", show_progress=True)
    assert "loading m.gguf" in capfd.readouterr().err
