"""Automatic prefix sharing in the kernel: forwards take full pages other files computed for the
same prefix, the results equal computing them, and every miss is explained."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.kernel import Kernel
from engine.prefix_cache import REUSES_KEPT
from engine.syscalls import Syscalls
from engine.wire import events as ev
from engine.wire.records import Logits, PrefixReport, Sample

PS = 4  # page size of every kernel here


def run(kernel: Kernel, body: Callable[[Kernel], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with kernel:
            return await body(kernel)

    result = asyncio.run(main())
    kernel.pool.check()
    return result


def prompt(seed: int, n: int) -> list[int]:
    return torch.randint(0, 250, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


async def prefill(
    sys: Syscalls,
    tokens: list[int],
    path: str | None = None,
    keep: bool = False,
    positions: list[int] | None = None,
) -> tuple[list[float], PrefixReport]:
    """Forward tokens into a new file; the last token's logits and the file's report."""
    f = await sys.kv.create(path)
    logits = await sys.forward(f, tokens, positions=positions, returns=Logits())
    report = await sys.kv.explain(f)
    if keep and path is None:
        await sys.kv.link(f, f"/home/{sys.process.owner}/kept{sys.process.pid}")
    return logits, report


def spawn_wait(k: Kernel, main: Any, *args: Any, owner: str = "local") -> Any:
    return k.wait(k.spawn(main, *args, owner=owner))


def test_a_second_process_takes_the_first_ones_pages_and_gets_the_same_logits(
    tiny_loaded,  # noqa: ANN001
) -> None:
    tokens = prompt(1, 41)  # 10 full pages and one token: the last token is always computed

    async def body(k: Kernel) -> tuple[Any, Any, list[int], list[int]]:
        first = await spawn_wait(k, prefill, tokens, "/home/local/first")
        second = await spawn_wait(k, prefill, tokens, "/home/local/second")
        a = k.kvfs.stat(_root(), "/home/local/first").page_table
        st = k.kvfs.stat(_root(), "/home/local/second")
        assert st.cached_from == {"/home/local/first": 10}  # the fork graph's dotted line
        return first, second, list(a), list(st.page_table)

    kernel = Kernel(tiny_loaded, num_pages=64, page_size=PS)
    (logits_a, report_a), (logits_b, report_b), pages_a, pages_b = run(kernel, body)
    torch.testing.assert_close(torch.tensor(logits_b), torch.tensor(logits_a), atol=1e-5, rtol=0)
    assert report_a.tokens_cached == 0 and report_a.reuses[-1].stop.kind == "new"
    assert report_b.tokens_cached == 40
    (reuse,) = report_b.reuses
    assert reuse.pages == pages_a[:10] and pages_b[:10] == pages_a[:10]
    assert pages_b[10] != pages_a[10]  # the partly filled page is the second file's own
    assert set(reuse.sources) == {"/home/local/first"}
    assert reuse.stop.kind == "floor" and reuse.stop.at == 40  # one token short of a page
    hits = kernel.trace.query(kinds=[ev.PREFIX])
    assert [e.data["tokens"] for e in hits] == [0, 40]
    per_process = [(p.tokens_in, p.tokens_cached) for p in kernel.ps()]
    assert per_process == [(41, 0), (1, 40)]  # each process's hit rate: cached / (in + cached)


def test_processes_sending_one_prompt_at_once_compute_it_once(tiny_loaded) -> None:  # noqa: ANN001
    tokens = prompt(11, 33)  # 8 full pages and one token

    async def body(k: Kernel) -> list[Any]:
        pids = [k.spawn(prefill, tokens, None, True) for _ in range(4)]
        return [await k.wait(p) for p in pids]

    kernel = Kernel(tiny_loaded, num_pages=64, page_size=PS)
    results = run(kernel, body)
    cached = sorted(report.tokens_cached for _, report in results)
    assert cached == [0, 32, 32, 32]  # the three later ones waited one forward, then took them
    for logits, _ in results[1:]:
        torch.testing.assert_close(
            torch.tensor(logits), torch.tensor(results[0][0]), atol=1e-5, rtol=0
        )
    computed = sum(e.data["tokens"] for e in kernel.trace.query(kinds=[ev.BATCH]))
    assert computed == 33 + 3 * 1


def test_results_equal_without_sharing_and_the_pages_are_fewer(tiny_loaded) -> None:  # noqa: ANN001
    system = prompt(7, 24)

    async def body(k: Kernel) -> list[Any]:
        async def chat(sys: Syscalls, tail: list[int]) -> list[float]:
            f = await sys.kv.create()
            await sys.forward(f, system + tail[:3], returns=Logits())
            out = await sys.forward(f, tail[3:], outputs=[0, len(tail) - 4], returns=Logits())
            await sys.kv.link(f, f"/home/local/chat{sys.process.pid}")
            return out

        return [await spawn_wait(k, chat, prompt(100 + i, 9)) for i in range(4)]

    on = Kernel(tiny_loaded, num_pages=64, page_size=PS)
    off = Kernel(tiny_loaded, num_pages=64, page_size=PS, prefix_sharing=False)
    with_sharing, without = run(on, body), run(off, body)
    for a, b in zip(with_sharing, without, strict=True):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-5, rtol=0)
    held_on = on.pool.num_pages - on.pool.num_free
    held_off = off.pool.num_pages - off.pool.num_free
    assert held_off - held_on == 3 * (24 // PS)  # three files took the system prompt's pages
    assert off.pool.index is None and on.pool.index is not None


def test_a_users_private_pages_are_never_reused_for_another_user_but_shared_ones_are(
    tiny_loaded,  # noqa: ANN001
) -> None:
    private, public = prompt(2, 17), prompt(3, 17)

    async def body(k: Kernel) -> list[PrefixReport]:
        await spawn_wait(k, prefill, private, "/home/alice/mine", owner="alice")
        await spawn_wait(k, prefill, public, "/shared/system", owner="alice")
        _, bob_private = await spawn_wait(k, prefill, private, None, owner="bob")
        _, bob_public = await spawn_wait(k, prefill, public, None, owner="bob")
        _, alice_again = await spawn_wait(k, prefill, private, None, owner="alice")
        return [bob_private, bob_public, alice_again]

    bob_private, bob_public, alice_again = run(
        Kernel(tiny_loaded, num_pages=64, page_size=PS), body
    )
    assert bob_private.tokens_cached == 0
    stop = bob_private.reuses[-1].stop
    assert stop.kind == "other_user" and stop.owner == "alice" and stop.at == 0
    assert bob_public.tokens_cached == 16
    assert bob_public.reuses[-1].sources == ["/shared/system"] * 4
    assert alice_again.tokens_cached == 16


def test_each_miss_is_explained(tiny_loaded) -> None:  # noqa: ANN001
    base = prompt(4, 13)
    differ = [*base[:6], (base[6] + 1) % 250, *base[7:]]

    async def body(k: Kernel) -> dict[str, Any]:
        await spawn_wait(k, prefill, base, "/home/local/base")
        out = {}
        _, out["differ"] = await spawn_wait(k, prefill, differ)
        _, out["floor"] = await spawn_wait(k, prefill, base[:11])  # 2 pages, then 3 tokens
        shifted = list(range(100, 113))
        _, out["positions"] = await spawn_wait(k, prefill, base, None, False, shifted)

        async def hidden(sys: Syscalls) -> PrefixReport:
            f = await sys.kv.create()
            await sys.forward(f, base[:4])
            await sys.kv.hide(f, [1])
            await sys.forward(f, base[4:])
            return await sys.kv.explain(f)

        async def off(sys: Syscalls) -> PrefixReport:
            f = await sys.kv.create()
            await sys.kv.share(f, False)
            await sys.forward(f, base)
            return await sys.kv.explain(f)

        out["hidden"] = await spawn_wait(k, hidden)
        out["off"] = await spawn_wait(k, off)
        return out

    reports = run(Kernel(tiny_loaded, num_pages=64, page_size=PS), body)
    d = reports["differ"].reuses[-1]
    assert (d.tokens, d.stop.kind, d.stop.at) == (4, "differ", 6)
    assert (d.stop.ours, d.stop.theirs) == (differ[6], base[6])
    f = reports["floor"].reuses[-1]
    assert (f.tokens, f.stop.kind, f.stop.at) == (8, "floor", 8)
    p = reports["positions"].reuses[-1]
    assert (p.tokens, p.stop.kind, p.stop.at) == (0, "positions", 0)
    h = reports["hidden"].reuses[-1]
    assert (h.tokens, h.stop.kind) == (0, "hidden")
    assert reports["hidden"].dirty_from == 4
    o = reports["off"]
    assert not o.on and o.reuses[-1].stop.kind == "off" and o.num_published_pages == 0


def test_pages_of_files_that_are_gone_stay_cached_until_the_pool_needs_them(
    tiny_loaded,  # noqa: ANN001
) -> None:
    tokens = prompt(5, 17)  # 4 full pages

    async def body(k: Kernel) -> tuple[int, PrefixReport, PrefixReport]:
        await spawn_wait(k, prefill, tokens)  # its /proc file goes when it exits
        cached = k.pool.num_cached
        _, hit = await spawn_wait(k, prefill, tokens)  # takes them back from the cache
        await spawn_wait(k, prefill, prompt(6, 4 * k.pool.num_pages - 1))  # needs every page
        _, miss = await spawn_wait(k, prefill, tokens)
        return cached, hit, miss

    kernel = Kernel(tiny_loaded, num_pages=12, page_size=PS)
    cached, hit, miss = run(kernel, body)
    assert cached == 4
    assert hit.tokens_cached == 16
    stop = miss.reuses[-1].stop
    assert miss.tokens_cached == 0 and stop.kind == "evicted" and stop.when is not None


def test_writing_after_a_truncate_never_changes_a_page_others_may_take(tiny_loaded) -> None:  # noqa: ANN001
    tokens = prompt(8, 13)

    async def body(k: Kernel) -> tuple[list[float], list[float], PrefixReport]:
        async def rewrite(sys: Syscalls) -> None:
            f = await sys.kv.create("/home/local/a")
            await sys.forward(f, tokens)  # pages 0-2 published
            await sys.kv.truncate(f, 6)  # into page 1
            await sys.forward(f, prompt(9, 7))  # writes page 1 again: a copy, not in place

        await spawn_wait(k, rewrite)
        shared, report = await spawn_wait(k, prefill, tokens)
        return shared, report

    on = Kernel(tiny_loaded, num_pages=64, page_size=PS)
    shared, report = run(on, body)
    fresh, _ = run(
        Kernel(tiny_loaded, num_pages=64, page_size=PS, prefix_sharing=False),
        lambda k: spawn_wait(k, prefill, tokens),
    )
    assert report.tokens_cached == 12
    torch.testing.assert_close(torch.tensor(shared), torch.tensor(fresh), atol=1e-5, rtol=0)


segments = st.lists(st.integers(0, 3), min_size=1, max_size=4)  # prompts from 4 pieces


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(segments, min_size=2, max_size=5), st.integers(12, 40))
def test_property_sharing_changes_no_logits_and_keeps_the_invariant(
    tiny_loaded,  # noqa: ANN001
    plan: list[list[int]],
    num_pages: int,
) -> None:
    """Processes with prompts made of common pieces (of lengths that cross page boundaries),
    each continued by a second forward: every logit equals the unshared run's, the pool's
    invariant holds after every forward, and eviction never takes a referenced page (the pool
    checks that a page it hands out is free or cached)."""
    pieces = [prompt(20 + i, 3 + 2 * i) for i in range(4)]

    async def body(k: Kernel) -> list[list[float]]:
        async def lip(sys: Syscalls, parts: list[int]) -> list[float]:
            f = await sys.kv.create()
            tokens = [t for i in parts for t in pieces[i]]
            a = await sys.forward(f, tokens, returns=Logits())
            k.pool.check()
            b = await sys.forward(f, pieces[parts[0]][:2], returns=Logits())
            k.pool.check()
            return [*a, *b]

        pids = [k.spawn(lip, parts) for parts in plan]
        return [await k.wait(p) for p in pids]

    on = run(Kernel(tiny_loaded, num_pages=num_pages, page_size=PS), body)
    off = run(Kernel(tiny_loaded, num_pages=num_pages, page_size=PS, prefix_sharing=False), body)
    torch.testing.assert_close(torch.tensor(on), torch.tensor(off), atol=1e-4, rtol=0)


def _root() -> Any:
    from engine.kvfs import Caller

    return Caller(None, "local")


def test_the_times_a_user_sees_are_on_the_engines_one_clock(tiny_loaded) -> None:  # noqa: ANN001
    """A file's times, a process's start, a lookup's time and the trace's events: all seconds
    since the engine started."""

    async def body(k: Kernel) -> tuple[Any, Any, float]:
        pid = k.spawn(prefill, prompt(12, 9), "/home/local/clock")
        _, report = await k.wait(pid)
        return k.processes.procs[pid], report, k.trace.now()

    kernel = Kernel(tiny_loaded, num_pages=16, page_size=PS)
    process, report, end = run(kernel, body)
    stat = kernel.kvfs.stat(_root(), "/home/local/clock")
    events = kernel.trace.query(pid=process.pid)
    assert 0 <= process.started <= stat.created <= report.reuses[-1].time <= end <= stat.last_use
    assert events[0].t <= stat.created <= events[-1].t


def test_decode_steps_leave_a_files_lookups_alone(tiny_loaded) -> None:  # noqa: ANN001
    """A one-token forward cannot take a page: it is not looked up, so a file's report keeps
    its prompt's lookup however long it decodes."""
    tokens = prompt(13, 17)

    async def body(k: Kernel) -> PrefixReport:
        await spawn_wait(k, prefill, tokens, "/home/local/first")

        async def decode(sys: Syscalls) -> PrefixReport:
            f = await sys.kv.create()
            t = await sys.forward(f, tokens, returns=Sample())
            for _ in range(REUSES_KEPT + 6):
                t = await sys.forward(f, [t], returns=Sample())
            return await sys.kv.explain(f)

        return await spawn_wait(k, decode)

    report = run(Kernel(tiny_loaded, num_pages=64, page_size=PS), body)
    (reuse,) = report.reuses
    assert reuse.tokens == 16 and report.tokens_cached == 16


senders = st.tuples(st.sampled_from(["alice", "bob"]), st.booleans(), segments)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(senders, min_size=2, max_size=6))
@example([("alice", False, [1, 2]), ("bob", False, [1, 2]), ("bob", True, [1, 3])])
@example([("bob", False, [1]), ("bob", True, [1]), ("alice", False, [1])])  # private, then /shared
def test_property_a_forward_takes_exactly_the_pages_its_user_may_see(
    tiny_loaded,  # noqa: ANN001
    plan: list[tuple[str, bool, list[int]]],
) -> None:
    """Processes of two users, one after another, each prefill a prompt made of common pieces,
    into a private file or a file in /shared. Each takes from the cache exactly the longest run
    of full pages that an earlier prompt it may see (its user's own, or any in /shared) begins
    with, short of the last token (whose logits are asked for): never another user's private
    pages, and nothing less than it may."""
    pieces = [prompt(40 + i, 3 + 2 * i) for i in range(4)]
    prompts = [[t for i in parts for t in pieces[i]] for _, _, parts in plan]

    async def body(k: Kernel) -> list[int]:
        got = []
        for i, (owner, shared, _) in enumerate(plan):
            path = f"/shared/s{i}" if shared else None
            _, report = await spawn_wait(k, prefill, prompts[i], path, owner=owner)
            got.append(report.tokens_cached)
        return got

    got = run(Kernel(tiny_loaded, num_pages=256, page_size=PS), body)

    def common(a: list[int], b: list[int]) -> int:
        return next(
            (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
        )

    for i, (owner, _, _) in enumerate(plan):
        seen = [p for j, p in enumerate(prompts[:i]) if plan[j][0] == owner or plan[j][1]]
        best = max((common(prompts[i], p) for p in seen), default=0)
        assert got[i] == min(best // PS, (len(prompts[i]) - 1) // PS) * PS, (i, plan)
