"""Splicing and dropping in the kernel: `kv.splice` appends ranges of other files without
computing them, `kv.drop` removes a range and frees its pages; logits against fresh prefills."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import torch

from engine.kernel import Kernel
from engine.kvfs import Caller
from engine.loader import load_model
from engine.models import TINY_MODEL
from engine.syscalls import Syscalls
from engine.wire import events as ev
from engine.wire.errors import InvalidArgument, PermissionDenied
from engine.wire.records import Grammar, Logits
from workbench.widgets.prefix_data import reason

PS = 4  # page size of every kernel here
ATOL = 1e-5  # float32, as tests/os/test_prefix_sharing.py


def run(kernel: Kernel, body: Callable[[Kernel], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with kernel:
            return await body(kernel)

    result = asyncio.run(main())
    kernel.kvfs.check()
    return result


def one(kernel: Kernel, program: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Run one program as a process; its result. Every page it took is back afterwards."""

    async def body(k: Kernel) -> Any:
        return await k.wait(k.spawn(program, *args))

    result = run(kernel, body)
    assert kernel.pool.num_free == kernel.pool.num_pages
    return result


def prompt(seed: int, n: int) -> list[int]:
    return torch.randint(0, 250, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def close(a: Any, b: Any) -> None:
    torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=ATOL, rtol=0)


def tree_mask(parts: list[tuple[int, int]], query: int) -> torch.Tensor:
    """The mask of a fresh prefill of a prompt, branches and a query: `parts` are (start, end)
    ranges of the prefill; the first is the prompt, each other one a branch that sees the prompt
    and itself (causally), never another branch; the `query` last tokens see everything."""
    n = parts[-1][1] + query
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    mask = causal.clone()
    p_end = parts[0][1]
    for a, b in parts[1:]:
        mask[a:b, p_end:a] = False  # a branch sees no branch before it
    return mask & causal


@pytest.mark.parametrize("prompt_len", [8, 10])  # a page-aligned prompt, and one that is not
def test_spliced_logits_equal_a_fresh_prefill_and_the_merge_computes_nothing(
    tiny_loaded,  # noqa: ANN001
    prompt_len: int,
) -> None:
    p, a, b, q = prompt(1, prompt_len), prompt(2, 7), prompt(3, 6), prompt(4, 3)

    async def program(sys: Syscalls) -> tuple:
        base = await sys.kv.create()
        await sys.forward(base, p, returns=Logits())
        branches = []
        for tokens in (a, b):
            f = await sys.kv.fork(base)
            await sys.forward(f, tokens, returns=Logits())
            branches.append(f)
        computed = sys.kernel.trace.query(kinds=[ev.BATCH])
        merged = await sys.kv.create()
        whole = await sys.kv.splice(merged, branches[0])  # the prompt and the first branch
        seam = await sys.kv.splice(merged, branches[1], prompt_len)  # the second branch only
        assert sys.kernel.trace.query(kinds=[ev.BATCH]) == computed  # nothing was computed
        stat = await sys.kv.stat(merged)
        first = await sys.kv.stat(branches[0])
        top = prompt_len + len(a)  # the query goes after every position used
        got = await sys.forward(
            merged, q, positions=list(range(top, top + len(q))), outputs=[0, 1, 2], returns=Logits()
        )
        fresh = await sys.kv.create()
        parts = [(0, prompt_len), (prompt_len, top), (top, top + len(b))]
        positions = [*range(top), *range(prompt_len, prompt_len + len(b)), *range(top, top + 3)]
        want = await sys.forward(
            fresh,
            p + a + b + q,
            positions=positions,
            mask=tree_mask(parts, len(q)),
            outputs=list(range(len(positions) - 3, len(positions))),
            returns=Logits(),
        )
        return whole, seam, stat, first, got, want

    whole, seam, stat, first, got, want = one(
        Kernel(tiny_loaded, num_pages=64, page_size=PS), program
    )
    close(got, want)
    assert whole.tokens == prompt_len + len(a) and whole.copied_tokens == 0
    assert whole.num_shared_pages == len(
        first.page_table
    )  # the first branch, every page by reference
    full = (prompt_len + len(a)) // PS  # its partly filled last page was copied on write
    assert stat.page_table[:full] == first.page_table[:full]
    assert seam.tokens == len(b)
    if prompt_len == 8:  # the second branch starts at offset 0 of a page and lands at offset 3
        assert seam.num_shared_pages == 0 and seam.copied_tokens == len(b)
    assert stat.tokens == prompt_len + len(a) + len(b)


def test_a_range_that_lines_up_is_shared_by_reference_and_only_the_seam_is_copied(
    tiny_loaded,  # noqa: ANN001
) -> None:
    src = prompt(5, 22)

    async def program(sys: Syscalls) -> tuple:
        f = await sys.kv.create()
        await sys.forward(f, src, returns=Logits())
        g = await sys.kv.create()
        await sys.forward(g, src[:2], returns=Logits())  # two tokens: offset 2 in its page
        done = await sys.kv.splice(g, f, 6, 22)  # offset 2 of page 1: lines up
        return done, await sys.kv.stat(f), await sys.kv.stat(g), await sys.kv.read(g)

    done, sf, sg, tokens = one(Kernel(tiny_loaded, num_pages=64, page_size=PS), program)
    assert tokens == src[:2] + src[6:22]
    assert done == (16, 4, 2)  # tokens 6, 7 fill g's first page; pages 2..5 of f by reference
    assert sg.page_table[1:] == sf.page_table[2:]


def test_a_file_remembers_which_files_its_spliced_tokens_came_from(tiny_loaded) -> None:  # noqa: ANN001
    """`FileStat.spliced_from`: source path -> tokens taken, summed over splices; kept after a
    drop of everything (a record, as `parent` is); not inherited by a fork; an empty range adds
    nothing."""

    async def program(sys: Syscalls) -> tuple:
        a = await sys.kv.create("/home/local/a")
        b = await sys.kv.create("/home/local/b")
        await sys.forward(a, prompt(20, 9), returns=Logits())
        await sys.forward(b, prompt(21, 6), returns=Logits())
        m = await sys.kv.create("/home/local/m")
        await sys.kv.splice(m, a)  # all 9
        await sys.kv.splice(m, b, 2, 5)  # 3
        await sys.kv.splice(m, a, 1, 3)  # 2 more from a
        await sys.kv.splice(m, b, 4, 4)  # nothing
        spliced = await sys.kv.stat(m)
        fork = await sys.kv.fork(m, "/home/local/fork")
        await sys.kv.drop(m, 0, spliced.tokens)
        after = await sys.kv.stat(m)
        stats = (spliced, after, await sys.kv.stat(fork), await sys.kv.stat(a))
        for path in ("/home/local/a", "/home/local/b", "/home/local/m", "/home/local/fork"):
            await sys.kv.unlink(path)
        return stats

    spliced, after, fork, source = one(Kernel(tiny_loaded, num_pages=64, page_size=PS), program)
    assert spliced.spliced_from == {"/home/local/a": 9 + 2, "/home/local/b": 3}
    assert spliced.tokens == 9 + 3 + 2
    assert after.tokens == 0 and after.spliced_from == spliced.spliced_from
    assert fork.spliced_from == {} and fork.parent == "/home/local/m"
    assert source.spliced_from == {}


@pytest.mark.parametrize(
    ("start", "stop"),
    [(4, 12), (5, 13), (5, 11), (0, 3), (19, 23), (2, 22)],
)
def test_a_dropped_range_has_no_effect_beyond_hiding_it_and_keeps_no_page(
    tiny_loaded,  # noqa: ANN001
    start: int,
    stop: int,
) -> None:
    tokens, more = prompt(6, 23), prompt(7, 5)

    async def program(sys: Syscalls) -> tuple:
        hidden, dropped = await sys.kv.create(), await sys.kv.create()
        for f in (hidden, dropped):
            await sys.forward(f, tokens, returns=Logits())
        await sys.kv.hide(hidden, list(range(start, stop)))
        await sys.kv.drop(dropped, start, stop)
        after = tokens[-1] + 1 if stop == len(tokens) else 23  # positions continue after the last
        pos = list(range(after, after + len(more)))
        outs = list(range(len(more)))
        want = await sys.forward(hidden, more, positions=pos, outputs=outs, returns=Logits())
        got = await sys.forward(dropped, more, positions=pos, outputs=outs, returns=Logits())
        return want, got, await sys.kv.stat(dropped)

    want, got, stat = one(Kernel(tiny_loaded, num_pages=64, page_size=PS), program)
    close(got, want)
    kept = len(tokens) - (stop - start) + len(more)
    assert stat.tokens == kept and stat.num_pages == -(-kept // PS)


def test_a_dropped_range_nobody_attended_leaves_a_fresh_files_logits(tiny_loaded) -> None:  # noqa: ANN001
    """Tokens hidden before anything after them is computed, then dropped: the file is one a
    fresh prefill of only the kept tokens, at the same positions, makes."""
    p, d, q, r = prompt(8, 9), prompt(9, 10), prompt(10, 5), prompt(11, 3)

    async def program(sys: Syscalls) -> tuple:
        f = await sys.kv.create()
        await sys.forward(f, p + d, returns=Logits())
        await sys.kv.hide(f, list(range(len(p), len(p) + len(d))))
        at = len(p) + len(d)
        await sys.forward(f, q, positions=list(range(at, at + len(q))), returns=Logits())
        used = (await sys.kv.stat(f)).num_pages
        await sys.kv.drop(f, len(p), len(p) + len(d))
        freed = used - (await sys.kv.stat(f)).num_pages
        got = await sys.forward(f, r, outputs=[0, 1, 2], returns=Logits())
        fresh = await sys.kv.create()
        positions = [*range(len(p)), *range(at, at + len(q) + len(r))]
        want = await sys.forward(
            fresh,
            p + q + r,
            positions=positions,
            outputs=[-3 + len(positions) + i for i in range(3)],
            returns=Logits(),
        )
        return got, want, freed, (await sys.kv.stat(f)).hidden

    got, want, freed, hidden = one(Kernel(tiny_loaded, num_pages=64, page_size=PS), program)
    close(got, want)
    assert freed == len(prompt(9, 10)) // PS and hidden == 0  # 24 tokens -> 14: 6 pages -> 4


def test_edited_files_neither_publish_nor_take_pages_of_another_prefix(tiny_loaded) -> None:  # noqa: ANN001
    """A second process prefilling the spliced file's tokens at its positions computes them
    itself past the splice: the spliced pages hold keys computed after another prefix."""
    p, a, b = prompt(12, 8), prompt(13, 8), prompt(14, 8)
    positions = [*range(16), *range(8, 16)]

    async def merge(sys: Syscalls) -> Any:
        base = await sys.kv.create()
        await sys.forward(base, p + b, returns=Logits())
        merged = await sys.kv.create("/home/local/merged")
        await sys.forward(merged, p + a + [1], returns=Logits())
        await sys.kv.truncate(merged, 16)
        await sys.kv.splice(merged, base, 8)  # b, computed after p only, lines up: by reference
        await sys.forward(merged, [5, 6, 7, 8, 9], positions=list(range(16, 21)), returns=Logits())
        return await sys.kv.explain(merged)

    async def plain(sys: Syscalls) -> Any:
        f = await sys.kv.create()
        out = await sys.forward(f, p + a + b + [5], positions=[*positions, 16], returns=Logits())
        return out, await sys.kv.explain(f)

    async def body(k: Kernel) -> tuple:
        report = await k.wait(k.spawn(merge))
        return report, await k.wait(k.spawn(plain))

    on = Kernel(tiny_loaded, num_pages=64, page_size=PS)
    report, (logits, second) = run(on, body)
    assert report.dirty_from == 16 and report.num_published_pages == 4
    assert report.reuses[-1].stop.kind == "edited"
    why = reason(report.reuses[-1].stop, PS, lambda ids: str(ids))  # what the prefix view says
    assert why.startswith("at token 24") and "spliced in or dropped" in why, why  # the lookup
    assert second.tokens_cached == 16  # p and a, published by `merged` before the splice
    off = Kernel(tiny_loaded, num_pages=64, page_size=PS, prefix_sharing=False)
    want, _ = one(off, plain)
    close(logits, want)


def test_bad_ranges_and_refused_files_are_typed_errors_and_change_nothing(
    tiny_loaded,  # noqa: ANN001
) -> None:
    async def program(sys: Syscalls) -> list[str]:
        f = await sys.kv.create()
        await sys.forward(f, prompt(15, 10), returns=Logits())
        errors = []
        for bad in ((-1, 3), (5, 2), (3, 11), (0, 2.0)):
            try:
                await sys.kv.drop(f, *bad)
            except InvalidArgument as e:
                errors.append(str(e))
            try:
                await sys.kv.splice(f, f, *bad)
            except InvalidArgument as e:
                errors.append(str(e))
        ro = await sys.kv.open((await sys.kv.stat(f)).path)
        for refused in (lambda: sys.kv.drop(ro, 0, 1), lambda: sys.kv.splice(ro, f)):
            try:
                await refused()
            except PermissionDenied as e:
                errors.append(f"ro: {e}")
        assert await sys.kv.read(f) == prompt(15, 10)
        return errors

    async def other(sys: Syscalls, path: str) -> str:
        f = await sys.kv.create()
        try:
            await sys.kv.splice(f, path)
        except PermissionDenied as e:
            return str(e)
        return "spliced another process's private file"

    errors = one(Kernel(tiny_loaded, num_pages=64, page_size=PS), program)
    assert len([e for e in errors if "outside" in e or "not a range" in e or "ints" in e]) == 8
    assert len([e for e in errors if e.startswith("ro: ")]) == 2
    kernel = Kernel(tiny_loaded, num_pages=64, page_size=PS)

    async def body(k: Kernel) -> str:
        async def sleeper(sys: Syscalls) -> None:
            await sys.sleep(5)

        holder = k.spawn(sleeper)
        path = f"/proc/{holder}/kv"
        k.kvfs.create(Caller(holder, "local"), path)
        message = await k.wait(k.spawn(other, path))
        k.kill(holder)
        return message

    assert "private to process" in run(kernel, body)


def test_a_file_with_a_grammar_refuses_splice_and_drop() -> None:
    demo = load_model(TINY_MODEL, dtype="float32", show_progress=False)  # it has a tokenizer

    async def program(sys: Syscalls) -> list[str]:
        f, g = await sys.kv.create(), await sys.kv.create()
        await sys.forward(f, sys.tokenize("The list"), returns=Logits())
        await sys.kv.constrain(g, Grammar.regex("[0-9]+"))
        errors = []
        for refused in (lambda: sys.kv.drop(g, 0, 0), lambda: sys.kv.splice(g, f)):
            try:
                await refused()
            except InvalidArgument as e:
                errors.append(str(e))
        assert await sys.kv.read(g) == []
        return errors

    errors = one(Kernel(demo, num_pages=64, page_size=PS), program)
    assert [e.split(":")[0] for e in errors] == ["drop", "splice"]
    assert all("grammar" in e for e in errors)
