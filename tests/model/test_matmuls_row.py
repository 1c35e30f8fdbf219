"""The "batch 1 matmuls vs bound" bench row: a decode step's matrix products, and only those."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from checkpoints import write_checkpoint
from torch import Tensor

from engine.bench import runtime
from engine.loader import load_model
from engine.model import MATRICES, DecoderLayer


def test_the_row_times_every_matrix_of_every_layer_and_the_head_per_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_checkpoint(tmp_path, "qwen2")  # biases on qkv: `project` adds them
    loaded = load_model(tmp_path, dtype="float32", show_progress=False)
    model = loaded.model
    seen: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    project = DecoderLayer.project

    def counting(layer: DecoderLayer, name: str, x: Tensor) -> Tensor:
        out = project(layer, name, x)
        seen.append((name, tuple(x.shape), tuple(out.shape)))
        return out

    heads: list[int] = []
    logits = type(model).logits

    def counting_logits(m: torch.nn.Module, hidden: Tensor) -> Tensor:
        heads.append(hidden.shape[0])
        return logits(m, hidden)  # type: ignore[arg-type]

    monkeypatch.setattr(DecoderLayer, "project", counting)
    monkeypatch.setattr(type(model), "logits", counting_logits)
    monkeypatch.setattr(runtime, "read_bandwidth", lambda device: 1e9)
    runs, steps = 2, 3
    row = runtime.matmuls_row(loaded, runs, steps)

    layer = model.layers[0]
    assert isinstance(layer, DecoderLayer)
    one_step = [
        (n, (1, getattr(layer, n).shape[1]), (1, getattr(layer, n).shape[0])) for n in MATRICES
    ] * len(model.layers)
    assert seen == one_step * steps * (runs + 1)  # a warm-up run, then `runs` timed ones
    assert heads == [1] * steps * (runs + 1)
    bound = 1e9 / runtime.weight_bytes(loaded)
    assert row.case == "batch 1 matmuls vs bound" and row.baseline == round(bound, 2)
    assert row.ratio == pytest.approx(row.engine / bound, abs=1e-3)
