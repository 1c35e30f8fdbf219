"""Cascade attention: decodes that share a prefix of full pages attend to it once, together.

After a fork, n files begin with the same pages. Attending each file's query to all of its keys
reads those shared pages n times. Cascade attention (FlashInfer's cascade, Hydragen) splits
each query's keys in two: the shared prefix, attended by all n queries in one pass that reads
the pages once, and the file's own suffix. Softmax over the union is exact from the two parts'
outputs and log-sum-exps:

    lse = logaddexp(lse_prefix, lse_suffix)
    out = out_prefix * exp(lse_prefix - lse) + out_suffix * exp(lse_suffix - lse)

`shared_prefixes` finds the groups from a batch's page tables (pure, no tensors);
`attend_with_lse` and `merge` are the two halves of the arithmetic; `cascade_plan` and
`attend_cascade` are what the torch backend runs for such a batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from engine.attention.base import BatchLayout
from engine.page_pool import PagePool


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


@dataclass
class CascadePlan:
    """A decode batch in which groups of segments share their first pages (see cascade.py)."""

    slots: Tensor  # [T] where each new token's K/V goes
    suffix_pages: Tensor  # [B, max_pages] each segment's pages after its group's shared ones
    suffix_visible: Tensor  # [B, 1, 1, max_pages * page_size] bool: the suffix's real keys
    groups: list[tuple[Tensor, Tensor]]  # (segments [n], shared pages [P]) per group


def cascade_plan(layout: BatchLayout, groups: list[Group], device: torch.device) -> CascadePlan:
    """Each segment's suffix (its pages after its group's shared ones) and the groups."""
    ps = layout.page_size
    skip = [0] * layout.num_segments
    for g in groups:
        for s in g.segments:
            skip[s] = len(g.pages)
    tables = [t[n:] for t, n in zip(layout.page_tables, skip, strict=True)]
    width = max(len(t) for t in tables)
    suffix = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.long)
    lens = torch.tensor([kv - n * ps for kv, n in zip(layout.kv_lens, skip, strict=True)])
    visible = torch.arange(width * ps)[None, :] < lens[:, None]
    as_long = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
    return CascadePlan(
        layout.slot_mapping,
        suffix.to(device),
        visible[:, None, None, :].to(device),
        [(as_long(g.segments), as_long(g.pages)) for g in groups],
    )


def attend_cascade(layer: int, q: Tensor, plan: CascadePlan, pool: PagePool) -> Tensor:
    """Every segment attends its suffix; each group's queries attend their shared pages at once."""
    t, h, d = q.shape  # one query per segment
    hkv = pool.k.shape[3]
    g = h // hkv
    qg = q.view(t, hkv, g, d)
    width = plan.suffix_pages.shape[1] * pool.page_size

    def keys(pages: Tensor, rows: int, n: int) -> tuple[Tensor, Tensor]:
        """[rows, hkv, n, d] keys and values of these pages, read from the pool once."""
        kk = pool.k[layer].index_select(0, pages.view(-1)).view(rows, n, hkv, d).transpose(1, 2)
        vv = pool.v[layer].index_select(0, pages.view(-1)).view(rows, n, hkv, d).transpose(1, 2)
        return kk, vv

    out, lse = attend_with_lse(qg, *keys(plan.suffix_pages, t, width), plan.suffix_visible)
    for rows, pages in plan.groups:
        n = len(rows)
        shared = pages.numel() * pool.page_size
        qs = qg[rows].transpose(0, 1).reshape(1, hkv, n * g, d)  # all n queries at once
        prefix_out, prefix_lse = attend_with_lse(qs, *keys(pages, 1, shared), None)
        prefix_out = prefix_out.view(hkv, n, g, d).transpose(0, 1)
        prefix_lse = prefix_lse.view(hkv, n, g, 1).transpose(0, 1)
        out[rows] = merge(prefix_out, prefix_lse, out[rows], lse[rows])
    return out.to(q.dtype).reshape(t, h, d)
