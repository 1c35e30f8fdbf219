"""The copy-on-write primitives on their own (the model tests check the logits through them)."""

from __future__ import annotations

import pytest

from engine.page_pool import PagePool
from engine.sequence import KVSequence
from engine.wire.errors import InvalidArgument, OutOfPages


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


def test_default_positions_continue_from_the_last_visible_token(pool: PagePool) -> None:
    """Hidden tokens at the end (a rejected draft, say) take no position from what follows."""
    seq = filled(pool, 6)
    assert seq.next_position == 6
    seq.hide([4, 5])
    assert seq.next_position == 4
    seq.hide([1])  # hidden before the last visible token: positions go on after it
    assert seq.next_position == 4
    seq.unhide([5])
    assert seq.next_position == 6
    seq.hide(list(range(6)))
    assert seq.next_position == 0
    seq.release(pool)


def test_swap_out_moves_only_private_pages_and_swap_in_restores_them(pool: PagePool) -> None:
    parent = filled(pool, 10)  # 3 pages: 2 shared with the fork, the partial last one copied
    child = parent.fork(pool)
    child.reserve(pool, 1)
    child.append([10], [10])
    pool.k[:, child.pages[2]] = 7.0
    shared, own = child.pages[:2], child.pages[2]
    free = pool.num_free
    assert child.swap_out(pool) == 1 and pool.num_free == free + 1
    assert not child.resident and child.num_swapped_pages == 1 and child.num_pages == 3
    assert child.page_table() == [*shared, None]  # the shared pages never left the pool
    assert child.held_pages() == shared
    assert child.pages_needed(pool, 1) == 0  # room in its (private) last page, once back
    with pytest.raises(RuntimeError, match="swapped-out"):
        child.reserve(pool, 1)
    with pytest.raises(RuntimeError, match="swapped-out"):
        child.fork(pool)
    assert child.swap_out(pool) == 0  # once out, out
    pool.k[:, own] = 0.0  # someone else's page now
    child.swap_in(pool)
    assert child.resident and child.pages[:2] == shared
    assert bool((pool.k[:, child.pages[2]] == 7.0).all())
    parent.release(pool)
    child.release(pool)
    assert pool.num_free == pool.num_pages


def test_a_sequence_of_shared_pages_only_stays_resident(pool: PagePool) -> None:
    parent = filled(pool, 8)
    child = parent.fork(pool)
    assert child.swap_out(pool) == 0 and child.resident
    parent.release(pool)
    child.release(pool)


def test_releasing_a_swapped_out_sequence_frees_its_pages_wherever_they_are(
    pool: PagePool,
) -> None:
    parent = filled(pool, 8)
    child = parent.fork(pool)
    child.reserve(pool, 1)
    child.append([8], [8])
    assert child.swap_out(pool) == 1
    child.release(pool)
    assert child.resident and len(child) == 0 and child.num_swapped_pages == 0
    parent.release(pool)
    assert pool.num_free == pool.num_pages


def test_swap_in_without_room_changes_nothing(pool: PagePool) -> None:
    seq = filled(pool, 8)
    assert seq.swap_out(pool) == 2
    hog = pool.alloc(pool.num_free - 1)
    with pytest.raises(OutOfPages):
        seq.swap_in(pool)
    assert not seq.resident and seq.num_swapped_pages == 2
    pool.release(hog)
    seq.swap_in(pool)
    assert seq.resident and len(seq.pages) == 2
    seq.release(pool)
