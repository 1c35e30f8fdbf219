"""Loads a Llama-family model from a local Hugging Face-layout directory."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import safe_open
from tqdm import tqdm

from engine.config import ModelConfig
from engine.errors import ModelLoadError
from engine.model import LlamaModel, bf16_matmul_is_slow, rope_inv_freq
from engine.tokenizer import Tokenizer

INDEX_FILE = "model.safetensors.index.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    path: Path
    config: ModelConfig
    model: LlamaModel
    tokenizer: Tokenizer
    generation_config: dict[str, Any] = field(default_factory=dict)
    dtype_reason: str = "asked for"  # why the model runs in its dtype (see default_dtype)

    @property
    def name(self) -> str:
        return self.path.name


class DtypeChoice(NamedTuple):
    """The engine's dtype and why it was chosen (shown by stat_engine and the bench header)."""

    dtype: torch.dtype
    reason: str


def cpu_capability() -> str:
    """What the CPU offers for bfloat16: `AMX`, `AVX512-BF16`, or none (torch's capability)."""
    if torch.cpu._is_amx_tile_supported():
        return "AMX"
    if torch.cpu._is_avx512_bf16_supported():
        return "AVX512-BF16"
    return f"{torch.backends.cpu.get_cpu_capability()}, no bf16 arithmetic"


def default_dtype(device: torch.device, checkpoint: str | None = None) -> DtypeChoice:
    """The dtype a model runs in when the caller names none.

    GPUs run bfloat16. A CPU runs a bfloat16 checkpoint in bfloat16 where it computes bfloat16
    natively (AMX or AVX512-BF16): half the bytes per token, as fast per FLOP. Elsewhere it
    runs float32: bfloat16 matmuls there go one row at a time (`bf16_matmul_is_slow`).
    Float32 is also what matches transformers to 1e-4; tests that compare so pin it.
    """
    if device.type != "cpu":
        return DtypeChoice(torch.bfloat16, f"{device.type} default")
    if checkpoint != "bfloat16":
        return DtypeChoice(torch.float32, f"the checkpoint is {checkpoint or 'float32'}")
    if bf16_matmul_is_slow(device):
        return DtypeChoice(torch.float32, f"CPU without bf16 arithmetic ({cpu_capability()})")
    return DtypeChoice(torch.bfloat16, f"bfloat16 checkpoint, CPU with {cpu_capability()}")


def resolve_dtype(
    dtype: str | torch.dtype | None, device: torch.device, checkpoint: str | None = None
) -> DtypeChoice:
    if dtype is None:
        return default_dtype(device, checkpoint)
    if isinstance(dtype, torch.dtype):
        return DtypeChoice(dtype, "asked for")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DtypeChoice(DTYPES[dtype], "asked for")


def _weight_files(path: Path) -> dict[str, Path]:
    """Tensor name -> the shard that holds it, from the index or by listing the shards."""
    index = path / INDEX_FILE
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ModelLoadError(index, f"bad index file: {e}") from e
        files = {name: path / shard for name, shard in weight_map.items()}
        for shard in set(files.values()):
            if not shard.exists():
                raise ModelLoadError(shard, f"shard named in {INDEX_FILE} is missing")
        return files
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise ModelLoadError(path, "no *.safetensors weight files")
    files = {}
    for shard in shards:
        with _open(shard) as f:
            files.update(dict.fromkeys(f.keys(), shard))
    return files


def _open(shard: Path):  # noqa: ANN202 - safetensors' handle type is private
    try:
        return safe_open(str(shard), framework="pt", device="cpu")
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise ModelLoadError(shard, f"corrupt or unreadable safetensors file: {e}") from e


def _read_tensors(
    files: dict[str, Path], wanted: list[str], show_progress: bool
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    by_shard: dict[Path, list[str]] = {}
    for name in wanted:
        if name not in files:
            raise ModelLoadError(next(iter(files.values())).parent, f"missing tensor {name!r}")
        by_shard.setdefault(files[name], []).append(name)
    bar = tqdm(
        total=len(wanted),
        desc="loading weights",
        unit="tensor",
        delay=1.0,
        disable=not show_progress,
        leave=False,
    )
    with bar:
        for shard, names in by_shard.items():
            with _open(shard) as f:
                for name in names:
                    try:
                        out[name] = f.get_tensor(name)
                    except Exception as e:
                        raise ModelLoadError(shard, f"cannot read tensor {name!r}: {e}") from e
                    bar.update()
    return out


def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    show_progress: bool = True,
) -> LoadedModel:
    """Load config, weights, tokenizer and generation config from a local directory."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ModelLoadError(path, "not a directory")
    device = torch.device(device)
    config = ModelConfig.from_file(path / "config.json")
    dtype, dtype_reason = resolve_dtype(dtype, device, config.dtype)
    tokenizer = Tokenizer.from_dir(path)
    with torch.device("meta"):
        model = LlamaModel(config)
    names = model.hf_names()
    files = _weight_files(path)
    raw = _read_tensors(files, [n for parts in names.values() for n in parts], show_progress)
    params = dict(model.named_parameters())
    state = {}
    for ours, theirs in names.items():
        tensor = (
            torch.cat([raw.pop(n) for n in theirs], dim=0)
            if len(theirs) > 1
            else raw.pop(theirs[0])
        )
        expected = params[ours].shape
        if tensor.shape != expected:
            raise ModelLoadError(
                files[theirs[0]],
                f"tensor {'+'.join(theirs)} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(expected)}",
            )
        state[ours] = tensor.to(device=device, dtype=dtype)
    model.load_state_dict(state, assign=True, strict=True)
    model.inv_freq = rope_inv_freq(config).to(device)
    model.requires_grad_(False).eval()
    if dtype == torch.bfloat16 and bf16_matmul_is_slow(device):
        model.keep_float32_copies()
    gen_file = path / "generation_config.json"
    generation_config = json.loads(gen_file.read_text()) if gen_file.exists() else {}
    return LoadedModel(path, config, model, tokenizer, generation_config, dtype_reason)
