from __future__ import annotations

import pytest
import torch

from engine.page_pool import PagePool
from engine.wire.errors import OutOfPages


def small_pool(num_pages: int = 8, page_size: int = 4) -> PagePool:
    return PagePool(
        num_layers=2, num_kv_heads=2, head_dim=8, num_pages=num_pages, page_size=page_size
    )


def test_alloc_release_keeps_the_invariant() -> None:
    pool = small_pool()
    a = pool.alloc(3)
    b = pool.alloc(2)
    assert len(set(a + b)) == 5 and pool.num_free == 3
    pool.check()
    pool.ref(a[:1])
    pool.release(a)
    assert pool.refcount[a[0]] == 1 and pool.num_free == 5
    pool.release(a[:1] + b)
    assert pool.num_free == 8
    pool.check()


def test_running_out_is_a_typed_error_and_allocates_nothing() -> None:
    pool = small_pool(num_pages=4)
    pool.alloc(3)
    with pytest.raises(OutOfPages) as err:
        pool.alloc(2)
    assert err.value.needed == 2 and err.value.free == 1
    assert pool.num_free == 1
    pool.check()


def test_double_release_and_sharing_a_free_page_are_refused() -> None:
    pool = small_pool()
    (p,) = pool.alloc(1)
    pool.release([p])
    with pytest.raises(ValueError, match="released more times"):
        pool.release([p])
    with pytest.raises(ValueError, match="is free"):
        pool.ref([p])
    pool.check()


def test_write_lands_in_the_named_slots_and_copy_page_copies_a_prefix() -> None:
    pool = small_pool(page_size=4)
    src, dst = pool.alloc(2)
    k = torch.randn(3, 2, 8)
    v = torch.randn(3, 2, 8)
    slots = torch.tensor([src * 4 + 0, src * 4 + 1, src * 4 + 3])
    pool.write(1, slots, k, v)
    assert torch.equal(pool.k[1, src, 3], k[2]) and torch.equal(pool.v[1, src, 0], v[0])
    pool.copy_page(src, dst, num_tokens=2)
    assert torch.equal(pool.k[:, dst, :2], pool.k[:, src, :2])
    assert torch.count_nonzero(pool.k[:, dst, 2:]) == 0


def test_check_catches_a_corrupted_free_list() -> None:
    pool = small_pool()
    (p,) = pool.alloc(1)
    pool._free.append(p)  # simulate a bug: a held page on the free list
    with pytest.raises(AssertionError, match="both free and referenced"):
        pool.check()


def test_every_change_to_a_page_moves_its_version_past_the_clock_before() -> None:
    pool = small_pool()
    a, b = pool.alloc(2)
    before = pool.clock
    pool.copy_page(a, b, 2)  # copy-on-write copies into b
    assert pool.version[b] > before and pool.version[a] <= before
    was = pool.version[a]
    pool.mark_written([a * 4 + 1, a * 4 + 2])  # one forward writes two slots of a
    assert pool.version[a] == pool.clock > was and pool.before_write == {a: was}
    pool.release([a])
    (c,) = pool.alloc(1)  # the same page again, new contents
    assert c == a and pool.version[c] == pool.clock
