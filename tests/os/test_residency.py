"""A file swapped out with its process (suspended under KV pressure) and outliving it.

keeper puts a 9-token file (3 pages of 4) in /proc and links it into /home; holder, of higher
priority, needs 2 of the 4 pages: keeper is suspended, its file swapped out to host memory.
Then keeper is killed. Its /home file is whole again as soon as it fits in the pool: it forks
and computes as if it had never left, and every count of swapped pages agrees meanwhile.
"""

from __future__ import annotations

import asyncio

import pytest
from test_kernel import prompt, run

from engine.kernel import Kernel
from engine.kvfs import Caller
from engine.process import State
from engine.syscalls import Syscalls
from engine.wire import events as ev
from engine.wire.errors import OutOfPages, ProcessFailed
from engine.wire.records import LogProbs

HEAD = prompt(1, 9)
KEPT = "/home/local/keep"
LOCAL = Caller(None, "local")


async def keeper(sys: Syscalls) -> None:
    f = await sys.kv.create()
    await sys.forward(f, HEAD, outputs=[])
    await sys.kv.link(f, KEPT)
    await sys.receive()  # until killed


async def holder(sys: Syscalls) -> None:
    f = await sys.kv.create()
    await sys.forward(f, prompt(2, 5), outputs=[])  # 2 pages
    await sys.receive()  # holds them until told


async def use_kept(sys: Syscalls) -> list[float]:
    g = await sys.kv.fork(KEPT)
    return await sys.forward(g, [5], returns=LogProbs([[5]]))


async def from_scratch(sys: Syscalls) -> list[float]:
    f = await sys.kv.create()
    return await sys.forward(f, [*HEAD, 5], returns=LogProbs([[5]]))


def swapped_counts(k: Kernel) -> tuple[int, int]:
    """The swapped pages the engine reports (memory manager) and the page map's count, once
    checked against the files' own (KVFS.check)."""
    k.kvfs.check()
    return k.memory.num_swapped_pages(), k.kvfs.pages(LOCAL).swapped_total


async def suspend_keeper(k: Kernel) -> tuple[int, int]:
    keep = k.spawn(keeper)
    while KEPT not in dict(k.kvfs.files()):
        await asyncio.sleep(0)
    hold = k.spawn(holder, priority=1)
    while not k.trace.query(pid=hold, kinds=[ev.CALL_FINISHED]):
        await asyncio.sleep(0)
    assert k.procs[keep].state is State.SUSPENDED
    assert swapped_counts(k) == (3, 3)
    return keep, hold


async def kill(k: Kernel, pid: int) -> None:
    k.kill(pid)
    with pytest.raises(ProcessFailed, match="killed"):
        await k.wait(pid)


def test_a_home_file_of_a_process_killed_while_suspended_comes_back_when_it_exits(
    tiny_loaded,  # noqa: ANN001
) -> None:
    async def body(k: Kernel) -> tuple[list[float], list[float]]:
        alone = await k.wait(k.spawn(from_scratch))
        keep, hold = await suspend_keeper(k)
        k.procs[hold].inbox.put_nowait(None)
        await k.wait(hold)  # the pool is free but for the swapped file: it fits again
        await kill(k, keep)
        assert swapped_counts(k) == (0, 0)
        assert None not in k.kvfs.stat(LOCAL, KEPT).page_table
        kept = await k.wait(k.spawn(use_kept))
        # the kept file's 3 pages belong to no process: nothing can be suspended to free them
        with pytest.raises(ProcessFailed) as failed:
            await k.wait(k.spawn(from_scratch))
        assert isinstance(failed.value.__cause__, OutOfPages)
        assert "4 of the pool's 4 pages are held (1 by process" in str(failed.value)
        return kept, alone

    kept, alone = run(Kernel(tiny_loaded, num_pages=4, page_size=4), body)
    assert kept == pytest.approx(alone, abs=1e-4)


def test_a_home_file_that_does_not_fit_when_its_process_exits_comes_back_when_used(
    tiny_loaded,  # noqa: ANN001
) -> None:
    async def body(k: Kernel) -> tuple[list[float], list[float]]:
        alone = await k.wait(k.spawn(from_scratch))
        keep, hold = await suspend_keeper(k)
        await kill(k, keep)  # holder still holds 2 of the 4 pages: the file's 3 do not fit
        assert swapped_counts(k) == (3, 3)
        with pytest.raises(ProcessFailed) as failed:
            await k.wait(k.spawn(use_kept))
        assert isinstance(failed.value.__cause__, OutOfPages)
        assert KEPT in str(failed.value) and "swapped out" in str(failed.value)
        assert swapped_counts(k) == (3, 3)  # nothing changed
        k.procs[hold].inbox.put_nowait(None)
        await k.wait(hold)
        kept = await k.wait(k.spawn(use_kept))
        assert swapped_counts(k) == (0, 0)
        return kept, alone

    kept, alone = run(Kernel(tiny_loaded, num_pages=4, page_size=4), body)
    assert kept == pytest.approx(alone, abs=1e-4)
