"""The reference backend: torch `scaled_dot_product_attention` over keys/values gathered from pages.

Runs everywhere (CPU and CUDA). Grouped-query attention is done by folding each KV head's
query heads into the query length, so keys and values are never repeated in memory. Decodes
that share a prefix of full pages (forks) attend to it once, together (`engine.attention.cascade`);
other decode batches attend a contiguous copy of their files kept across steps, which each step
only appends to (`engine.attention.resident`). `TorchBackend(cascade=False, resident=False)` is
the plain reference both are tested against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.attention.base import AttentionBackend, BatchLayout, Traffic, distinct_tokens
from engine.attention.cascade import (
    CascadePlan,
    SharedCopies,
    attend_cascade,
    cascade_plan,
    shared_prefixes,
)
from engine.attention.resident import Resident, ResidentPlan
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


class TorchBackend(AttentionBackend):
    name = "torch-sdpa"

    def __init__(self, cascade: bool = True, resident: bool = True) -> None:
        self.cascade = cascade  # attend shared prefixes once
        self.shared = SharedCopies()  # the shared prefixes' keys, kept across steps
        self.resident: Resident | None = None  # decode over resident copies (None: gather)
        self.use_resident = resident
        self.latest: tuple[BatchLayout, TorchPlan | CascadePlan | ResidentPlan] | None = None

    @property
    def traffic(self) -> Traffic | None:
        return None if self.latest is None else traffic(*self.latest)

    def plan(self, layout: BatchLayout, pool: PagePool) -> TorchPlan | CascadePlan | ResidentPlan:
        plan = self._plan(layout, pool)
        self.latest = (layout, plan)
        return plan

    def _plan(self, layout: BatchLayout, pool: PagePool) -> TorchPlan | CascadePlan | ResidentPlan:
        device = pool.k.device
        q_lens, kv_lens = layout.q_lens, layout.kv_lens
        b, lq = layout.num_segments, max(q_lens)
        uniform_q = min(q_lens) == lq
        if uniform_q and not layout.has_masks and kv_lens == q_lens:
            return TorchPlan(layout.slot_mapping, b, lq, True, None, None, None)
        if self.cascade and lq == 1 and not layout.has_masks:
            groups = shared_prefixes(layout)
            if groups:
                return cascade_plan(layout, groups, pool, self.shared)
        if self.use_resident and lq == 1 and not layout.has_masks:
            if self.resident is None:  # as large as the pool at most
                self.resident = Resident(budget=pool.k.nbytes + pool.v.nbytes)
            resident = self.resident.plan(layout, pool)
            if resident is not None:
                return resident
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
        plan: TorchPlan | CascadePlan | ResidentPlan,
        pool: PagePool,
    ) -> Tensor:
        pool.write(layer, plan.slots, k, v)
        if isinstance(plan, CascadePlan):
            return attend_cascade(layer, q, plan, pool)
        if isinstance(plan, ResidentPlan):
            assert self.resident is not None
            return self.resident.attend(layer, q, k, v, plan)
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


def traffic(layout: BatchLayout, plan: TorchPlan | CascadePlan | ResidentPlan) -> Traffic:
    """What attending by this plan copies and reads, in tokens of K/V per layer."""
    needed = distinct_tokens(layout)
    ps = layout.page_size
    if isinstance(plan, ResidentPlan):  # the missing tokens and the new ones into their rows
        return Traffic(plan.copied + len(layout.q_lens), plan.span * plan.keys, needed)
    if isinstance(plan, CascadePlan):  # suffixes and each group's shared pages, once
        gathered = plan.suffix_pages.numel() * ps
        shared = sum(s.k.shape[2] for _, s in plan.groups)
        return Traffic(gathered + plan.copied, gathered + shared, needed)
    if plan.pages is None:  # whole prompts: the new keys are attended where they are
        return Traffic(0, sum(layout.q_lens), needed)
    gathered = plan.pages.numel() * ps
    return Traffic(gathered, gathered if plan.keys is None else plan.batch * plan.keys, needed)
