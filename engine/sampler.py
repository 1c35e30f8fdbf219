"""Turning logits into tokens for a whole batch at once: greedy, temperature, top-k, top-p, min-p.

Each row has its own settings and its own random stream (a seeded `torch.Generator`), so a
sequence samples the same tokens whichever batch it lands in.
"""

from __future__ import annotations

import torch
from torch import Tensor

from engine.wire.errors import InvalidArgument
from engine.wire.records import SamplingParams


def filters(p: SamplingParams) -> bool:
    """Whether top-k, top-p or min-p exclude anything for these settings (top_p 1.0 is off)."""
    return p.top_k > 0 or p.top_p < 1.0 or p.min_p > 0.0


def filter_logits(logits: Tensor, params: list[SamplingParams]) -> Tensor:
    """Temperature-scaled logits with everything top-k / top-p / min-p exclude set to -inf.

    Only the rows whose settings filter are sorted: sorting a vocabulary-wide row costs more
    than the rest of sampling, and plain temperature sampling needs none.
    """
    dev = logits.device
    temp = torch.tensor([p.temperature or 1.0 for p in params], device=dev)[:, None]
    x = logits.float() / temp
    rows = [i for i, p in enumerate(params) if filters(p)]
    if not rows:
        return x
    some = len(rows) < len(params)
    kept = [params[i] for i in rows]
    y = x[rows] if some else x
    sorted_x, order = y.sort(dim=-1, descending=True)
    probs = sorted_x.softmax(-1)
    rank = torch.arange(y.shape[-1], device=dev)[None, :]
    top_k = torch.tensor([p.top_k or y.shape[-1] for p in kept], device=dev)[:, None]
    top_p = torch.tensor([p.top_p for p in kept], device=dev)[:, None]
    min_p = torch.tensor([p.min_p for p in kept], device=dev)[:, None]
    drop = (rank >= top_k) | (probs.cumsum(-1) - probs >= top_p) | (probs < min_p * probs[:, :1])
    drop[:, 0] = False  # the most likely token always survives
    y = y.scatter(-1, order, sorted_x.masked_fill(drop, float("-inf")))
    if not some:
        return y
    x[rows] = y
    return x


def sample(
    logits: Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
) -> list[int]:
    """One token per row of `logits` [N, vocab]."""
    if logits.shape[0] != len(params) or len(params) != len(generators):
        raise InvalidArgument("need one SamplingParams and one generator per row")
    greedy = logits.argmax(-1)
    if all(p.greedy for p in params):
        return greedy.tolist()
    probs = filter_logits(logits, params).softmax(-1)
    # Exponential race: argmax(p / E) with E ~ Exp(1) draws from p; each row from its own stream.
    noise = torch.stack(
        [
            torch.empty(probs.shape[-1], device="cpu").exponential_(generator=g).to(probs.device)
            for g in generators
        ]
    )
    drawn = (probs / noise).argmax(-1)
    pick = torch.tensor([p.greedy for p in params], device=logits.device)
    return torch.where(pick, greedy, drawn).tolist()


def make_generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g
