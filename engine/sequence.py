"""A KV sequence: the tokens whose keys and values sit in pages of the pool, and its page table.

This is the substrate the KV file system stands on, with the copy-on-write primitives:
`fork` shares every page (reference +1); the first write into a page someone else also holds
(or the prefix index keeps) copies it first; `truncate` rolls back; `hide`/`unhide` take
positions out of attention; `take_cached` and `publish` are automatic prefix sharing
(engine.prefix_cache).

Splicing and dropping. `splice` appends a range of another sequence (or of itself), `drop`
removes a range and gives back the pages only it filled. Neither computes anything: every
token keeps its position and its keys and values exactly as they were computed (a key carries
its rotary position, so moving a token to another position would mean computing it again).
A sequence may therefore skip positions (after a drop) or repeat them (two branches of one
prompt, spliced side by side). Pages: token i of a sequence sits at slot i % page_size of its
page i // page_size, so a source page can be taken by reference only where the range lines up
with the sequence's pages (the same offset in a page on both sides); the tokens of a seam that
does not line up are copied slot by slot (keys and values, not recomputed).

What a forward then computes: a forward on a spliced sequence gives the logits that a fresh
prefill of the same tokens at the same positions gives under the mask that lets each token see
exactly what it saw where it was computed (its source's tokens before it, those that are in the
sequence too). For a graph-of-thought merge (a prompt, then branches each forked from the
prompt) that is the tree mask: each branch sees the prompt and itself. After a drop, a forward
sees what it would see with the range hidden; it equals a fresh prefill of only the kept tokens
when no kept token attended a dropped one (they were hidden before anything after them was
computed, or they come after every kept token). tests/os/test_splice.py shows all three.

Residency. A sequence is resident (every page of it in the pool) or swapped out: under KV
pressure the pages only it holds move to host memory (`swap_out`) and come back into fresh pool
pages (`swap_in`); the pages it shares stay in the pool. Writing, forking and truncating need it
resident; the views (`page_table`, `held_pages`) tell where each page is either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from torch import Tensor

from engine.page_pool import PagePool
from engine.prefix_cache import SHARED, Reuse, Sharing, Stop
from engine.wire.errors import InvalidArgument, OutOfPages
from engine.wire.records import Spliced

if TYPE_CHECKING:
    from engine.grammar import Constraint


def pages_for(num_tokens: int, page_size: int) -> int:
    return -(-num_tokens // page_size)


class SwappedOut(NamedTuple):
    """Where the pages of a swapped-out sequence are, by page-table entry."""

    kept: dict[int, int]  # entry -> its pool page, still held (other files hold it too)
    host: dict[int, tuple[Tensor, Tensor]]  # entry -> its keys and values, in host memory


@dataclass(slots=True)
class KVSequence:
    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    pages: list[int] = field(default_factory=list)  # the page table while resident, else empty
    hidden: set[int] = field(default_factory=set)  # token indices attention skips
    swapped: SwappedOut | None = None  # where its pages are while swapped out (see swap_out)
    sharing: Sharing | None = None  # None: this sequence takes no part in prefix sharing
    # the grammar its new tokens must match (kv.constrain; see engine.grammar), or None
    constraint: Constraint | None = None

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def next_position(self) -> int:
        """Where default positions continue: after the last token attention sees (hidden tokens
        at the end, a rejected draft say, give their positions back)."""
        last = len(self.positions) - 1
        while last >= 0 and last in self.hidden:
            last -= 1
        return self.positions[last] + 1 if last >= 0 else 0

    # ---- residency ----

    @property
    def resident(self) -> bool:
        """Every page in the pool (nothing in host memory)."""
        return self.swapped is None

    @property
    def num_pages(self) -> int:
        """Entries of the page table, wherever each page is."""
        if self.swapped is None:
            return len(self.pages)
        return len(self.swapped.kept) + len(self.swapped.host)

    @property
    def num_swapped_pages(self) -> int:
        """Pages in host memory: what coming back into the pool takes."""
        return 0 if self.swapped is None else len(self.swapped.host)

    def held_pages(self) -> list[int]:
        """The pool pages this sequence holds now, in page-table order."""
        if self.swapped is None:
            return self.pages
        return [p for _, p in sorted(self.swapped.kept.items())]

    def page_table(self) -> list[int | None]:
        """Each entry's pool page; None where the page is in host memory."""
        if self.swapped is None:
            return list(self.pages)
        kept = self.swapped.kept
        return [kept.get(i) for i in range(self.num_pages)]

    def swap_out(self, pool: PagePool) -> int:
        """Move the pages only this sequence holds to host memory; returns how many were freed.

        Shared pages stay in the pool. A sequence holding no page of its own stays resident.
        """
        if self.swapped is not None:
            return 0
        host = {
            i: (pool.k[:, p].to("cpu", copy=True), pool.v[:, p].to("cpu", copy=True))
            for i, p in enumerate(self.pages)
            if pool.refcount[p] == 1
        }
        if not host:
            return 0
        kept = {i: p for i, p in enumerate(self.pages) if i not in host}
        pool.release([self.pages[i] for i in host])
        pool.num_swapped += len(host)
        self.pages, self.swapped = [], SwappedOut(kept, host)
        return len(host)

    def swap_in(self, pool: PagePool) -> None:
        """Bring swapped pages back into fresh pool pages; all or nothing (OutOfPages)."""
        if self.swapped is None:
            return
        kept, host = self.swapped
        fresh = iter(pool.alloc(len(host)))
        pool.num_swapped -= len(host)
        pages = []
        for i in range(self.num_pages):
            if i in kept:
                pages.append(kept[i])
                continue
            page, (k, v) = next(fresh), host[i]
            pool.k[:, page] = k.to(pool.k.device)
            pool.v[:, page] = v.to(pool.v.device)
            pages.append(page)
        self.pages, self.swapped = pages, None

    # ---- writing (resident only) ----

    def pages_needed(self, pool: PagePool, num_new: int) -> int:
        """Fresh pages a write of num_new tokens takes, a copy-on-write copy included (once
        resident: bringing it back takes `num_swapped_pages` more)."""
        n, ps = len(self.tokens), pool.page_size
        needed = pages_for(n + num_new, ps) - self.num_pages
        if n % ps and num_new:
            last = self.page_table()[-1] if self.swapped is not None else self.pages[-1]
            if last is not None and not pool.writable(last):  # (a page from host is private)
                needed += 1
        return needed

    def reserve(self, pool: PagePool, num_new: int) -> list[int]:
        """Room for num_new tokens; returns their flat slots. Copies a shared partial page first."""
        self._need_resident("write")
        n, ps = len(self.tokens), pool.page_size
        if n % ps and num_new and not pool.writable(self.pages[-1]):
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
        self._need_resident("fork")
        pool.ref(self.pages)
        sharing = None if self.sharing is None else self.sharing.copy(self.sharing.source)
        return KVSequence(
            list(self.tokens),
            list(self.positions),
            list(self.pages),
            set(self.hidden),
            sharing=sharing,
            constraint=None if self.constraint is None else self.constraint.fork(),
        )

    def truncate(self, pool: PagePool, n: int) -> None:
        """Keep the first n tokens; pages past them are released; a grammar rolls back."""
        if not 0 <= n <= len(self.tokens):
            raise InvalidArgument(f"cannot truncate a {len(self.tokens)}-token sequence to {n}")
        self._need_resident("truncate")
        if self.constraint is not None:
            self.constraint.rollback_to(n)
        keep = pages_for(n, pool.page_size)
        pool.release(self.pages[keep:])
        del self.pages[keep:], self.tokens[n:], self.positions[n:]
        self.hidden = {i for i in self.hidden if i < n}
        if self.sharing is not None:
            self.sharing.truncated(n, pool.page_size, bool(self.hidden))

    def splice(self, pool: PagePool, src: KVSequence, start: int, stop: int) -> Spliced:
        """Append src's tokens [start, stop) with their positions and their keys and values as
        they are: nothing is computed. All or nothing (OutOfPages before anything changes).

        Positions: every token keeps the position it was computed at (its key carries its
        rotary position), so the file may skip or repeat positions (see `engine.runner`).
        Pages: where the range lines up with this file's pages (`(len(self) - start) %
        page_size == 0`), the source's pages are taken by reference (copy-on-write, as fork);
        the tokens that fill this file's partly filled last page, and every token of a range
        that does not line up, are copied slot by slot. Hidden tokens of the range stay hidden.
        src may be this sequence itself.
        """
        if not 0 <= start <= stop <= len(src):
            raise InvalidArgument(
                f"splice: range [{start}, {stop}) is outside the source's 0..{len(src)} tokens"
            )
        self._need_resident("splice into")
        src._need_resident("splice from")
        if self.constraint is not None:
            raise InvalidArgument(
                "splice: the file has a grammar (kv.constrain) that spliced tokens would bypass;"
                " detach it first"
            )
        ps, n, m = pool.page_size, len(self.tokens), stop - start
        tokens, positions = src.tokens[start:stop], src.positions[start:stop]
        src_pages = list(src.pages)
        hidden = {n + i - start for i in src.hidden if start <= i < stop}
        fill = min(m, -n % ps) if (n - start) % ps == 0 else m  # tokens copied slot by slot
        needed = self.pages_needed(pool, fill)
        if needed > pool.num_free:
            raise OutOfPages(needed, pool.num_free, f"splice: {needed} pages to copy a seam into")
        copy_from = [src_pages[i // ps] * ps + i % ps for i in range(start, start + fill)]
        pool.copy_slots(copy_from, self.reserve(pool, fill))
        self.append(tokens[:fill], positions[:fill])
        shared: list[int] = []
        if fill < m:  # the rest begins at a page boundary of both: whole pages, by reference
            shared = src_pages[(start + fill) // ps : pages_for(stop, ps)]
            pool.ref(shared)
            self.pages.extend(shared)
            self.append(tokens[fill:], positions[fill:])
        self.hidden.update(hidden)
        s = self.sharing
        if s is not None and m:
            if n == 0 and start == 0 and src.sharing is not None:  # src's own prefix: plain
                s.chain = src.sharing.chain[: stop // ps]
                s.dirty_from = None
                if src.sharing.dirty_from is not None and src.sharing.dirty_from < stop:
                    s.mark_dirty(src.sharing.dirty_from, src.sharing.why)
                if hidden:
                    s.mark_dirty(min(hidden))
            else:
                s.edited(n, ps)
        return Spliced(m, len(shared), fill)

    def drop(self, pool: PagePool, start: int, stop: int) -> None:
        """Remove tokens [start, stop) and their keys and values; the pages only they filled go
        back to the pool. The tokens after them keep their positions and their keys and values
        (computed while the dropped tokens were there): a forward then sees exactly what it
        would with the range hidden. All or nothing (OutOfPages before anything changes).

        When start and stop are at the same offset in a page (both page-aligned, say), the pages
        after the range are kept by reference and only the page holding `start` is copied;
        otherwise the tokens after the range are copied down slot by slot.
        """
        n = len(self.tokens)
        if not 0 <= start <= stop <= n:
            raise InvalidArgument(f"drop: range [{start}, {stop}) is outside 0..{n}")
        if self.constraint is not None:
            raise InvalidArgument(
                "drop: the file has a grammar (kv.constrain), whose state follows every token;"
                " detach it first"
            )
        if start == stop:
            return
        if stop == n:  # the tail: what is left is a plain prefix (it may still be shared)
            self.truncate(pool, start)
            return
        self._need_resident("drop from")
        kept = KVSequence()
        kept.splice(pool, self, 0, start)  # all by reference: it takes no fresh page
        try:
            kept.splice(pool, self, stop, n)
        except OutOfPages:
            kept.release(pool)
            raise
        pool.release(self.pages)
        self.tokens, self.positions, self.pages = kept.tokens, kept.positions, kept.pages
        self.hidden = kept.hidden
        if self.sharing is not None:
            self.sharing.edited(start, pool.page_size)

    def hide(self, indices: list[int]) -> None:
        self._check_indices(indices)
        self.hidden.update(indices)
        if self.sharing is not None and indices:  # what comes next attends without them
            self.sharing.mark_dirty(len(self.tokens))

    def unhide(self, indices: list[int]) -> None:
        self._check_indices(indices)
        self.hidden.difference_update(indices)

    def release(self, pool: PagePool) -> None:
        """Give back every page, in the pool or in host memory, and forget the contents."""
        pool.release(self.held_pages())
        pool.num_swapped -= self.num_swapped_pages
        self.pages, self.tokens, self.positions, self.hidden = [], [], [], set()
        self.swapped, self.constraint = None, None

    def _need_resident(self, what: str) -> None:
        if self.swapped is not None:  # the kernel and the KVFS bring a sequence back first
            raise RuntimeError(f"cannot {what} a swapped-out sequence; swap_in first")

    # ---- automatic prefix sharing (engine.prefix_cache) ----

    def take_cached(
        self, pool: PagePool, tokens: list[int], positions: list[int], limit: int
    ) -> Reuse | None:
        """Append the cached full pages that hold the first of `tokens` (at `positions`), by
        reference, without computing them; at most `limit` tokens (the first token whose
        output is wanted is computed). Returns the lookup (None: sharing is off everywhere)."""
        s, index = self.sharing, pool.index
        if s is None or index is None:
            return None
        n, ps = len(self.tokens), pool.page_size
        if not s.on:
            stop = Stop("off", n)
        elif self.constraint is not None:  # its tokens are checked by the grammar as they run
            stop = Stop("constrained", n)
        elif self.hidden or s.dirty_from is not None or len(s.chain) != n // ps:
            stop = Stop(s.why if s.dirty_from is not None and not self.hidden else "hidden", n)
        elif n % ps:
            stop = Stop("unaligned", n)
        else:
            parent = s.chain[-1] if s.chain else b""
            match = index.match(s.user, parent, n, tokens, positions, limit)
            k = len(match.pages) * ps
            pool.ref(match.pages)
            if s.scope == SHARED:
                index.share(match.pages)
            self.pages.extend(match.pages)
            self.append(tokens[:k], positions[:k])
            s.chain.extend(match.digests)
            reuse = Reuse(n, k, match.pages, match.sources, match.stop, index.clock())
            s.record(reuse)
            return reuse
        reuse = Reuse(n, 0, [], [], stop, index.clock())
        s.record(reuse)
        return reuse

    def publish(self, pool: PagePool) -> None:
        """Index this sequence's full pages not indexed yet, so later forwards can take them."""
        s, index = self.sharing, pool.index
        if s is None or index is None or not s.on:
            return
        ps = pool.page_size
        full = len(self.tokens) // ps
        if s.dirty_from is not None:
            full = min(full, s.dirty_from // ps)
        if self.swapped is not None:  # published when it is back in the pool
            return
        for i in range(len(s.chain), full):
            page = self.pages[i]
            parent = s.chain[-1] if s.chain else b""
            a, b = i * ps, (i + 1) * ps
            d = index.publish(
                s.scope, parent, self.tokens[a:b], self.positions[a:b], page, s.source
            )
            s.chain.append(d)

    def _check_indices(self, indices: list[int]) -> None:
        bad = [i for i in indices if not 0 <= i < len(self.tokens)]
        if bad:
            raise InvalidArgument(f"token indices {bad[:5]} outside 0..{len(self.tokens) - 1}")
