"""Parallel sampling with fork, and self-consistency: a majority vote over the samples."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from typing import NamedTuple

from engine.wire.records import SamplingParams
from workbench.lib.decoding import Generation, generate
from workbench.lib.system import System, discard, ids_of


async def parallel_samples(
    sys: System,
    prompt: str | Sequence[int],
    n: int,
    max_tokens: int = 64,
    params: SamplingParams | None = None,
    seed: int = 0,
    stop_ids: Sequence[int] = (),
    stop: Sequence[str] = (),
) -> list[Generation]:
    """n continuations of one prompt: the prompt is computed once, then forked n times.

    All but the prompt's last token go into one file; each fork shares its pages and feeds
    the last token itself, so the n samples decode side by side in the same batches. Sample i
    is seeded with `seed + i`: the same whatever else runs.
    """
    ids = ids_of(sys, prompt)
    params = params or SamplingParams(temperature=1.0)
    root = await sys.kv.create()
    if len(ids) > 1:
        await sys.forward(root, ids[:-1], outputs=[])
    forks = [await sys.kv.fork(root) for _ in range(n)]
    try:
        return list(
            await asyncio.gather(
                *(
                    generate(sys, f, ids[-1:], max_tokens, params, stop_ids, stop, seed=seed + i)
                    for i, f in enumerate(forks)
                )
            )
        )
    finally:
        for f in [*forks, root]:
            await discard(sys, f)


class Vote(NamedTuple):
    answer: str | None  # the most common answer (None if no sample gave one)
    counts: dict[str, int]  # each answer and how many samples gave it
    samples: list[Generation]


async def self_consistency(
    sys: System,
    prompt: str | Sequence[int],
    answer: Callable[[str], str | None],
    n: int = 8,
    max_tokens: int = 64,
    params: SamplingParams | None = None,
    seed: int = 0,
) -> Vote:
    """Sample n reasoning paths and vote on their final answers (`answer` reads one from a
    sample's text, or None). Ties go to the answer seen first."""
    samples = await parallel_samples(sys, prompt, n, max_tokens, params, seed)
    counts = Counter(a for a in (answer(s.text) for s in samples) if a is not None)
    best = counts.most_common(1)[0][0] if counts else None
    return Vote(best, dict(counts), samples)
