"""The copy-on-write primitives on their own (the model tests check the logits through them)."""

from __future__ import annotations

import pytest

from engine.page_pool import PagePool
from engine.sequence import KVSequence
from engine.wire.errors import InvalidArgument


@pytest.fixture
def pool(make_pool) -> PagePool:  # noqa: ANN001
    return make_pool(num_layers=1, num_kv_heads=1, head_dim=4, num_pages=16, page_size=4)


def filled(pool: PagePool, n: int) -> KVSequence:
    seq = KVSequence()
    seq.reserve(pool, n)
    seq.append(list(range(n)), list(range(n)))
    return seq


def test_reserve_returns_slots_in_the_sequences_pages(pool: PagePool) -> None:
    seq = filled(pool, 6)
    assert len(seq.pages) == 2
    slots = seq.reserve(pool, 3)
    p = seq.pages
    assert slots == [p[1] * 4 + 2, p[1] * 4 + 3, p[2] * 4 + 0]
    seq.append([1, 2, 3], [6, 7, 8])
    seq.release(pool)


def test_fork_shares_all_pages_and_a_write_copies_only_the_partial_one(pool: PagePool) -> None:
    parent = filled(pool, 6)
    child = parent.fork(pool)
    assert child.pages == parent.pages
    assert [pool.refcount[p] for p in parent.pages] == [2, 2]
    assert child.pages_needed(pool, 1) == 1  # the copy of the shared partial page
    child.reserve(pool, 1)
    assert child.pages[0] == parent.pages[0] and child.pages[1] != parent.pages[1]
    assert pool.refcount[parent.pages[0]] == 2 and pool.refcount[parent.pages[1]] == 1
    assert pool.refcount[child.pages[1]] == 1
    parent.release(pool)
    child.release(pool)
    assert pool.num_free == pool.num_pages


def test_fork_at_a_page_boundary_copies_nothing(pool: PagePool) -> None:
    parent = filled(pool, 8)
    child = parent.fork(pool)
    assert child.pages_needed(pool, 1) == 1  # one fresh page, no copy
    child.reserve(pool, 1)
    assert child.pages[:2] == parent.pages
    parent.release(pool)
    child.release(pool)


def test_truncate_releases_pages_past_the_cut(pool: PagePool) -> None:
    seq = filled(pool, 11)
    seq.hide([2, 9])
    free = pool.num_free
    seq.truncate(pool, 5)
    assert len(seq) == 5 and len(seq.pages) == 2 and pool.num_free == free + 1
    assert seq.hidden == {2} and seq.next_position == 5
    with pytest.raises(InvalidArgument):
        seq.truncate(pool, 6)
    seq.release(pool)


def test_truncate_into_a_shared_page_copies_on_the_next_write(pool: PagePool) -> None:
    a = filled(pool, 8)
    b = a.fork(pool)
    b.truncate(pool, 6)
    assert b.pages == a.pages
    b.reserve(pool, 1)
    assert b.pages[1] != a.pages[1] and b.pages[0] == a.pages[0]
    a.release(pool)
    b.release(pool)


def test_hide_and_unhide_validate_indices(pool: PagePool) -> None:
    seq = filled(pool, 4)
    seq.hide([0, 3])
    seq.unhide([0])
    assert seq.hidden == {3}
    with pytest.raises(InvalidArgument, match="outside"):
        seq.hide([4])
    seq.release(pool)
