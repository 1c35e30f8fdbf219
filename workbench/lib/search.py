"""`beam_search`: keep the `width` most likely continuations; fork a beam to extend it twice,
drop the ones that fall out."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from engine.wire.records import TopK
from workbench.lib.system import System, discard, ids_of


class Beam(NamedTuple):
    tokens: list[int]  # the continuation
    logprob: float  # its total log-probability under the model
    finished: bool  # ended by a stop token


class _Live(NamedTuple):
    file: Any  # holds the prompt and `tokens` but the last, which goes in at the next step
    tokens: list[int]
    logprob: float
    pending: int


async def beam_search(
    sys: System,
    prompt: str | Sequence[int],
    width: int = 4,
    max_tokens: int = 32,
    stop_ids: Sequence[int] = (),
    on_step: Callable[[list[Beam], int, int], None] | None = None,
) -> list[Beam]:
    """The most likely continuations found by beam search, best first (at most `width`).

    Each step asks every live beam for its `width` most likely next tokens (one batch for all
    beams), keeps the `width` best extensions overall, forks a beam that is extended more than
    once (sharing its pages) and removes the files of beams that are not extended at all.
    Width 1 is greedy decoding. `on_step(beams, forked, dropped)` sees each step's live beams,
    best first, and how many files that step forked and removed.
    """
    ids = ids_of(sys, prompt)
    root = await sys.kv.create()
    if len(ids) > 1:
        await sys.forward(root, ids[:-1], outputs=[])
    live = [_Live(root, [], 0.0, ids[-1])]
    done: list[Beam] = []
    try:
        for _ in range(max_tokens):
            dists = await asyncio.gather(
                *(sys.forward(b.file, [b.pending], returns=TopK(width)) for b in live)
            )
            extensions = sorted(
                (
                    (b.logprob + math.log(p), i, t)
                    for i, (b, d) in enumerate(zip(live, dists, strict=True))
                    for t, p in zip(d.ids, d.probs, strict=True)
                    if p > 0
                ),
                key=lambda e: -e[0],
            )[:width]
            picks: dict[int, list[tuple[float, int]]] = {}
            for logprob, i, t in extensions:
                picks.setdefault(i, []).append((logprob, t))
            nxt = []
            forked = dropped = 0
            for i, b in enumerate(live):
                mine = picks.get(i, [])
                files = [b.file] + [await sys.kv.fork(b.file) for _ in mine[1:]]
                forked += len(files) - 1
                if not mine:
                    await discard(sys, b.file)
                    dropped += 1
                for f, (logprob, t) in zip(files, mine, strict=False):
                    if t in stop_ids:
                        done.append(Beam([*b.tokens, t], logprob, True))
                        await discard(sys, f)
                    else:
                        nxt.append(_Live(f, [*b.tokens, t], logprob, t))
            live = sorted(nxt, key=lambda b: -b.logprob)
            if on_step is not None:
                on_step([Beam(b.tokens, b.logprob, False) for b in live], forked, dropped)
            if not live:
                break
    finally:
        for b in live:
            await discard(sys, b.file)
    beams = done + [Beam(b.tokens, b.logprob, False) for b in live]
    return sorted(beams, key=lambda b: -b.logprob)[:width]
