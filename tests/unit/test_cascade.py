"""Cascade attention: shared prefixes attended once give the same results as plain attention."""

from __future__ import annotations

import random
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.attention import BatchLayout, TorchBackend
from engine.attention.cascade import (
    CascadePlan,
    Group,
    attend_with_lse,
    flash_with_lse,
    merge,
    shared_prefixes,
    visible_bias,
)
from engine.attention.resident import ResidentPlan
from engine.loader import LoadedModel
from engine.page_pool import PagePool
from engine.runner import Runner, Segment
from engine.sequence import KVSequence


def decode_layout(tables: list[list[int]], kv_lens: list[int], page_size: int) -> BatchLayout:
    n = len(tables)
    return BatchLayout(
        [1] * n, kv_lens, tables, torch.zeros(n, dtype=torch.long), [None] * n, page_size
    )


def test_groups_are_the_longest_shared_run_of_full_pages() -> None:
    layout = decode_layout(
        [[0, 1, 2, 3], [0, 1, 2, 4], [0, 1, 5], [6, 7], [6, 8], [9, 10]],
        # the third's new token sits at index 32: pages 0 and 1 are full before it
        [4 * 4, 4 * 4, 2 * 4 + 1, 2 * 4, 5, 8],
        page_size=4,
    )
    # 0-2 share pages 0, 1 (2 is the third's last full page, not shared by all); 3-4 share 6;
    # 5 shares nothing with anyone
    assert shared_prefixes(layout) == [Group([0, 1, 2], [0, 1]), Group([3, 4], [6])]
    # a partial first page is never a shared prefix: the new token would be written into it
    assert shared_prefixes(decode_layout([[0], [0]], [3, 3], page_size=4)) == []


def test_merging_two_halves_is_softmax_over_the_union() -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 8, generator=gen) for n in (5, 11, 11))
    whole, _ = attend_with_lse(q, k, v, None)
    a, la = attend_with_lse(q, k[:, :, :4], v[:, :, :4], None)
    b, lb = attend_with_lse(q, k[:, :, 4:], v[:, :, 4:], None)
    torch.testing.assert_close(merge(a, la, b, lb), whole, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_flash_kernel_gives_the_reference_output_and_lse(dtype: torch.dtype, tol: float) -> None:
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(6, 3, n, 16, generator=gen) for n in (4, 37, 37))
    visible = torch.arange(37)[None, :] < torch.tensor([1, 5, 16, 17, 36, 37])[:, None]
    visible = visible[:, None, None, :]  # each row of the batch sees its own number of keys
    for mask in (None, visible):
        out, lse = attend_with_lse(q, k, v, mask)
        bias = None if mask is None else visible_bias(mask, dtype)
        fast_out, fast_lse = flash_with_lse(q.to(dtype), k.to(dtype), v.to(dtype), bias)
        assert fast_out.dtype == dtype and fast_lse.dtype == torch.float32
        torch.testing.assert_close(fast_out.float(), out, rtol=0, atol=tol)
        torch.testing.assert_close(fast_lse, lse, rtol=0, atol=tol)


def run_script(
    loaded: LoadedModel, cascade: bool, page_size: int, script: list
) -> list[torch.Tensor]:
    """Prefill a root, fork and decode as `script` says; every decode step's logits."""
    pool = PagePool.for_model(loaded.config, 256, page_size)
    runner = Runner(loaded.model, pool, TorchBackend(cascade=cascade, resident=False))
    prompt, steps = script[0], script[1:]
    files = [KVSequence()]
    runner.forward([Segment(files[0], prompt)])
    out = []
    for forks, tokens in steps:
        for src in forks:
            files.append(files[src % len(files)].fork(pool))
        out += runner.forward([Segment(f, [t]) for f, t in zip(files, tokens, strict=False)])
    for f in files:
        f.release(pool)
    pool.check()
    return out


@settings(max_examples=30, deadline=None)
@given(
    page_size=st.sampled_from([1, 2, 4, 16]),
    prompt_len=st.integers(1, 40),
    steps=st.lists(
        st.tuples(st.lists(st.integers(0, 9), max_size=3), st.integers(0, 1000)),
        min_size=1,
        max_size=5,
    ),
)
def test_cascade_equals_plain_attention_over_forks(
    tiny_loaded, page_size: int, prompt_len: int, steps: list
) -> None:  # noqa: ANN001
    rng = random.Random(prompt_len * 1000 + page_size)
    vocab = tiny_loaded.config.vocab_size
    script: list = [[rng.randrange(vocab) for _ in range(prompt_len)]]
    for forks, seed in steps:
        r = random.Random(seed)
        script.append((forks, [r.randrange(vocab) for _ in range(16)]))
    plain = run_script(tiny_loaded, False, page_size, script)
    fast = run_script(tiny_loaded, True, page_size, script)  # torch's flash kernel
    with mock.patch("engine.attention.cascade.flash_applies", return_value=False):
        reference = run_script(tiny_loaded, True, page_size, script)  # attend_with_lse
    for a, b, c in zip(plain, fast, reference, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
        torch.testing.assert_close(c, a, rtol=0, atol=1e-5)


def test_forks_of_a_long_prompt_take_the_cascade_path(tiny_loaded) -> None:  # noqa: ANN001
    pool = PagePool.for_model(tiny_loaded.config, 64, 4)
    backend = TorchBackend()
    runner = Runner(tiny_loaded.model, pool, backend)
    root = KVSequence()
    runner.forward([Segment(root, list(range(30)))])
    files = [root.fork(pool) for _ in range(4)]
    layout, _, _ = runner._layout([Segment(f, [1]) for f in files])
    plan = backend.plan(layout, pool)
    assert isinstance(plan, CascadePlan) and len(plan.groups) == 1 and plan.whole
    other = KVSequence()  # a file of its own in the batch: the group's rows are picked out
    runner.forward([Segment(other, list(range(30)))])
    layout, _, _ = runner._layout([Segment(f, [1]) for f in [other, *files]])
    plan = backend.plan(layout, pool)
    assert isinstance(plan, CascadePlan) and len(plan.groups) == 1 and not plan.whole
    for f in [root, other, *files]:
        f.release(pool)


# --- resident copies (engine.attention.resident) ----------------------------------------------

BACKENDS = {
    "plain": dict(cascade=False, resident=False),  # the reference: gather every step
    "resident": dict(cascade=False, resident=True),
    "default": dict(cascade=True, resident=True),
}


def run_ops(loaded: LoadedModel, backend: str, page_size: int, prompt: list[int], ops: list):
    """Prefill a root, then per step: forks, truncations, a separate 2-token write, and a decode
    of a shuffled subset of the files. Every result's logits, in order."""
    pool = PagePool.for_model(loaded.config, 512, page_size)
    runner = Runner(loaded.model, pool, TorchBackend(**BACKENDS[backend]))
    files = [KVSequence()]
    out = [runner.forward([Segment(files[0], prompt)])[0]]
    for forks, cuts, extend, seed in ops:
        rng = random.Random(seed)
        for src in forks:
            files.append(files[src % len(files)].fork(pool))
        for i, n in cuts:  # roll a file back by n tokens, keeping at least one
            f = files[i % len(files)]
            f.truncate(pool, max(1, len(f) - n))
        if extend is not None:  # a prefill chunk in a forward of its own (not a decode)
            out += runner.forward([Segment(files[extend % len(files)], [rng.randrange(50)] * 2)])
        chosen = rng.sample(files, len(files) if seed % 3 else rng.randint(1, len(files)))
        out += runner.forward([Segment(f, [rng.randrange(50)]) for f in chosen])
    for f in files:
        f.release(pool)
    pool.check()
    return out


@settings(max_examples=25, deadline=None)
@given(
    page_size=st.sampled_from([1, 4, 16]),
    prompt_len=st.integers(1, 40),
    ops=st.lists(
        st.tuples(
            st.lists(st.integers(0, 9), max_size=2),
            st.lists(st.tuples(st.integers(0, 9), st.integers(0, 20)), max_size=2),
            st.none() | st.integers(0, 9),
            st.integers(0, 1000),
        ),
        min_size=1,
        max_size=8,
    ),
)
def test_resident_copies_equal_plain_attention_through_fork_truncate_and_reordering(
    tiny_loaded, page_size: int, prompt_len: int, ops: list
) -> None:  # noqa: ANN001
    """Rows kept across steps stay exact when files fork, roll back, are written by other
    forwards, and come back in another order or not at all."""
    prompt = [(7 * i) % 50 for i in range(prompt_len)]
    plain = run_ops(tiny_loaded, "plain", page_size, prompt, ops)
    for backend in ("resident", "default"):
        fast = run_ops(tiny_loaded, backend, page_size, prompt, ops)
        for a, b in zip(plain, fast, strict=True):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-5)


def test_a_decode_batch_copies_only_its_new_tokens_once_resident(tiny_loaded) -> None:  # noqa: ANN001
    pool = PagePool.for_model(tiny_loaded.config, 64, 4)
    backend = TorchBackend()
    runner = Runner(tiny_loaded.model, pool, backend)
    files = [KVSequence() for _ in range(3)]
    runner.forward([Segment(f, list(range(10 + i))) for i, f in enumerate(files)])

    def plan(order: list[int]) -> ResidentPlan:
        segments = [Segment(files[i], [1]) for i in order]
        layout, _, _ = runner._layout(segments)
        p = backend.plan(layout, pool)
        assert isinstance(p, ResidentPlan)
        for s, n in zip(segments, layout.q_lens, strict=True):  # as the runner does after
            s.seq.append(s.tokens, [s.seq.next_position] * n)
        return p

    assert plan([0, 1, 2]).copied == 10 + 11 + 12  # first step: every old token
    assert plan([2, 0, 1]).copied == 0  # reordered: each file keeps its row
    files[1].truncate(pool, 5)
    assert plan([0, 1, 2]).copied == 0  # a rolled-back file keeps the prefix it still has
    runner.forward([Segment(files[1], [3, 3])])  # written by another forward: copied afresh
    assert plan([1]).copied == 5 + 2 + 1
    for f in files:
        f.release(pool)


def test_a_groups_shared_pages_are_copied_once_while_they_are_unchanged(tiny_loaded) -> None:  # noqa: ANN001
    pool = PagePool.for_model(tiny_loaded.config, 64, 4)
    backend = TorchBackend()
    runner = Runner(tiny_loaded.model, pool, backend)
    root = KVSequence()
    runner.forward([Segment(root, list(range(30)))])
    files = [root.fork(pool) for _ in range(3)]
    runner.forward([Segment(f, [1]) for f in files])
    (first,) = backend.shared.copies.values()
    assert first.k.shape[2] == 28  # the 7 full pages before the new tokens
    runner.forward([Segment(f, [2]) for f in files])
    (kept,) = backend.shared.copies.values()
    assert kept is first
    pool.mark_written([root.pages[0] * 4])  # were a shared page to change, it is copied again
    layout, _, _ = runner._layout([Segment(f, [3]) for f in files])
    assert isinstance(backend.plan(layout, pool), CascadePlan)
    (fresh,) = backend.shared.copies.values()
    assert fresh is not first
    for f in [root, *files]:
        f.release(pool)
