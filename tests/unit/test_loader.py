"""The real loader on checkpoints the tests write, and its errors on broken ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from checkpoints import write_checkpoint
from safetensors.torch import load_file, save_file

from engine import loader
from engine.loader import default_dtype, load_model
from engine.wire.errors import ModelLoadError, ModelNotFound


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("good")
    write_checkpoint(path, "llama-tied")
    (path / "generation_config.json").write_text(json.dumps({"temperature": 0.7}))
    return path


@pytest.fixture
def broken(good: Path, tmp_path: Path) -> Path:
    path = tmp_path / "ckpt"
    shutil.copytree(good, path)
    return path


def test_loads_config_tokenizer_chat_template_and_generation_config(good: Path) -> None:
    loaded = load_model(good, show_progress=False)
    assert loaded.config.architecture == "LlamaForCausalLM" and loaded.config.tie_word_embeddings
    assert loaded.model.dtype == torch.float32  # a float32 checkpoint runs float32 on any CPU
    assert loaded.generation_config == {"temperature": 0.7}
    tok = loaded.tokenizer
    assert tok.decode(tok.encode("w1 w2 w3")) == "w1 w2 w3" and tok.eos_id == tok.vocab_size - 2
    chat = tok.apply_chat_template([{"role": "user", "content": "w5"}])
    assert chat == "<|user|>w5<|eos|><|assistant|>"


def test_bfloat16_on_request(good: Path) -> None:
    assert load_model(good, dtype="bfloat16", show_progress=False).model.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model(good, dtype="float8", show_progress=False)


@pytest.mark.parametrize("slow_bf16", [True, False], ids=["avx2", "bf16-arithmetic"])
def test_the_machine_chooses_the_dtype_of_a_bfloat16_checkpoint(
    good: Path, tmp_path: Path, slow_bf16: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bf16"
    shutil.copytree(good, path)
    weights = path / "model.safetensors"
    save_file({k: v.bfloat16() for k, v in load_file(weights).items()}, weights)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "dtype": "bfloat16"}))
    monkeypatch.setattr(loader, "bf16_matmul_is_slow", lambda device: slow_bf16)
    loaded = load_model(path, show_progress=False)
    want = torch.float32 if slow_bf16 else torch.bfloat16
    assert loaded.model.dtype == want
    assert ("without bf16 arithmetic" in loaded.dtype_reason) == slow_bf16
    assert load_model(path, dtype="float32", show_progress=False).model.dtype == torch.float32


def test_gpus_default_to_bfloat16_and_float32_checkpoints_stay_float32() -> None:
    assert default_dtype(torch.device("cuda"), "float32").dtype == torch.bfloat16
    assert default_dtype(torch.device("cpu"), "float32").dtype == torch.float32
    assert default_dtype(torch.device("cpu"), None).dtype == torch.float32


def test_sharded_checkpoint_with_index(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, "llama")  # tests/checkpoints.py shards this one
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    assert load_model(tmp_path, show_progress=False).config.num_layers == 2


def edit_config(path: Path, **changes: object) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def test_unsupported_architecture(broken: Path) -> None:
    edit_config(broken, architectures=["GPT2LMHeadModel"])
    with pytest.raises(ModelLoadError, match="unsupported architecture 'GPT2LMHeadModel'") as e:
        load_model(broken)
    assert e.value.path.endswith("config.json")


def test_missing_tensor_is_named(broken: Path) -> None:
    weights = load_file(broken / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, broken / "model.safetensors")
    with pytest.raises(ModelLoadError, match="missing tensor 'model.layers.1.mlp.up_proj.weight'"):
        load_model(broken)


def test_shape_mismatch_names_tensor_and_shapes(broken: Path) -> None:
    edit_config(broken, intermediate_size=100)
    with pytest.raises(
        ModelLoadError,
        match=r"gate_proj.weight\+.*up_proj.weight has shape \(192, 64\), expected \(200, 64\)",
    ) as e:  # noqa: E501
        load_model(broken)
    assert e.value.path.endswith("model.safetensors")


def test_corrupt_weights_file_is_named(broken: Path) -> None:
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="corrupt or unreadable") as e:
        load_model(broken)
    assert e.value.path.endswith("model.safetensors")


def test_garbage_header_is_named(broken: Path) -> None:
    (broken / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ModelLoadError, match="model.safetensors: corrupt"):
        load_model(broken)


def test_missing_files(broken: Path, tmp_path: Path) -> None:
    (broken / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no \\*.safetensors"):
        load_model(broken)
    (broken / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="missing config.json"):
        load_model(broken)
    with pytest.raises(ModelNotFound, match="'.*nowhere' not found; looked in") as e:
        load_model(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(e.value) and "registered names" in str(e.value)


def test_bad_json_and_missing_tokenizer(broken: Path) -> None:
    (broken / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match="missing tokenizer.json"):
        load_model(broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="config.json: not valid JSON"):
        load_model(broken)


def test_missing_shard_named_by_index(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, "llama")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(
        ModelLoadError, match="shard named in model.safetensors.index.json is missing"
    ):
        load_model(tmp_path)
