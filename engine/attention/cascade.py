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
`attend_cascade` are what the torch backend runs for such a batch. A group decodes over the same
shared pages step after step, so `SharedCopies` keeps them as float32 keys and values from
one step to the next instead of gathering and converting them in every layer of every step.

On a CPU both halves run torch's fused flash-attention kernel in float32, which returns the
log-sum-exp too (`flash_with_lse`); `attend_with_lse`, in float32 with separate operations, is
the reference it is tested against and the path everywhere else. (In bfloat16 the same kernel
ran slower than in float32 on an AVX512-BF16 CPU without AMX, conversions included.)
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


def flash_applies(device: torch.device) -> bool:
    """Whether cascade attention runs `flash_with_lse` (else `attend_with_lse`) on this device."""
    return device.type == "cpu"


def flash_with_lse(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """`attend_with_lse` by torch's fused CPU flash-attention kernel (see `flash_applies`).

    q [B, H, M, D], k/v [B, H, N, D], all of one dtype; bias: None, or additive (0 where a key
    is visible, -inf where not) in q's dtype, broadcastable to [B, H, M, N]. Returns out
    [B, H, M, D] in q's dtype and lse [B, H, M, 1] in float32 (natural log of the scaled
    scores' sum of exps, as `attend_with_lse`'s). Cascade attention calls it in float32.
    """
    kernel = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    out, lse = kernel(q, k, v, attn_mask=bias)
    return out, lse.unsqueeze(-1)


def visible_bias(visible: Tensor, dtype: torch.dtype) -> Tensor:
    """A bool `visible` mask as the additive bias `flash_with_lse` takes."""
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill(
        ~visible, float("-inf")
    )


def merge(out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor) -> Tensor:
    """The attention output over the union of two disjoint key sets, from each set's own.

    The module's formula, with exp(lse_a - lse) = sigmoid(lse_a - lse_b): out_b moved towards
    out_a by that weight, in three operations. Outputs and lse in float32."""
    return torch.lerp(out_b, out_a, torch.sigmoid(lse_a - lse_b))


class SharedCopy(NamedTuple):
    """A group's shared pages as float32 keys and values, [layers, Hkv, tokens, D] each."""

    k: Tensor
    v: Tensor
    stamp: int  # the pool's clock when copied


class SharedCopies:
    """The shared pages of the latest batch's groups, copied once and kept while unchanged.

    Full shared pages do not change (a write into a page someone else holds copies it first);
    a copy is still checked against the pages' versions (`PagePool.version`), and copies that
    no group of the latest batch uses are dropped.
    """

    def __init__(self) -> None:
        self.copies: dict[tuple[int, ...], SharedCopy] = {}

    def for_groups(self, groups: list[Group], pool: PagePool) -> tuple[list[SharedCopy], int]:
        """Each group's copy, and how many tokens had to be copied (the others were kept)."""
        kept: dict[tuple[int, ...], SharedCopy] = {}
        copied = 0
        for g in groups:
            key = tuple(g.pages)
            copy = kept.get(key) or self.copies.get(key)
            if copy is None or any(pool.version[p] > copy.stamp for p in g.pages):
                copy = self._copy(g.pages, pool)
                copied += copy.k.shape[2]
            kept[key] = copy
        self.copies = kept
        return [kept[tuple(g.pages)] for g in groups], copied

    @staticmethod
    def _copy(pages: list[int], pool: PagePool) -> SharedCopy:
        index = torch.tensor(pages, dtype=torch.long, device=pool.k.device)
        layers, _, ps, hkv, d = pool.k.shape

        def one(x: Tensor) -> Tensor:
            x = x.index_select(1, index).view(layers, len(pages) * ps, hkv, d)
            return x.transpose(1, 2).to(torch.float32, memory_format=torch.contiguous_format)

        return SharedCopy(one(pool.k), one(pool.v), pool.clock)


@dataclass
class CascadePlan:
    """A decode batch in which groups of segments share their first pages (see cascade.py)."""

    slots: Tensor  # [T] where each new token's K/V goes
    suffix_pages: Tensor  # [B, max_pages] each segment's pages after its group's shared ones
    suffix_visible: Tensor  # [B, 1, 1, max_pages * page_size] bool: the suffix's real keys
    suffix_bias: Tensor | None  # suffix_visible as `flash_with_lse`'s float32 bias; None: no flash
    groups: list[tuple[Tensor, SharedCopy]]  # (segments [n], their shared keys) per group
    copied: int  # tokens of shared pages this plan copied (0 when every copy was kept)
    whole: bool  # one group of every segment in batch order (all forks of one file): no indexing


def cascade_plan(
    layout: BatchLayout, groups: list[Group], pool: PagePool, shared: SharedCopies
) -> CascadePlan:
    """Each segment's suffix (its pages after its group's shared ones) and the groups."""
    device = pool.k.device
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
    copies, copied = shared.for_groups(groups, pool)
    visible = visible[:, None, None, :].to(device)
    flash = flash_applies(device)
    return CascadePlan(
        layout.slot_mapping,
        suffix.to(device),
        visible,
        visible_bias(visible, torch.float32) if flash else None,
        [(as_long(g.segments), c) for g, c in zip(groups, copies, strict=True)],
        copied,
        len(groups) == 1 and groups[0].segments == list(range(layout.num_segments)),
    )


def attend_cascade(layer: int, q: Tensor, plan: CascadePlan, pool: PagePool) -> Tensor:
    """Every segment attends its suffix; each group's queries attend their shared pages at once."""
    t, h, d = q.shape  # one query per segment
    hkv = pool.k.shape[3]
    g = h // hkv
    qg = q.view(t, hkv, g, d)
    width = plan.suffix_pages.shape[1] * pool.page_size

    def suffix(pool_kv: Tensor) -> Tensor:
        """[t, hkv, width, d]: each segment's own pages, gathered."""
        gathered = pool_kv[layer].index_select(0, plan.suffix_pages.view(-1))
        return gathered.view(t, width, hkv, d).transpose(1, 2)

    flash = plan.suffix_bias is not None
    if flash:
        qg = qg.float()
        k, v = suffix(pool.k).float(), suffix(pool.v).float()
        out, lse = flash_with_lse(qg, k, v, plan.suffix_bias)
    else:
        out, lse = attend_with_lse(qg, suffix(pool.k), suffix(pool.v), plan.suffix_visible)
    for rows, shared in plan.groups:
        n = len(rows)
        mine = qg if plan.whole else qg[rows]
        qs = mine.transpose(0, 1).reshape(1, hkv, n * g, d)  # all n queries at once
        k, v = shared.k[layer], shared.v[layer]
        if flash:
            prefix_out, prefix_lse = flash_with_lse(qs, k[None], v[None], None)
        else:
            prefix_out, prefix_lse = attend_with_lse(qs, k, v, None)
        prefix_out = prefix_out.view(hkv, n, g, d).transpose(0, 1)
        prefix_lse = prefix_lse.view(hkv, n, g, 1).transpose(0, 1)
        if plan.whole:
            out = merge(prefix_out, prefix_lse, out, lse)
        else:
            out[rows] = merge(prefix_out, prefix_lse, out[rows], lse[rows])
    return out.to(q.dtype).reshape(t, h, d)
