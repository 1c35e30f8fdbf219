"""Resident keys and values: decode batches attend a contiguous copy kept across steps.

Attending over pages on a CPU means gathering each file's pages into one tensor per layer, every
step: the whole context is copied to attend one new token. Instead, `Resident` keeps each
decoding file's keys and values contiguous, one row per file, `[layers, rows, Hkv, capacity, D]`
(the layout SDPA reads fastest), and each step copies only what a row lacks: the new token, and
whatever changed since the row was last brought up to date.

The pool stays the truth; a row is a cache of it. A row records the page table it copied from,
how many tokens it holds and the pool's clock when it did (`PagePool.version`). It is reused for
a segment whose page table begins with the same pages, none of them changed since but by this
forward's own appends (a write, a copy-on-write copy, a reallocation: each bumps the page's
version; `PagePool.before_write` has the versions before this forward), for at most the segment's
own length (a truncated file keeps the prefix it still has). Anything else is copied afresh from
the pages, so fork, truncate, copy-on-write and swapping stay exact.

A file keeps its row from step to step whatever its place in the batch: the queries are put in
row order for the attention, not the rows in batch order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.attention.base import BatchLayout
from engine.page_pool import PagePool


@dataclass(slots=True)
class Row:
    """What one row of the resident copy holds."""

    pages: list[int]  # the page table it was copied from
    tokens: int  # keys/values 0..tokens-1 of those pages are in the row
    stamp: int  # the pool's clock when it was brought up to date


@dataclass
class ResidentPlan:
    """A decode batch (one new token per segment, no masks) over rows of the resident copy."""

    slots: Tensor  # [T] where each new token's K/V goes in the pool
    rows: Tensor  # [B] each segment's row
    positions: Tensor  # [B] where its new token goes in the row
    span: int  # attend over rows 0..span-1 (rows no segment uses get a zero query)
    keys: int  # attend to each row's first `keys` keys
    mask: Tensor | None  # [span, 1, 1, keys] bool where rows' lengths differ, else None
    in_order: bool  # segment b is in row b, for every b, and span is the batch size
    copied: int  # tokens of K/V (all layers, K and V) copied from the pages by this plan


class Resident:
    """The resident copy of the files a backend's decode batches attend (see the module).

    `budget` caps its bytes (K and V, all layers); a batch that would need more is not planned
    here (`plan` returns None) and takes the gathering path.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.k: Tensor | None = None  # [layers, rows, Hkv, capacity, D]
        self.v: Tensor | None = None
        self.rows: list[Row] = []

    def plan(self, layout: BatchLayout, pool: PagePool) -> ResidentPlan | None:
        """Give each segment a row holding all of its file but the new token, or None."""
        old = [kv - 1 for kv in layout.kv_lens]  # tokens each file had before this step
        batch, keys = len(old), max(layout.kv_lens)
        rows = self._claim(layout.page_tables, old, pool)
        if not self._fit(rows, keys, pool):
            self.k = self.v = None
            self.rows = []
            return None
        copied = self._fill(layout.page_tables, old, rows, pool)
        for r, table, kv in zip(rows, layout.page_tables, layout.kv_lens, strict=True):
            self.rows[r] = Row(list(table), kv, pool.clock)
        device = pool.k.device
        span = max(rows) + 1
        lens = [1] * span  # a row no segment uses: its query is zero, let it see one key
        for r, kv in zip(rows, layout.kv_lens, strict=True):
            lens[r] = kv
        mask = None
        if span != batch or min(lens) != keys:
            lens_t = torch.tensor(lens, device=device)
            mask = (torch.arange(keys, device=device)[None, :] < lens_t[:, None])[:, None, None]
        as_long = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
        in_order = span == batch and rows == list(range(batch))
        return ResidentPlan(
            layout.slot_mapping, as_long(rows), as_long(old), span, keys, mask, in_order, copied
        )

    def _claim(self, tables: list[list[int]], old: list[int], pool: PagePool) -> list[int]:
        """A distinct row for each segment: one already holding part of its file if any.

        A claimed row's `tokens` is cut to what is still valid (0 for a row taken afresh).
        """
        by_first: dict[int, list[int]] = {}
        for r, row in enumerate(self.rows):
            if row.pages:
                by_first.setdefault(row.pages[0], []).append(r)
        claimed: list[int] = [-1] * len(old)
        taken: set[int] = set()
        for b, (table, n) in enumerate(zip(tables, old, strict=True)):
            for r in by_first.get(table[0], []) if table else []:
                valid = self._valid(self.rows[r], table, n, pool)
                if r not in taken and valid:
                    claimed[b] = r
                    taken.add(r)
                    self.rows[r].tokens = valid
                    break
        free = iter([r for r in range(len(self.rows)) if r not in taken])
        for b in range(len(old)):
            if claimed[b] < 0:
                claimed[b] = next(free, len(self.rows))
                if claimed[b] == len(self.rows):
                    self.rows.append(Row([], 0, -1))
                self.rows[claimed[b]] = Row([], 0, -1)
        return claimed

    @staticmethod
    def _valid(row: Row, table: list[int], n: int, pool: PagePool) -> int:
        """How many of the row's tokens are still those of a file with this table and n tokens."""
        valid = min(row.tokens, n)
        used = -(-valid // pool.page_size)
        if row.pages[:used] != table[:used]:
            return 0
        # changed since the row copied it, this forward's own writes aside (they append)
        if any(pool.before_write.get(p, pool.version[p]) > row.stamp for p in table[:used]):
            return 0
        return valid

    def _fit(self, rows: list[int], keys: int, pool: PagePool) -> bool:
        """Storage for every row, `keys` tokens long; compacted when most rows sit idle."""
        layers, _, _, hkv, d = pool.k.shape
        count = len(self.rows)
        capacity = self.k.shape[3] if self.k is not None else 0
        if keys > capacity:  # grow by doubling, as far as the budget allows
            ps, per_token = pool.page_size, pool.bytes_per_token
            most = self.budget // (per_token * max(count, 1)) // ps * ps
            capacity = max(-(-keys // ps) * ps, min(2 * capacity, most))
        if count > 2 * len(rows) + 8:  # idle rows: keep only the batch's, in batch order
            self._reorder(rows, capacity)
            return self._bytes() <= self.budget
        if count * capacity * pool.bytes_per_token > self.budget:
            return False
        if (
            self.k is None
            or self.v is None
            or self.k.shape[1] < count
            or capacity > self.k.shape[3]
        ):
            shape = (layers, count, hkv, capacity, d)
            k, v = pool.k.new_zeros(shape), pool.v.new_zeros(shape)
            if self.k is not None and self.v is not None:
                n, c = self.k.shape[1], self.k.shape[3]
                k[:, :n, :, :c] = self.k
                v[:, :n, :, :c] = self.v
            self.k, self.v = k, v
        return self._bytes() <= self.budget

    def _reorder(self, rows: list[int], capacity: int) -> None:
        """Keep only `rows`, as rows 0..len(rows)-1; `rows` is renumbered in place."""
        assert self.k is not None and self.v is not None
        stored = self.k.shape[1]  # rows claimed afresh past it hold nothing yet: take row 0
        index = torch.tensor([r if r < stored else 0 for r in rows], device=self.k.device)
        k, v = self.k.index_select(1, index), self.v.index_select(1, index)
        if capacity > k.shape[3]:
            pad = (0, 0, 0, capacity - k.shape[3])
            k, v = F.pad(k, pad), F.pad(v, pad)
        self.k, self.v = k, v
        self.rows = [self.rows[r] for r in rows]
        rows[:] = range(len(rows))

    def _bytes(self) -> int:
        return 0 if self.k is None else 2 * self.k.nbytes

    def _fill(
        self, tables: list[list[int]], old: list[int], rows: list[int], pool: PagePool
    ) -> int:
        """Copy each row's missing old tokens from the pages (all layers); how many tokens."""
        assert self.k is not None and self.v is not None
        ps = pool.page_size
        dst_row: list[int] = []
        dst_pos: list[int] = []
        src: list[int] = []
        for r, table, n in zip(rows, tables, old, strict=True):
            have = self.rows[r].tokens
            if have == n:
                continue
            dst_row += [r] * (n - have)
            dst_pos += range(have, n)
            src += (table[i // ps] * ps + i % ps for i in range(have, n))
        if src:
            device = pool.k.device
            index = torch.tensor(src, dtype=torch.long, device=device)
            at = (
                slice(None),
                torch.tensor(dst_row, device=device),
                torch.tensor(dst_pos, device=device),
            )
            layers, _, _, hkv, d = pool.k.shape
            self.k.transpose(2, 3)[at] = pool.k.view(layers, -1, hkv, d).index_select(1, index)
            self.v.transpose(2, 3)[at] = pool.v.view(layers, -1, hkv, d).index_select(1, index)
        return len(src)

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, plan: ResidentPlan) -> Tensor:
        """Put the new tokens' K/V in their rows, then attend each query to its row."""
        assert self.k is not None and self.v is not None
        kl, vl = self.k[layer], self.v[layer]  # [rows, Hkv, capacity, D]
        kl.transpose(1, 2)[plan.rows, plan.positions] = k
        vl.transpose(1, 2)[plan.rows, plan.positions] = v
        t, h, d = q.shape
        hkv = k.shape[1]
        qg = q.view(t, hkv, h // hkv, d)  # a KV head attends for its query heads at once
        if not plan.in_order:  # queries in row order
            qg = qg.new_zeros(plan.span, hkv, h // hkv, d).index_copy_(0, plan.rows, qg)
        out = F.scaled_dot_product_attention(
            qg,
            kl[: plan.span, :, : plan.keys],
            vl[: plan.span, :, : plan.keys],
            attn_mask=plan.mask,
        )
        if not plan.in_order:
            out = out.index_select(0, plan.rows)
        return out.reshape(t, h, d)
