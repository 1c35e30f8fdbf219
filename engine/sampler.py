"""Turning logits into tokens for a whole batch at once: greedy, temperature, top-k, top-p, min-p.

Each row has its own settings and its own random stream (a seeded `torch.Generator`), so a
sequence samples the same tokens whichever batch it lands in. A sampled row costs one uniform
draw (inverse CDF), not one per vocabulary entry.
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
    # Inverse CDF: token j when cdf[j-1] <= u * total < cdf[j], one uniform u per row. A token
    # of probability 0 has an empty interval, never drawn. u <= 1 - 2**-24 keeps u * total
    # below the total in float32 (rounded, it falls at most to the float just below), so the
    # draw is never past the last token.
    cdf = probs.cumsum(-1)
    u = uniforms(generators).to(cdf.device)[:, None] * cdf[:, -1:]
    drawn = torch.searchsorted(cdf, u, right=True)[:, 0]
    pick = torch.tensor([p.greedy for p in params], device=logits.device)
    return torch.where(pick, greedy, drawn).tolist()


def uniforms(generators: list[torch.Generator | None]) -> Tensor:
    """One float32 draw from [0, 1) per row, on the CPU, row i's from generators[i] (None:
    torch's default).

    The rows of one generator are drawn in one call, in row order: the same numbers as drawing
    them one at a time, so a row's draws do not depend on the rest of its batch.
    """
    out = torch.empty(len(generators))
    rows_of: dict[int, list[int]] = {}
    for i, g in enumerate(generators):
        rows_of.setdefault(id(g), []).append(i)
    for rows in rows_of.values():
        out[rows] = torch.rand(len(rows), generator=generators[rows[0]])
    return out


def make_generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g
