"""Loads a Llama-family model: a local Hugging Face-layout directory, a GGUF file, a registered
name (`smollm2-135m-instruct`, `tiny`) or a model id in the local HF cache (engine.models)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import safe_open
from tqdm import tqdm

from engine.config import ModelConfig
from engine.model import LlamaModel, bf16_matmul_is_slow, packs_bf16_weights, rope_inv_freq
from engine.tokenizer import Tokenizer
from engine.wire.errors import ModelLoadError

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
    name: str = ""  # the registered name, or the directory's or file's (default)
    load_seconds: float = 0.0  # how long load_model took

    def __post_init__(self) -> None:
        if not self.name:
            self.name = self.path.stem if self.path.suffix == ".gguf" else self.path.name

    @property
    def stop_ids(self) -> list[int]:
        """Token ids that end a reply: the config's eos ids and the tokenizer's eos."""
        ids = list(self.config.eos_token_id)
        gen_eos = self.generation_config.get("eos_token_id")
        ids += [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])
        if self.tokenizer.eos_id is not None:
            ids.append(self.tokenizer.eos_id)
        return list(dict.fromkeys(ids))


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
    model: str | Path,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    show_progress: bool | None = None,
) -> LoadedModel:
    """Load config, weights, tokenizer and generation config.

    model: a registered name (`smollm2-135m-instruct`, `tiny`), a local HF-layout directory, a
    `.gguf` file, or an HF model id found in the local cache (see `engine.models.resolve`).
    show_progress: a progress bar on stderr; default only where stderr is a terminal.
    """
    from engine.models import resolve

    start = time.perf_counter()
    found = resolve(model)
    show = sys.stderr.isatty() if show_progress is None else show_progress
    device = torch.device(device)
    if found.path.is_file():
        if found.path.suffix != ".gguf":
            raise ModelLoadError(found.path, "not a model: a .gguf file or a model directory")
        loaded = _load_gguf(found.path, device, dtype, show)
    else:
        loaded = _load_hf_dir(found.path, device, dtype, show)
    loaded.name = found.name
    loaded.load_seconds = time.perf_counter() - start
    return loaded


def _load_hf_dir(
    path: Path, device: torch.device, dtype: str | torch.dtype | None, show_progress: bool
) -> LoadedModel:
    config = ModelConfig.from_file(path / "config.json")
    dtype, dtype_reason = resolve_dtype(dtype, device, config.dtype)
    tokenizer = Tokenizer.from_dir(path)
    with torch.device("meta"):
        model = LlamaModel(config)
    names = model.hf_names()
    files = _weight_files(path)
    raw = _read_tensors(files, [n for parts in names.values() for n in parts], show_progress)
    _assign(model, raw, lambda name: files[name], device, dtype)
    gen_file = path / "generation_config.json"
    generation_config = json.loads(gen_file.read_text()) if gen_file.exists() else {}
    return LoadedModel(path, config, model, tokenizer, generation_config, dtype_reason)


def _load_gguf(
    path: Path, device: torch.device, dtype: str | torch.dtype | None, show_progress: bool
) -> LoadedModel:
    from engine.gguf_file import GGUFFile

    file = GGUFFile(path)
    config = file.config()
    tokenizer = file.tokenizer()
    # A quantized file's weights are no dtype of their own: they run as a float32 checkpoint.
    dtype, dtype_reason = resolve_dtype(dtype, device, None)
    with torch.device("meta"):
        model = LlamaModel(config)
    raw = file.hf_tensors(config, dtype, show_progress)
    wanted = {n for parts in model.hf_names().values() for n in parts}
    extra = sorted(set(raw) - wanted)
    if extra:
        raise ModelLoadError(path, f"tensors this {config.architecture} does not use: {extra[:5]}")
    _assign(model, raw, lambda name: path, device, dtype)
    factors = file.rope_factors()
    if factors is not None:  # Llama 3.1+: the file's rope scaling, as per-frequency factors
        if factors.shape != model.inv_freq.shape:
            raise ModelLoadError(
                path,
                f"tensor 'rope_freqs.weight' has shape {tuple(factors.shape)}, "
                f"expected {tuple(model.inv_freq.shape)}",
            )
        model.inv_freq = model.inv_freq / factors.to(model.inv_freq)
    generation_config = {"eos_token_id": list(config.eos_token_id)}
    return LoadedModel(path, config, model, tokenizer, generation_config, dtype_reason)


def _assign(
    model: LlamaModel,
    raw: dict[str, torch.Tensor],
    file_of: Callable[[str], Path],
    device: torch.device,
    dtype: torch.dtype,
) -> None:
    """Our fused parameters from the HF-named tensors in raw; shapes checked, names given."""
    params = dict(model.named_parameters())
    state = {}
    for ours, theirs in model.hf_names().items():
        missing = [n for n in theirs if n not in raw]
        if missing:
            raise ModelLoadError(file_of(theirs[0]), f"missing tensor {missing[0]!r}")
        tensor = (
            torch.cat([raw.pop(n) for n in theirs], dim=0)
            if len(theirs) > 1
            else raw.pop(theirs[0])
        )
        expected = params[ours].shape
        if tensor.shape != expected:
            raise ModelLoadError(
                file_of(theirs[0]),
                f"tensor {'+'.join(theirs)} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(expected)}",
            )
        state[ours] = tensor.to(device=device, dtype=dtype)
    model.load_state_dict(state, assign=True, strict=True)
    model.inv_freq = rope_inv_freq(model.cfg).to(device)
    model.requires_grad_(False).eval()
    if dtype == torch.bfloat16 and bf16_matmul_is_slow(device):
        model.keep_float32_copies()
    elif dtype == torch.bfloat16 and packs_bf16_weights(device):
        model.pack_weights()
