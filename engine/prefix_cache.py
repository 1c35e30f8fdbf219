"""Automatic prefix sharing: full pages indexed by the whole prefix they end, and why a prefix
was not shared.

The keys and values of a token depend on every token before it (and its position). So a full
page can stand in for computing its tokens again only when the whole prefix before it is the
same. Each full page gets a digest chained over the digests of the pages before it, like vLLM's
prefix caching and Pie do:

    digest(page i) = blake2b(digest(page i-1), token ids of page i, positions of page i)

A forward that appends tokens at a page boundary looks its coming full pages up, one after the
other, and takes the pages it finds by reference (engine.page_pool: `ref`); only the rest is
computed. Pages of files that are gone stay in the pool as a cache until it needs them back
(least recently used first), and are then forgotten here (`forget`).

Isolation: a page is published under the scope of the file that computed it: `SHARED` for a
file under /shared, else its owner's user name. A user's lookups see their own scope and
`SHARED`, never another user's pages.

Explanation: where matching stops, `PrefixIndex.match` says why, as a `Stop` record: the tokens
differ at an index (both tokens given), the rest does not fill a page (the page-size floor), the
page was evicted (and when), the pages belong to another user, the positions differ, or nothing
was ever computed past that point. Pure Python: no torch, no pool; the pool and the KV file
system call it.
"""

from __future__ import annotations

import collections
import hashlib
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from engine.wire.records import Reuse, Stop, StopKind

SHARED = "/shared"  # the scope every user's lookups see
EVICTIONS_KEPT = 4096  # evicted digests remembered, to tell "evicted" from "never computed"


class Match(NamedTuple):
    """The cached pages a forward can take, in order, and where matching stopped."""

    pages: list[int]
    digests: list[bytes]  # each taken page's digest: the file's chain continues from the last
    sources: list[str]  # the file that computed each page (its name then)
    stop: Stop


class Cached(NamedTuple):
    """One indexed page."""

    page: int
    parent: bytes  # the digest of the prefix before it (b"" for a file's first page)
    tokens: tuple[int, ...]
    positions: tuple[int, ...]
    scope: str
    source: str
    since: float  # when it was published (the engine's clock)


def digest(parent: bytes, tokens: Sequence[int], positions: Sequence[int]) -> bytes:
    """The chained digest of a full page after the prefix `parent`."""
    h = hashlib.blake2b(parent, digest_size=16)
    h.update(array("q", tokens).tobytes())
    h.update(b"|")
    h.update(array("q", positions).tobytes())
    return h.digest()


def chain(
    parent: bytes, tokens: Sequence[int], positions: Sequence[int], page_size: int
) -> list[bytes]:
    """The digests of the full pages of tokens appended after the prefix `parent`."""
    out = []
    for a in range(0, len(tokens) - page_size + 1, page_size):
        parent = digest(parent, tokens[a : a + page_size], positions[a : a + page_size])
        out.append(parent)
    return out


def scope_of(path: str, owner: str) -> str:
    """The scope a file's pages are published under: /shared files' to all, others' to the
    owner."""
    return SHARED if path == SHARED or path.startswith(SHARED + "/") else owner


class PrefixIndex:
    """Full pages by (scope, digest), with what `match` needs to explain a miss."""

    def __init__(self, page_size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.page_size = page_size
        self.clock = clock  # the engine's: seconds since it started (engine.trace)
        self._entries: dict[tuple[str, bytes], Cached] = {}
        self._by_page: dict[int, tuple[str, bytes]] = {}
        self._children: dict[bytes, set[tuple[str, bytes]]] = collections.defaultdict(set)
        self._scopes: dict[bytes, set[str]] = collections.defaultdict(set)  # digest -> scopes
        self._evicted: collections.OrderedDict[tuple[str, bytes], float] = collections.OrderedDict()
        self.hits = 0  # pages taken from the cache
        self.misses = 0  # full pages looked up and computed

    def __len__(self) -> int:
        return len(self._entries)

    def holds(self, page: int) -> bool:
        return page in self._by_page

    def publish(
        self,
        scope: str,
        parent: bytes,
        tokens: Sequence[int],
        positions: Sequence[int],
        page: int,
        source: str,
    ) -> bytes:
        """Index a full page; returns its digest. A digest already indexed keeps its page."""
        if len(tokens) != self.page_size or len(positions) != self.page_size:
            raise ValueError(f"only full pages of {self.page_size} tokens are indexed")
        d = digest(parent, tokens, positions)
        key = (scope, d)
        if key not in self._entries and page not in self._by_page:
            self._entries[key] = Cached(
                page, parent, tuple(tokens), tuple(positions), scope, source, self.clock()
            )
            self._by_page[page] = key
            self._children[parent].add(key)
            self._scopes[d].add(scope)
            self._evicted.pop(key, None)
        return d

    def share(self, pages: Sequence[int]) -> None:
        """A /shared file took these pages from the cache: those its owner published privately
        move to SHARED, where the owner still sees them and every other user now may too."""
        for page in pages:
            scope, d = key = self._by_page[page]
            if scope == SHARED or (SHARED, d) in self._entries:
                continue
            entry = self._entries.pop(key)
            self._entries[(SHARED, d)] = entry._replace(scope=SHARED)
            self._by_page[page] = (SHARED, d)
            self._children[entry.parent].discard(key)
            self._children[entry.parent].add((SHARED, d))
            self._scopes[d].discard(scope)
            self._scopes[d].add(SHARED)

    def forget(self, page: int, evicted: bool = True) -> None:
        """The pool took the page back (evicted: remember when, to explain a later miss)."""
        key = self._by_page.pop(page)
        entry = self._entries.pop(key)
        siblings = self._children[entry.parent]
        siblings.discard(key)
        if not siblings:
            del self._children[entry.parent]
        scopes = self._scopes[key[1]]
        scopes.discard(key[0])
        if not scopes:
            del self._scopes[key[1]]
        if evicted:
            self._evicted[key] = self.clock()
            while len(self._evicted) > EVICTIONS_KEPT:
                self._evicted.popitem(last=False)

    def match(
        self,
        user: str,
        parent: bytes,
        start: int,
        tokens: Sequence[int],
        positions: Sequence[int],
        limit: int | None = None,
    ) -> Match:
        """The cached full pages that can hold the first tokens of `tokens`, appended after the
        prefix `parent` (ending at file index `start`, a page boundary), as `user` sees them.

        limit: match no page past this many tokens (the first token whose output is asked for
        must be computed).
        """
        ps, n = self.page_size, len(tokens)
        usable = n if limit is None else min(n, limit)
        found = Match([], [], [], Stop("end", start + n))
        at = 0
        while at + ps <= n:
            index = start + at
            if at + ps > usable:
                return found._replace(stop=Stop("output", index))
            chunk, pos = tokens[at : at + ps], positions[at : at + ps]
            d = digest(parent, chunk, pos)
            hit = self._entries.get((user, d)) or self._entries.get((SHARED, d))
            if hit is None:
                self.misses += 1
                return found._replace(stop=self._why(user, parent, d, index, chunk, pos))
            self.hits += 1
            found.pages.append(hit.page)
            found.digests.append(d)
            found.sources.append(hit.source)
            parent, at = d, at + ps
        if at < n:
            return found._replace(stop=Stop("floor", start + at))
        return found

    def _why(
        self,
        user: str,
        parent: bytes,
        d: bytes,
        index: int,
        tokens: Sequence[int],
        positions: Sequence[int],
    ) -> Stop:
        """Why the page with digest d (at file index `index`) is not in the user's view."""
        when = self._evicted.get((user, d)) or self._evicted.get((SHARED, d))
        if when is not None:
            return Stop("evicted", index, when=when)
        others = self._scopes.get(d, set()) - {user, SHARED}
        if others:
            return Stop("other_user", index, owner=min(others))
        # The closest cached page after the same prefix, as this user sees them.
        best: tuple[int, Cached] | None = None
        for key in self._children.get(parent, ()):
            entry = self._entries[key]
            if entry.scope not in (user, SHARED):
                continue
            same = next(
                (i for i, (a, b) in enumerate(zip(tokens, entry.tokens, strict=True)) if a != b),
                len(tokens),
            )
            if best is None or same > best[0]:
                best = (same, entry)
        if best is None:
            return Stop("new", index)
        same, entry = best
        if same == len(tokens):  # the same tokens: the positions differ
            return Stop("positions", index)
        return Stop("differ", index + same, ours=tokens[same], theirs=entry.tokens[same])


REUSES_KEPT = 64  # lookups remembered per file


@dataclass(slots=True)
class Sharing:
    """How one KV sequence takes part in automatic prefix sharing."""

    user: str  # whose view its lookups have (the file's owner)
    scope: str  # where its pages are published: SHARED or the owner
    source: str  # the file's name, for explanations
    on: bool = True
    chain: list[bytes] = field(default_factory=list)  # digests of its first full pages
    # Tokens from this index on were computed while some tokens were hidden, or under a tree
    # mask: their keys and values are not a plain prefix's, so no page holding them is
    # published and nothing is matched after them. None: every token is plain.
    dirty_from: int | None = None
    log: list[Reuse] = field(default_factory=list)
    # why the tokens from dirty_from on are not plain: "hidden" (hidden tokens or a tree mask)
    # or "edited" (tokens spliced in or dropped: kv.splice, kv.drop)
    why: StopKind = "hidden"

    def copy(self, source: str) -> Sharing:
        chain = list(self.chain)
        return Sharing(self.user, self.scope, source, self.on, chain, self.dirty_from, why=self.why)

    def record(self, reuse: Reuse) -> None:
        self.log.append(reuse)
        del self.log[:-REUSES_KEPT]

    def mark_dirty(self, index: int, why: StopKind = "hidden") -> None:
        if self.dirty_from is None or index < self.dirty_from:
            self.dirty_from, self.why = index, why

    def edited(self, index: int, page_size: int) -> None:
        """Tokens from `index` on were spliced in or moved by a drop: the pages before it stay
        published and matched; nothing from there on is (its keys and values were computed
        after another prefix)."""
        del self.chain[index // page_size :]
        self.mark_dirty(index, "edited")

    def truncated(self, n: int, page_size: int, hidden: bool) -> None:
        """The sequence kept its first n tokens (hidden: some of them are still hidden)."""
        del self.chain[n // page_size :]
        clean = n if self.dirty_from is None else min(self.dirty_from, n)
        self.dirty_from = None if clean == n and not hidden else clean
