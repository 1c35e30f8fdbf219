"""The page pool: per-layer K/V storage preallocated as fixed-size pages, with reference counts.

A page holds `page_size` consecutive tokens' keys and values for every layer. Pages are shared
between KV sequences by reference count (fork); a page returns to the free list when its
count drops to zero. Invariant: free pages + referenced pages = all pages.

Each page carries a version: the pool's clock when its contents last changed (allocated, copied
into, written). Copies of the pool kept elsewhere (`engine.attention.resident`) check it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from engine.config import ModelConfig
from engine.errors import OutOfPages

DEFAULT_PAGE_SIZE = 16


class PagePool:
    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        num_pages: int,
        page_size: int = DEFAULT_PAGE_SIZE,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> None:
        if num_pages < 1 or page_size < 1:
            raise ValueError(f"need at least one page of one token (got {num_pages} x {page_size})")
        self.num_pages, self.page_size = num_pages, page_size
        shape = (num_layers, num_pages, page_size, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.refcount = [0] * num_pages
        self.clock = 0  # counts changes to pages' contents
        self.version = [0] * num_pages  # the clock of each page's latest change
        # the pages of the latest `mark_written`, and their version before it
        self.before_write: dict[int, int] = {}
        self._free = list(range(num_pages - 1, -1, -1))  # pop() hands out low numbers first

    @classmethod
    def for_model(
        cls,
        cfg: ModelConfig,
        num_pages: int,
        page_size: int = DEFAULT_PAGE_SIZE,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> PagePool:
        return cls(
            cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, num_pages, page_size, dtype, device
        )

    @property
    def bytes_per_token(self) -> int:
        """One token's keys and values, all layers."""
        layers, _, _, hkv, d = self.k.shape
        return 2 * layers * hkv * d * self.k.element_size()

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_referenced(self) -> int:
        return sum(1 for c in self.refcount if c > 0)

    def alloc(self, n: int) -> list[int]:
        """n fresh pages with reference count 1; all or nothing."""
        if n > len(self._free):
            raise OutOfPages(n, len(self._free))
        pages = [self._free.pop() for _ in range(n)]
        self.clock += 1
        for p in pages:
            self.refcount[p] = 1
            self.version[p] = self.clock
        return pages

    def ref(self, pages: list[int]) -> None:
        """Share: one more holder for each page."""
        for p in pages:
            if self.refcount[p] <= 0:
                raise ValueError(f"page {p} is free; only held pages can be shared")
            self.refcount[p] += 1

    def release(self, pages: list[int]) -> None:
        """One holder fewer for each page; pages nobody holds return to the free list."""
        for p in pages:
            if self.refcount[p] <= 0:
                raise ValueError(f"page {p} released more times than it was held")
            self.refcount[p] -= 1
            if self.refcount[p] == 0:
                self._free.append(p)

    def copy_page(self, src: int, dst: int, num_tokens: int | None = None) -> None:
        """Copy the first `num_tokens` slots (default all) of page src into page dst, all layers."""
        n = self.page_size if num_tokens is None else num_tokens
        self.k[:, dst, :n] = self.k[:, src, :n]
        self.v[:, dst, :n] = self.v[:, src, :n]
        self.clock += 1
        self.version[dst] = self.clock

    def mark_written(self, slots: list[int]) -> None:
        """Record that a forward is about to write these flat slots (every layer).

        The runner calls it once per forward, before planning attention; `write` itself does
        not track (it runs per layer, on device tensors).
        """
        self.clock += 1
        self.before_write = {}
        for s in slots:
            p = s // self.page_size
            if p not in self.before_write:
                self.before_write[p] = self.version[p]
                self.version[p] = self.clock

    def write(self, layer: int, slots: Tensor, k: Tensor, v: Tensor) -> None:
        """Store new keys/values `[T, Hkv, D]` at flat slot indices `page * page_size + offset`."""
        self.k[layer].view(-1, *k.shape[1:]).index_copy_(0, slots, k)
        self.v[layer].view(-1, *v.shape[1:]).index_copy_(0, slots, v)

    def layer_slots(self, layer: int) -> tuple[Tensor, Tensor]:
        """This layer's K and V as flat `[num_pages * page_size, Hkv, D]` views."""
        k, v = self.k[layer], self.v[layer]
        return k.view(-1, *k.shape[2:]), v.view(-1, *v.shape[2:])

    def check(self) -> None:
        """AssertionError unless free + referenced = all pages and no page is both."""
        free = set(self._free)
        assert len(free) == len(self._free), "a page is on the free list twice"
        assert all(c >= 0 for c in self.refcount), "negative reference count"
        referenced = {p for p, c in enumerate(self.refcount) if c > 0}
        assert not free & referenced, (
            f"pages both free and referenced: {sorted(free & referenced)[:8]}"
        )
        assert len(free) + len(referenced) == self.num_pages, (
            f"{len(free)} free + {len(referenced)} referenced != {self.num_pages} pages"
        )
