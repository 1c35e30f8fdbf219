from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from engine.page_pool import PagePool  # noqa: E402


@pytest.fixture
def pools() -> Iterator[list[PagePool]]:
    """Every page pool a test registers here has its invariant checked after the test."""
    made: list[PagePool] = []
    yield made
    for pool in made:
        pool.check()


@pytest.fixture
def make_pool(pools: list[PagePool]) -> Callable[..., PagePool]:
    def make(*args: object, **kwargs: object) -> PagePool:
        pool = PagePool(*args, **kwargs)  # type: ignore[arg-type]
        pools.append(pool)
        return pool

    return make


@pytest.fixture(scope="session")
def tiny_loaded(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - LoadedModel
    """A small random Llama written as a real checkpoint and read by the real loader."""
    from checkpoints import write_checkpoint

    from engine.loader import load_model

    path = tmp_path_factory.mktemp("tiny-llama")
    write_checkpoint(path, "llama-tied")
    return load_model(path, show_progress=False)
