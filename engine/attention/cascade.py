"""Cascade attention: decodes that share a prefix of full pages attend to it once, together.

After a fork, n files begin with the same pages. Attending each file's query to all of its keys
reads those shared pages n times. Cascade attention (FlashInfer's cascade, Hydragen) splits
each query's keys in two: the shared prefix, attended by all n queries in one pass that reads
the pages once, and the file's own suffix. Softmax over the union is exact from the two parts'
outputs and log-sum-exps:

    lse = logaddexp(lse_prefix, lse_suffix)
    out = out_prefix * exp(lse_prefix - lse) + out_suffix * exp(lse_suffix - lse)

`shared_prefixes` finds the groups from a batch's page tables (pure, no tensors);
`attend_with_lse` and `merge` are the two halves of the arithmetic.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from engine.attention.base import BatchLayout


class Group(NamedTuple):
    """Segments whose keys begin with the same full pages."""

    segments: list[int]  # indices into the batch, at least two
    pages: list[int]  # the shared pages, in order: each segment's first len(pages) pages


def shared_prefixes(layout: BatchLayout) -> list[Group]:
    """Groups of decode segments that share their first full pages (longest common prefix).

    Only pages every member has filled before its new token count: the page a decode writes
    into is its own (copy-on-write). Segments are grouped by their first page, so each segment
    is in at most one group.
    """
    ps = layout.page_size
    by_first: dict[int, list[int]] = {}
    for b, (table, kv) in enumerate(zip(layout.page_tables, layout.kv_lens, strict=True)):
        if (kv - 1) // ps >= 1:  # at least one full page before the new token
            by_first.setdefault(table[0], []).append(b)
    groups = []
    for members in by_first.values():
        if len(members) < 2:
            continue
        full = min((layout.kv_lens[b] - 1) // ps for b in members)
        first = layout.page_tables[members[0]]
        n = 0
        while n < full and all(layout.page_tables[b][n] == first[n] for b in members):
            n += 1
        groups.append(Group(members, first[:n]))
    return groups


def attend_with_lse(
    q: Tensor, k: Tensor, v: Tensor, visible: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Softmax attention that also returns each row's log-sum-exp of scores.

    q [..., M, D], k/v [..., N, D], visible broadcastable to [..., M, N] (None: all keys).
    Scores and the weighted sum are computed in float32; returns out [..., M, D] (float32) and
    lse [..., M, 1].
    """
    scores = (q.float() @ k.float().transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    if visible is not None:
        scores = scores.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    return torch.exp(scores - lse) @ v.float(), lse


def merge(out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor) -> Tensor:
    """The attention output over the union of two disjoint key sets, from each set's own."""
    lse = torch.logaddexp(lse_a, lse_b)
    return out_a * torch.exp(lse_a - lse) + out_b * torch.exp(lse_b - lse)
