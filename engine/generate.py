"""The engine's own generation loop: prefill every prompt in one forward, then decode in batches.

This is the monolithic baseline that programs driving the engine call by call are priced
against, and the loop behind `symphony demo`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import torch
from torch import Tensor

from engine.runner import Runner, Segment
from engine.sampler import SamplingParams, make_generator, sample
from engine.sequence import KVSequence


def generate_stream(
    runner: Runner,
    prompts: list[list[int]],
    max_new_tokens: int,
    params: SamplingParams | None = None,
    seed: int | None = 0,
    stop_ids: tuple[int, ...] = (),
) -> Iterator[list[int | None]]:
    """Yield, per step, each prompt's new token (None once it has stopped)."""
    params = params or SamplingParams()
    seqs = [KVSequence() for _ in prompts]
    gens = [make_generator(None if seed is None else seed + i) for i in range(len(prompts))]
    live = list(range(len(prompts)))
    try:
        segments = [Segment(seqs[i], prompts[i]) for i in live]
        for _ in range(max_new_tokens):
            logits = torch.cat(cast("list[Tensor]", runner.forward(segments)))  # Logits() rows
            tokens = sample(logits, [params] * len(live), [gens[i] for i in live])
            step: list[int | None] = [None] * len(prompts)
            for i, t in zip(live, tokens, strict=True):
                step[i] = t
            yield step
            live = [i for i, t in zip(live, tokens, strict=True) if t not in stop_ids]
            if not live:
                return
            segments = [Segment(seqs[i], [step[i]]) for i in live]  # type: ignore[list-item]
    finally:
        for s in seqs:
            s.release(runner.pool)


def generate(
    runner: Runner,
    prompts: list[list[int]],
    max_new_tokens: int,
    params: SamplingParams | None = None,
    seed: int | None = 0,
    stop_ids: tuple[int, ...] = (),
) -> list[list[int]]:
    """Each prompt's new tokens (up to and including a stop token)."""
    out: list[list[int]] = [[] for _ in prompts]
    for step in generate_stream(runner, prompts, max_new_tokens, params, seed, stop_ids):
        for i, t in enumerate(step):
            if t is not None:
                out[i].append(t)
    return out
