"""Attention sinks, sliding windows and thought structures on a real kernel in process."""

from __future__ import annotations

import asyncio
from typing import Any

import torch
from test_library import PROMPT, greedy_tokens, run

from engine.syscalls import Syscalls
from engine.wire import events as ev
from engine.wire.records import Logits, SamplingParams
from workbench.lib import (
    attention_sink,
    graph_of_thought,
    skeleton_of_thought,
    sliding_window,
    tree_of_thought,
)
from workbench.lib.decoding import generate

PS = 4  # the page size of `run`'s kernels


def close(a: Any, b: Any) -> None:
    torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-5, rtol=0)


def test_an_attention_sinks_pages_stay_flat_over_500_tokens_and_dropping_equals_hiding(
    tiny_loaded,  # noqa: ANN001
) -> None:
    sink, window, steps = 4, 32, 500  # PROMPT (12 tokens) + 500: the last position is 510 < 512

    async def program(sys: Syscalls) -> tuple:
        dropping, hiding = await sys.kv.create(), await sys.kv.create()
        dropped, hidden = await asyncio.gather(
            attention_sink(sys, dropping, PROMPT, steps, sink, window, free=True),
            attention_sink(sys, hiding, PROMPT, steps, sink, window, free=False),
        )
        last = dropped.tokens[-1]  # generate's way: the last token is not in the files yet
        a = await sys.forward(dropping, [last], returns=Logits())
        b = await sys.forward(hiding, [last], returns=Logits())
        return dropped, hidden, a, b, await sys.kv.stat(dropping), await sys.kv.stat(hiding)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model's decode steps run faster on one thread
    try:
        (dropped, hidden, a, b, st_drop, st_hide), _ = run(tiny_loaded, program, num_pages=256)
    finally:
        torch.set_num_threads(threads)
    assert len(dropped.tokens) == steps and dropped.tokens == hidden.tokens
    close(a, b)  # the dropped tokens have no effect: the logits of hiding them
    bound = -(-(sink + window + PS) // PS)  # pages before a drop: sink + window + one chunk
    assert dropped.num_pages and set(dropped.num_pages) == {bound}  # flat, from the first drop on
    assert hidden.num_pages[-1] > 5 * bound  # hiding keeps every page
    assert dropped.left == hidden.left == st_hide.hidden
    assert st_drop.tokens == len(PROMPT) + steps - dropped.left and st_drop.hidden == 0
    assert st_drop.num_pages <= bound and st_hide.num_pages == -(-(len(PROMPT) + steps) // PS)


def test_a_sliding_window_keeps_only_the_latest_tokens(tiny_loaded) -> None:  # noqa: ANN001
    async def program(sys: Syscalls) -> tuple:
        f = await sys.kv.create()
        out = await sliding_window(sys, f, PROMPT, 40, window=8)
        return out, await sys.kv.read(f)

    (out, kept), _ = run(tiny_loaded, program)
    everything = [*PROMPT, *out.tokens[:-1]]  # what the file would hold without the window
    assert kept == everything[-len(kept) :] and 8 <= len(kept) < 8 + PS
    assert set(out.num_pages) == {-(-(8 + PS) // PS)}


def test_graph_of_thought_merges_by_splicing_and_computes_nothing_again(tiny_loaded) -> None:  # noqa: ANN001
    n, branch_tokens, merge_tokens = 3, 6, 5

    async def program(sys: Syscalls) -> Any:
        return await graph_of_thought(
            sys, PROMPT, n, branch_tokens, [7, 8], merge_tokens, SamplingParams(temperature=1.0)
        )

    graph, kernel = run(tiny_loaded, program)
    computed = sum(e.data["tokens"] for e in kernel.trace.query(kinds=[ev.BATCH]))
    prompt = len(PROMPT)  # the prompt once, each branch's tokens, the merge prompt and tokens
    branches = sum(len(b.tokens) + 1 for b in graph.branches) - n  # the last prompt token each
    assert computed == prompt + n - 1 + branches + 2 + merge_tokens - 1
    first, *others = graph.spliced
    assert first.tokens == prompt + branch_tokens and first.copied_tokens == 0
    assert first.num_shared_pages == -(-(prompt + branch_tokens) // PS)
    assert all(s.tokens == branch_tokens for s in others)
    assert len({tuple(b.tokens) for b in graph.branches}) > 1 and len(graph.merged.tokens) == 5


def test_a_greedy_tree_of_thought_is_greedy_decoding_and_ranks_by_value(tiny_loaded) -> None:  # noqa: ANN001
    async def program(sys: Syscalls) -> tuple:
        greedy = await tree_of_thought(
            sys,
            PROMPT,
            lambda t: 0.0,
            branches=2,
            depth=3,
            thought_tokens=4,
            params=SamplingParams(),
            stop=(),
        )
        ranked = await tree_of_thought(
            sys,
            PROMPT,
            lambda t: float(len(t)),
            branches=3,
            depth=2,
            keep=2,
            thought_tokens=3,
            stop=(),
        )
        return greedy, ranked, await greedy_tokens(sys, PROMPT, 12)

    (greedy, ranked, want), _ = run(tiny_loaded, program)
    assert [t.tokens for t in greedy] == [want] and greedy[0].depth == 3
    assert len(ranked) == 2 and ranked[0].value >= ranked[1].value
    assert all(t.value == len(t.text) and len(t.tokens) == 6 for t in ranked)


def test_skeleton_of_thought_expands_each_point_in_a_spawned_child(tiny_loaded) -> None:  # noqa: ANN001
    points = ["alpha", "beta", "gamma"]

    async def program(sys: Syscalls) -> tuple:
        out = await skeleton_of_thought(sys, PROMPT, points, point_tokens=6)
        skeleton = [*PROMPT, *sys.tokenize("\n".join(points))]
        want = []
        for point in points:
            g = await generate(sys, await sys.kv.create(), skeleton + sys.tokenize("\n" + point), 6)
            want.append(g.text)
        return out, want, sys.pid

    (out, want, me), kernel = run(tiny_loaded, program)
    assert out.points == points and out.expansions == want
    children = {p.pid: p for p in kernel.ps() if p.pid in out.children}
    assert len(children) == 3 and all(p.parent == me for p in children.values())


def test_with_a_folder_the_kept_files_stay_for_the_views(tiny_loaded) -> None:  # noqa: ANN001
    async def program(sys: Syscalls) -> tuple:
        owner = sys.process.owner
        tree, graph = f"/home/{owner}/tree", f"/home/{owner}/graph"
        await tree_of_thought(
            sys, PROMPT, lambda t: 0.0, 2, 2, thought_tokens=3, stop=(), folder=tree
        )
        await graph_of_thought(sys, PROMPT, 2, 3, [7], 2, folder=graph)
        walked = {s.path: s.parent for s in await sys.kv.walk(f"/home/{owner}")}
        for path in walked:
            await sys.kv.unlink(path)
        return tree, graph, walked

    (tree, graph, walked), _ = run(tiny_loaded, program)
    # depth 1: two children of the prompt, one kept; depth 2: its two children, one kept
    assert walked == {
        f"{tree}/prompt": None,
        f"{tree}/depth1-0": f"{tree}/prompt",
        f"{tree}/depth2-0": f"{tree}/depth1-0",
        f"{graph}/prompt": None,
        f"{graph}/branch-0": f"{graph}/prompt",
        f"{graph}/branch-1": f"{graph}/prompt",
        f"{graph}/merged": None,
    }
