"""A LIP sees itself: who it is (`whoami`) and its own trace (`own_trace`), in process."""

from __future__ import annotations

import asyncio

import pytest
from test_library import PROMPT, run

from engine.syscalls import Syscalls
from engine.wire.errors import InvalidArgument
from engine.wire.records import Identity, OwnTrace, Sample


async def seen(sys: Syscalls) -> tuple[Identity, OwnTrace, OwnTrace, OwnTrace]:
    """Three forks decoded together, a sleep, then what the process sees of itself."""
    f = await sys.kv.create()
    t = await sys.forward(f, PROMPT, returns=Sample())
    forks = [await sys.kv.fork(f) for _ in range(3)]
    await asyncio.gather(*(sys.forward(g, [t], returns=Sample()) for g in forks))
    await sys.sleep(0.01)
    first = await sys.own_trace()
    await sys.forward(f, [t], returns=Sample())
    later = await sys.own_trace(after_seq=first.last_seq)
    return await sys.whoami(), first, later, await sys.own_trace()


def test_a_process_sees_who_it_is_and_its_batches_and_waits(tiny_loaded) -> None:  # noqa: ANN001
    (me, first, later, whole), kernel = run(tiny_loaded, seen)
    p = kernel.procs[me.pid]
    assert me == Identity(p.pid, "seen", "local", "/home/local", f"/proc/{p.pid}", None, 0)
    assert [(b.calls, b.size) for b in first.batches] == [(1, 1), (3, 3)]  # the forks together
    assert first.calls == 4 and first.pid == me.pid
    states = [w.state for w in first.waits]
    assert states == ["waiting"] * 3  # the prefill, the gathered forwards, the sleep
    assert all(w.end is not None and w.end >= w.start for w in first.waits)
    assert [(b.calls, b.size) for b in later.batches] == [(1, 1)]  # only what came after
    assert later.calls == 1 and whole.calls == 5 and len(whole.batches) == 3


def test_own_trace_refuses_a_bad_sequence_number(tiny_loaded) -> None:  # noqa: ANN001
    async def program(sys: Syscalls) -> None:
        with pytest.raises(InvalidArgument, match="after_seq"):
            await sys.own_trace(after_seq="x")  # type: ignore[arg-type]

    run(tiny_loaded, program)
