"""A forward waits in the queue between its submission and its batch: what happens meanwhile.

The file may be closed, the call cancelled, or the file changed by the calls before it; the
call then fails clearly or is withdrawn, and the file and the pool are as if it never was.
A policy that holds every call (`Hold`) keeps calls queued until the test lets them run.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch
from test_kernel import prompt, run

from engine.kernel import Kernel
from engine.scheduler import BatchPolicy, Eager, QueueView
from engine.syscalls import Syscalls
from engine.wire.errors import InvalidArgument
from engine.wire.records import LogProbs


class Hold(BatchPolicy):
    """Runs no forward: calls stay queued until another policy is installed."""

    name = "hold"

    def delay(self, view: QueueView) -> float:
        return 60.0


async def queued(sys: Syscalls, n: int) -> None:
    """Until this process has n calls in the queue."""
    while sum(c.process is sys.process for c in sys.kernel.scheduler.queue) < n:
        await asyncio.sleep(0)


def test_a_forward_queued_on_a_file_then_unlinked_and_closed_fails_and_leaks_nothing(
    tiny_loaded,  # noqa: ANN001
) -> None:
    async def lip(sys: Syscalls) -> list[Any]:
        f = await sys.kv.create()
        await sys.forward(f, prompt(1, 6), outputs=[])
        sys.kernel.set_policy(Hold())
        call = asyncio.ensure_future(sys.forward(f, [7]))
        await queued(sys, 1)
        await sys.kv.unlink(f.path)
        await sys.kv.close(f)  # the file is gone now
        sys.kernel.set_policy(Eager())
        results = await asyncio.gather(call, return_exceptions=True)
        return [*results, sys.kernel.pool.num_free]

    kernel = Kernel(tiny_loaded, num_pages=16, page_size=4)
    error, free = run(kernel, lambda k: k.wait(k.spawn(lip)))
    assert isinstance(error, InvalidArgument) and "closed" in str(error), error
    assert free == kernel.pool.num_pages  # the emptied file took no page


def test_a_cancelled_forward_that_has_not_started_is_withdrawn(tiny_loaded) -> None:  # noqa: ANN001
    head = prompt(2, 6)

    async def lip(sys: Syscalls) -> tuple[list[int], list[int]]:
        f = await sys.kv.create()
        await sys.forward(f, head, outputs=[])
        sys.kernel.set_policy(Hold())
        call = asyncio.ensure_future(sys.forward(f, [7, 8]))
        await queued(sys, 1)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        sys.kernel.set_policy(Eager())
        await sys.forward(f, [9], outputs=[])
        seq = sys.kernel.kvfs.sequence(f)
        return seq.tokens, seq.positions

    tokens, positions = run(Kernel(tiny_loaded, page_size=4), lambda k: k.wait(k.spawn(lip)))
    assert tokens == [*head, 9]
    assert positions == list(range(len(head) + 1))


def test_a_mask_is_checked_against_the_file_as_it_will_be_when_the_call_runs(
    tiny_loaded,  # noqa: ANN001
) -> None:
    """A call queued behind another on the same file sees the file with that call's tokens: its
    mask must cover them (the length the file has at submission is refused)."""
    head, a, b = prompt(3, 6), 17, 42
    n = len(head)
    blind = torch.ones(1, n + 2, dtype=torch.bool)
    blind[0, 0] = False  # b does not see the first token

    async def behind(sys: Syscalls) -> tuple[list[float], str]:
        f = await sys.kv.create()
        await sys.forward(f, head, outputs=[])
        sys.kernel.set_policy(Hold())
        first = asyncio.ensure_future(sys.forward(f, [a], outputs=[]))
        await queued(sys, 1)
        stale = asyncio.ensure_future(sys.forward(f, [b], mask=torch.ones(1, n + 1).bool()))
        await asyncio.sleep(0)  # its first step: refused at once, never queued
        assert stale.done() and isinstance(stale.exception(), InvalidArgument)
        second = asyncio.ensure_future(sys.forward(f, [b], mask=blind, returns=LogProbs([[b]])))
        await queued(sys, 2)
        sys.kernel.set_policy(Eager())
        _, last = await asyncio.gather(first, second)
        return last, str(stale.exception())

    async def in_turn(sys: Syscalls) -> list[float]:
        f = await sys.kv.create()
        await sys.forward(f, [*head, a], outputs=[])
        return await sys.forward(f, [b], mask=blind, returns=LogProbs([[b]]))

    async def body(k: Kernel) -> tuple[list[float], tuple[list[float], str]]:
        return await k.wait(k.spawn(in_turn)), await k.wait(k.spawn(behind))

    alone, (last, stale) = run(Kernel(tiny_loaded, page_size=4), body)
    assert f"({1}, {n + 2})" in stale  # names the shape the call needs when it runs
    assert last == pytest.approx(alone, abs=1e-4)


def test_a_mask_made_for_a_file_that_changed_before_the_call_ran_fails_clearly(
    tiny_loaded,  # noqa: ANN001
) -> None:
    """Truncated while the call was queued: the mask no longer fits; the call fails, naming it,
    and the file keeps what it had."""
    head = prompt(4, 6)
    n = len(head)

    async def lip(sys: Syscalls) -> tuple[list[Any], list[int]]:
        f = await sys.kv.create()
        await sys.forward(f, head, outputs=[])
        sys.kernel.set_policy(Hold())
        call = asyncio.ensure_future(sys.forward(f, [5], mask=torch.ones(1, n + 1).bool()))
        await queued(sys, 1)
        await sys.kv.truncate(f, n - 2)
        sys.kernel.set_policy(Eager())
        results = await asyncio.gather(call, return_exceptions=True)
        return results, sys.kernel.kvfs.sequence(f).tokens

    (error,), tokens = run(Kernel(tiny_loaded, page_size=4), lambda k: k.wait(k.spawn(lip)))
    assert isinstance(error, InvalidArgument) and "mask" in str(error), error
    assert f"{n - 2} tokens" in str(error)
    assert tokens == head[: n - 2]


def test_calls_queued_on_one_file_count_until_they_run_or_are_withdrawn(
    tiny_loaded,  # noqa: ANN001
) -> None:
    """A new call on a file runs after the calls queued on it: it starts where they end. The
    scheduler counts them per file (Scheduler.queued_tokens), a withdrawn one no more."""

    async def lip(sys: Syscalls) -> tuple[list[int], list[int], list[int]]:
        f = await sys.kv.create()
        seq = sys.kernel.kvfs.sequence(f)
        queued_tokens = sys.kernel.scheduler.queued_tokens
        sys.kernel.set_policy(Hold())
        calls = [asyncio.ensure_future(sys.forward(f, prompt(i, 3), outputs=[])) for i in range(3)]
        await queued(sys, 3)
        counts = [queued_tokens(seq)]
        calls[1].cancel()  # withdrawn: its tokens never reach the file
        await asyncio.gather(calls[1], return_exceptions=True)
        counts.append(queued_tokens(seq))
        sys.kernel.set_policy(Eager())
        await asyncio.gather(calls[0], calls[2])
        counts.append(queued_tokens(seq))
        await sys.forward(f, [9], outputs=[])
        return counts, seq.tokens, seq.positions

    counts, tokens, positions = run(
        Kernel(tiny_loaded, page_size=4), lambda k: k.wait(k.spawn(lip))
    )
    assert counts == [9, 6, 0]
    assert tokens == [*prompt(0, 3), *prompt(2, 3), 9]
    assert positions == list(range(7))
