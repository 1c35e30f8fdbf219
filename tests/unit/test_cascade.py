"""Cascade attention: shared prefixes attended once give the same results as plain attention."""

from __future__ import annotations

import random

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.attention import BatchLayout, TorchBackend
from engine.attention.cascade import CascadePlan, Group, attend_with_lse, merge, shared_prefixes
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


def run_script(
    loaded: LoadedModel, cascade: bool, page_size: int, script: list
) -> list[torch.Tensor]:
    """Prefill a root, fork and decode as `script` says; every decode step's logits."""
    pool = PagePool.for_model(loaded.config, 256, page_size)
    runner = Runner(loaded.model, pool, TorchBackend(cascade=cascade))
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
    fast = run_script(tiny_loaded, True, page_size, script)
    for a, b in zip(plain, fast, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)


def test_forks_of_a_long_prompt_take_the_cascade_path(tiny_loaded) -> None:  # noqa: ANN001
    pool = PagePool.for_model(tiny_loaded.config, 64, 4)
    backend = TorchBackend()
    runner = Runner(tiny_loaded.model, pool, backend)
    root = KVSequence()
    runner.forward([Segment(root, list(range(30)))])
    files = [root.fork(pool) for _ in range(4)]
    layout, _, _ = runner._layout([Segment(f, [1]) for f in files])
    plan = backend.plan(layout, pool)
    assert isinstance(plan, CascadePlan) and len(plan.groups) == 1
    for f in [root, *files]:
        f.release(pool)
