"""A KV sequence: the tokens whose keys and values sit in pages of the pool, and its page table.

This is the substrate the KV file system stands on, with the copy-on-write primitives:
`fork` shares every page (reference +1); the first write into a page someone else also holds
copies it first; `truncate` rolls back; `hide`/`unhide` take positions out of attention.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from torch import Tensor

from engine.errors import InvalidArgument
from engine.page_pool import PagePool

if TYPE_CHECKING:
    from engine.grammar import Constraint


def pages_for(num_tokens: int, page_size: int) -> int:
    return -(-num_tokens // page_size)


@dataclass(slots=True)
class KVSequence:
    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    pages: list[int] = field(default_factory=list)
    hidden: set[int] = field(default_factory=set)  # token indices attention skips
    # page-table index -> (K, V) host copies of pages moved out of the pool (see swap_out)
    swapped: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    # the grammar its new tokens must match (kv.constrain; see engine.grammar), or None
    constraint: Constraint | None = None

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def next_position(self) -> int:
        return self.positions[-1] + 1 if self.positions else 0

    def pages_needed(self, pool: PagePool, num_new: int) -> int:
        """Fresh pages a write of num_new tokens takes, a copy-on-write copy included."""
        n, ps = len(self.tokens), pool.page_size
        needed = pages_for(n + num_new, ps) - len(self.pages)
        last = self.pages[-1] if self.pages else -1  # -1: swapped out, so it was private
        if n % ps and num_new and last >= 0 and pool.refcount[last] > 1:
            needed += 1
        return needed

    def reserve(self, pool: PagePool, num_new: int) -> list[int]:
        """Room for num_new tokens; returns their flat slots. Copies a shared partial page first."""
        n, ps = len(self.tokens), pool.page_size
        if n % ps and num_new and pool.refcount[self.pages[-1]] > 1:
            (fresh,) = pool.alloc(1)
            pool.copy_page(self.pages[-1], fresh, n % ps)
            pool.release([self.pages[-1]])
            self.pages[-1] = fresh
        extra = pages_for(n + num_new, ps) - len(self.pages)
        if extra > 0:
            self.pages.extend(pool.alloc(extra))
        return [self.pages[i // ps] * ps + i % ps for i in range(n, n + num_new)]

    def append(self, tokens: list[int], positions: list[int]) -> None:
        self.tokens.extend(tokens)
        self.positions.extend(positions)

    def fork(self, pool: PagePool) -> KVSequence:
        """A copy that shares every page; whichever side writes into a shared page copies it."""
        pool.ref(self.pages)
        return KVSequence(
            list(self.tokens),
            list(self.positions),
            list(self.pages),
            set(self.hidden),
            constraint=None if self.constraint is None else self.constraint.fork(),
        )

    def truncate(self, pool: PagePool, n: int) -> None:
        """Keep the first n tokens; pages past them are released; a grammar rolls back."""
        if not 0 <= n <= len(self.tokens):
            raise InvalidArgument(f"cannot truncate a {len(self.tokens)}-token sequence to {n}")
        if self.constraint is not None:
            self.constraint.rollback_to(n)
        keep = pages_for(n, pool.page_size)
        pool.release(self.pages[keep:])
        del self.pages[keep:], self.tokens[n:], self.positions[n:]
        self.hidden = {i for i in self.hidden if i < n}

    def hide(self, indices: list[int]) -> None:
        self._check_indices(indices)
        self.hidden.update(indices)

    def unhide(self, indices: list[int]) -> None:
        self._check_indices(indices)
        self.hidden.difference_update(indices)

    def release(self, pool: PagePool) -> None:
        """Give back every page and forget the contents."""
        pool.release([p for p in self.pages if p >= 0])
        self.pages, self.tokens, self.positions, self.hidden = [], [], [], set()
        self.swapped, self.constraint = {}, None

    def swap_out(self, pool: PagePool) -> int:
        """Move the pages only this sequence holds to host memory; returns how many were freed."""
        mine = [i for i, p in enumerate(self.pages) if p >= 0 and pool.refcount[p] == 1]
        freed = [self.pages[i] for i in mine]
        for i, p in zip(mine, freed, strict=True):
            self.swapped[i] = (pool.k[:, p].to("cpu", copy=True), pool.v[:, p].to("cpu", copy=True))
            self.pages[i] = -1
        pool.release(freed)
        return len(freed)

    def swap_in(self, pool: PagePool) -> None:
        """Bring swapped pages back into (fresh) pool pages; all or nothing."""
        fresh = pool.alloc(len(self.swapped))
        for page, (i, (k, v)) in zip(fresh, sorted(self.swapped.items()), strict=True):
            pool.k[:, page] = k.to(pool.k.device)
            pool.v[:, page] = v.to(pool.v.device)
            self.pages[i] = page
        self.swapped = {}

    def _check_indices(self, indices: list[int]) -> None:
        bad = [i for i in indices if not 0 <= i < len(self.tokens)]
        if bad:
            raise InvalidArgument(f"token indices {bad[:5]} outside 0..{len(self.tokens) - 1}")
