"""`score`: how likely the model finds each candidate continuation of a prompt."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from engine.wire.records import LogProbs
from workbench.lib.system import System, discard, ids_of


async def score(
    sys: System, prompt: str | Sequence[int], candidates: Sequence[str | Sequence[int]]
) -> list[float]:
    """The total log-probability of each candidate after the prompt (one prefill, a fork each).

    Each fork feeds the prompt's last token and the candidate but its last token in one
    forward, and asks for the log-probability of each candidate token at the position before it.
    """
    ids = ids_of(sys, prompt)
    cands = [ids_of(sys, c) for c in candidates]
    if not ids or any(not c for c in cands):
        raise ValueError("score needs a prompt and non-empty candidates")
    root = await sys.kv.create()
    if len(ids) > 1:
        await sys.forward(root, ids[:-1], outputs=[])

    async def one(cand: list[int]) -> float:
        f = await sys.kv.fork(root)
        try:
            fed = ids[-1:] + cand[:-1]
            rows = await sys.forward(
                f, fed, outputs=list(range(len(fed))), returns=LogProbs([[t] for t in cand])
            )
            return float(sum(r[0] for r in rows))
        finally:
            await discard(sys, f)

    try:
        return list(await asyncio.gather(*(one(c) for c in cands)))
    finally:
        await discard(sys, root)
