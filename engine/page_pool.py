"""The page pool: per-layer K/V storage preallocated as fixed-size pages, with reference counts.

A page holds `page_size` consecutive tokens' keys and values for every layer. Pages are shared
between KV sequences by reference count (fork); a page returns to the free list when its
count drops to zero, unless the prefix index (engine.prefix_cache) holds it: then it stays
*cached*, its contents kept for a later forward with the same prefix, until an allocation
needs it back (least recently cached first).

Invariant: free pages + cached pages + referenced pages = all pages, no page in two of them,
and every cached page is indexed.

Each page carries a version: the pool's clock when its contents last changed (allocated, copied
into, written). Copies of the pool kept elsewhere (`engine.attention.resident`) check it.
"""

from __future__ import annotations

import collections

import torch
from torch import Tensor

from engine.config import ModelConfig
from engine.prefix_cache import PrefixIndex
from engine.wire.engine_config import EngineConfig
from engine.wire.errors import OutOfPages

DEFAULT_PAGE_SIZE = EngineConfig.page_size


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
        self.num_swapped = 0  # pages its sequences moved to host memory (KVSequence.swap_out)
        self.clock = 0  # counts changes to pages' contents
        self.version = [0] * num_pages  # the clock of each page's latest change
        # the pages of the latest `mark_written`, and their version before it
        self.before_write: dict[int, int] = {}
        self._free = list(range(num_pages - 1, -1, -1))  # pop() hands out low numbers first
        self.index: PrefixIndex | None = None  # set by the KV file system when sharing is on
        self.cached: collections.OrderedDict[int, None] = collections.OrderedDict()  # LRU first

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
        """Pages an allocation can take: the free ones and the cached ones."""
        return len(self._free) + len(self.cached)

    @property
    def num_cached(self) -> int:
        return len(self.cached)

    @property
    def num_referenced(self) -> int:
        return sum(1 for c in self.refcount if c > 0)

    def alloc(self, n: int) -> list[int]:
        """n fresh pages with reference count 1; all or nothing."""
        if n > self.num_free:
            raise OutOfPages(n, self.num_free)
        pages = [self._free.pop() if self._free else self._evict() for _ in range(n)]
        self.clock += 1
        for p in pages:
            self.refcount[p] = 1
            self.version[p] = self.clock
        return pages

    def _evict(self) -> int:
        """The least recently cached page, forgotten by the index."""
        page, _ = self.cached.popitem(last=False)
        assert self.index is not None
        self.index.forget(page)
        return page

    def ref(self, pages: list[int]) -> None:
        """Share: one more holder for each page (a cached page is held again)."""
        for p in pages:
            if self.refcount[p] <= 0 and p not in self.cached:
                raise ValueError(f"page {p} is free; only held pages can be shared")
            self.cached.pop(p, None)
            self.refcount[p] += 1

    def writable(self, page: int) -> bool:
        """Whether a sequence may write into its page in place: nobody else holds it and the
        index does not keep it for others (else copy-on-write)."""
        return self.refcount[page] == 1 and (self.index is None or not self.index.holds(page))

    def release(self, pages: list[int]) -> None:
        """One holder fewer for each page; pages nobody holds return to the free list."""
        for p in pages:
            if self.refcount[p] <= 0:
                raise ValueError(f"page {p} released more times than it was held")
            self.refcount[p] -= 1
            if self.refcount[p] == 0:
                if self.index is not None and self.index.holds(p):
                    self.cached[p] = None
                else:
                    self._free.append(p)

    def drop_cache(self) -> int:
        """Forget every cached page (they become free); returns how many."""
        n = len(self.cached)
        while self.cached:
            self._free.append(self._evict())
        return n

    def copy_page(self, src: int, dst: int, num_tokens: int | None = None) -> None:
        """Copy the first `num_tokens` slots (default all) of page src into page dst, all layers."""
        n = self.page_size if num_tokens is None else num_tokens
        self.k[:, dst, :n] = self.k[:, src, :n]
        self.v[:, dst, :n] = self.v[:, src, :n]
        self.clock += 1
        self.version[dst] = self.clock

    def copy_slots(self, src: list[int], dst: list[int]) -> None:
        """Copy the keys and values at flat slots src (`page * page_size + offset`) to the flat
        slots dst, all layers (a splice's seam: tokens that do not line up with a page)."""
        if len(src) != len(dst):
            raise ValueError(f"{len(src)} source slots for {len(dst)} destination slots")
        if not src:
            return
        device = self.k.device
        s = torch.tensor(src, dtype=torch.long, device=device)
        d = torch.tensor(dst, dtype=torch.long, device=device)
        for pages in (self.k, self.v):
            flat = pages.flatten(1, 2)  # a view: [layers, num_pages * page_size, Hkv, D]
            flat[:, d] = flat[:, s]
        self.clock += 1
        for p in {slot // self.page_size for slot in dst}:
            self.version[p] = self.clock

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
        """AssertionError unless free + cached + referenced = all pages, no page in two of
        them, and every cached page is indexed."""
        free, cached = set(self._free), set(self.cached)
        assert len(free) == len(self._free), "a page is on the free list twice"
        assert all(c >= 0 for c in self.refcount), "negative reference count"
        assert self.num_swapped >= 0, f"{self.num_swapped} pages in host memory"
        referenced = {p for p, c in enumerate(self.refcount) if c > 0}
        assert not free & referenced, (
            f"pages both free and referenced: {sorted(free & referenced)[:8]}"
        )
        assert not cached & (free | referenced), (
            f"cached pages also free or referenced: {sorted(cached & (free | referenced))[:8]}"
        )
        assert self.index is not None or not cached, "cached pages without an index"
        if self.index is not None:
            assert all(self.index.holds(p) for p in cached), "a cached page is not indexed"
            free_indexed = sorted(p for p in free if self.index.holds(p))
            assert not free_indexed, f"free pages still indexed: {free_indexed[:8]}"
        total = len(free) + len(cached) + len(referenced)
        assert total == self.num_pages, (
            f"{len(free)} free + {len(cached)} cached + {len(referenced)} referenced"
            f" != {self.num_pages} pages"
        )
