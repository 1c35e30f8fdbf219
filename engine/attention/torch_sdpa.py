"""The reference backend: torch `scaled_dot_product_attention` over keys/values gathered from pages.

Runs everywhere (CPU and CUDA). Grouped-query attention is done by folding each KV head's
query heads into the query length, so keys and values are never repeated in memory. Decodes
that share a prefix of full pages (forks) attend to it once, together (`engine.attention.cascade`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.attention.base import AttentionBackend, BatchLayout
from engine.attention.cascade import Group, attend_with_lse, merge, shared_prefixes
from engine.page_pool import PagePool


@dataclass
class TorchPlan:
    slots: Tensor  # [T] where each new token's K/V goes
    batch: int
    max_q: int
    fresh: bool  # every segment is a whole prompt of the same length: plain causal, no gather
    pages: Tensor | None  # [B, max_pages] page tables to gather, whole pages at a time
    mask: Tensor | None  # [B, 1, max_q, max_pages * page_size] bool; None when all is visible
    rows: tuple[Tensor, Tensor] | None  # (segment, row) of each token when q_lens differ
    keys: int | None = None  # decode with equal kv_lens: attend to exactly this many, unmasked


@dataclass
class CascadePlan:
    """A decode batch in which groups of segments share their first pages (see cascade.py)."""

    slots: Tensor  # [T] where each new token's K/V goes
    suffix_pages: Tensor  # [B, max_pages] each segment's pages after its group's shared ones
    suffix_visible: Tensor  # [B, 1, 1, max_pages * page_size] bool: the suffix's real keys
    groups: list[tuple[Tensor, Tensor]]  # (segments [n], shared pages [P]) per group


class TorchBackend(AttentionBackend):
    name = "torch-sdpa"

    def __init__(self, cascade: bool = True) -> None:
        self.cascade = cascade  # attend shared prefixes once (False: the plain reference)

    def plan(self, layout: BatchLayout, pool: PagePool) -> TorchPlan | CascadePlan:
        device = pool.k.device
        q_lens, kv_lens = layout.q_lens, layout.kv_lens
        b, lq = layout.num_segments, max(q_lens)
        uniform_q = min(q_lens) == lq
        if uniform_q and not layout.has_masks and kv_lens == q_lens:
            return TorchPlan(layout.slot_mapping, b, lq, True, None, None, None)
        if self.cascade and lq == 1 and not layout.has_masks:
            groups = shared_prefixes(layout)
            if groups:
                return cascade_plan(layout, groups, device)
        pages = layout.block_table(device)
        width = pages.shape[1] * layout.page_size
        if lq == 1 and not layout.has_masks and min(kv_lens) == max(kv_lens):
            return TorchPlan(layout.slot_mapping, b, lq, False, pages, None, None, kv_lens[0])
        if lq == 1 and not layout.has_masks:  # decode: only the page tails are hidden
            j = torch.arange(width, device=device)
            visible = j[None, :] < torch.tensor(kv_lens, device=device)[:, None]
            mask = visible[:, None, None, :]
        else:
            dense = layout.dense_mask(device)
            mask = torch.zeros(b, 1, lq, width, dtype=torch.bool, device=device)
            mask[:, 0, :, : dense.shape[-1]] = dense
        rows = None
        if not uniform_q:
            seg = torch.repeat_interleave(
                torch.arange(b, device=device), torch.tensor(q_lens, device=device)
            )
            starts = torch.tensor([0, *q_lens[:-1]], device=device).cumsum(0)
            rows = (seg, torch.arange(len(seg), device=device) - starts[seg])
        return TorchPlan(layout.slot_mapping, b, lq, False, pages, mask, rows)

    def attend(
        self,
        layer: int,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        plan: TorchPlan | CascadePlan,
        pool: PagePool,
    ) -> Tensor:
        pool.write(layer, plan.slots, k, v)
        if isinstance(plan, CascadePlan):
            return attend_cascade(layer, q, plan, pool)
        t, h, d = q.shape
        b, lq = plan.batch, plan.max_q
        if plan.fresh:
            qb, kb, vb = (x.view(b, lq, x.shape[1], d).transpose(1, 2) for x in (q, k, v))
            out = F.scaled_dot_product_attention(qb, kb, vb, is_causal=True, enable_gqa=True)
            return out.transpose(1, 2).reshape(t, h, d)
        assert plan.pages is not None
        hkv = pool.k.shape[3]
        lk = plan.pages.shape[1] * pool.page_size
        index = plan.pages.view(-1)
        kb = pool.k[layer].index_select(0, index).view(b, lk, hkv, d).transpose(1, 2)
        vb = pool.v[layer].index_select(0, index).view(b, lk, hkv, d).transpose(1, 2)
        if plan.rows is None:
            qp = q.view(b, lq, h, d)
        else:
            qp = q.new_zeros(b, lq, h, d)
            qp[plan.rows] = q
        g = h // hkv
        # [B, Lq, Hkv, G, D] -> [B, Hkv, G*Lq, D]: a KV head attends for its G query heads at once
        qg = qp.view(b, lq, hkv, g, d).permute(0, 2, 3, 1, 4).reshape(b, hkv, g * lq, d)
        if plan.keys is not None:
            kb, vb = kb[:, :, : plan.keys], vb[:, :, : plan.keys]
        mask = plan.mask
        if mask is not None and lq > 1:
            mask = mask.expand(b, g, lq, mask.shape[-1]).reshape(b, 1, g * lq, mask.shape[-1])
        out = F.scaled_dot_product_attention(qg, kb, vb, attn_mask=mask)
        out = out.view(b, hkv, g, lq, d).permute(0, 3, 1, 2, 4).reshape(b, lq, h, d)
        return out.reshape(t, h, d) if plan.rows is None else out[plan.rows]


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
