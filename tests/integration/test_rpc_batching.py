"""Calls a remote LIP makes at once batch as they do in process, and the batch policy a client
reads and (as the engine's owner) sets: a real `symphony serve` process, real clients."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from engine_process import EngineProcess, engine_process

from engine.kernel import Kernel
from engine.scheduler import Eager
from engine.wire import connection
from engine.wire import events as ev
from engine.wire.errors import InvalidArgument, PermissionDenied
from engine.wire.records import Event, Identity, PolicyInfo, Sample
from workbench.client import Client

PROMPT = [5, 17, 42, 9, 100, 3, 77, 8, 61, 12]
FORKS, STEPS = 8, 6


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    args = ("--pages", "256", "--page-size", "4", "--dtype", "float32")
    with engine_process(tmp_path_factory.mktemp("rpc-batching"), *args) as e:
        yield e


async def gathered(sys: Any) -> list[list[int]]:
    """One prefill, FORKS forks, then STEPS decode steps of every fork gathered at once."""
    f = await sys.kv.create()
    first = await sys.forward(f, PROMPT, returns=Sample())
    forks = [await sys.kv.fork(f) for _ in range(FORKS)]
    last = [first] * FORKS
    out: list[list[int]] = [[] for _ in forks]
    for _ in range(STEPS):
        steps = [sys.forward(g, [t], returns=Sample()) for g, t in zip(forks, last, strict=True)]
        last = list(await asyncio.gather(*steps))
        for o, t in zip(out, last, strict=True):
            o.append(t)
    return out


def batch_sizes(events: list[Event], pid: int) -> list[int]:
    """How many of pid's calls each batch it was in held."""
    sizes = []
    for e in events:
        if e.kind == ev.BATCH:
            batch = ev.record_of(e)
            assert isinstance(batch, ev.BatchRan)
            sizes.append(sum(p == pid for p in batch.pids) and len(batch.calls))
    return sizes


def test_gathered_calls_over_rpc_batch_as_in_process(engine: EngineProcess, tiny_loaded) -> None:  # noqa: ANN001
    async def remote() -> tuple[list[list[int]], list[int]]:
        async with await Client.connect(engine.conn, user="alice") as client:
            lip = await client.attach("gathered")
            tokens = await gathered(lip)
            me, seen = await lip.whoami(), await lip.own_trace()  # the LIP sees itself
            await lip.exit()
            assert me == Identity(
                lip.pid, "gathered", "alice", "/home/alice", f"/proc/{lip.pid}", None, 0
            )
            assert [b.calls for b in seen.batches] == [1] + [FORKS] * STEPS
            assert seen.calls == 1 + FORKS * STEPS and len(seen.waits) == 1 + STEPS
            return tokens, batch_sizes(await client.trace(pid=lip.pid), lip.pid)

    async def here() -> tuple[list[list[int]], list[int]]:
        async with Kernel(tiny_loaded, num_pages=256, page_size=4) as kernel:
            pid = kernel.spawn(gathered)
            tokens = await kernel.wait(pid)
            return tokens, batch_sizes(kernel.trace.query(pid=pid), pid)

    tokens, sizes = asyncio.run(remote())
    tokens_here, sizes_here = asyncio.run(here())
    assert sizes_here == [1] + [FORKS] * STEPS  # in process: the prefill, then 8 per step
    assert sizes == sizes_here  # over RPC: the same batches
    assert tokens == tokens_here


def test_a_client_reads_the_batch_policy_and_only_the_owner_sets_it(
    engine: EngineProcess,
) -> None:
    async def body() -> None:
        async with await Client.connect(engine.conn, user="alice") as owner:
            assert await owner.policy() == PolicyInfo("adaptive", {"max_wait": 0.005})
            doc = await owner.call("user.add", {"user": "bob"})
            bob_info = dataclasses.replace(connection.read(engine.conn), **doc)
            async with await Client.connect(bob_info) as bob:
                assert (await bob.policy()).name == "adaptive"  # anyone may read it
                with pytest.raises(PermissionDenied, match="set_policy"):
                    await bob.set_policy("eager")
            with pytest.raises(InvalidArgument, match="no batch policy 'fifo'"):
                await owner.set_policy("fifo")
            with pytest.raises(InvalidArgument, match="no setting 'n'"):
                await owner.set_policy("wait-for-k", {"n": 3})
            with pytest.raises(InvalidArgument, match="k must be an int >= 0"):
                await owner.set_policy("wait-for-k", {"k": -1})
            assert (await owner.policy()).name == "adaptive"  # refused: nothing changed
            now = await owner.set_policy("wait-for-k", {"k": 4, "max_wait": 0.5})
            assert now == PolicyInfo("wait-for-k", {"k": 4, "max_wait": 0.5})
            lip = await owner.attach("under-wait-for-k")
            await gathered(lip)
            await lip.exit()
            batches = [ev.record_of(e) for e in await owner.trace(pid=lip.pid, kinds=[ev.BATCH])]
            assert {b.policy for b in batches} == {"wait-for-k"}  # type: ignore[union-attr]
            await owner.set_policy("adaptive")
            assert await owner.policy() == PolicyInfo("adaptive", {"max_wait": 0.005})

    asyncio.run(body())


TASKS = 6


async def independent(sys: Any) -> list[list[int]]:
    """One prefill, then TASKS tasks of their own (not gathered step by step): task i forks the
    prompt and decodes i + 2 tokens, each task awaiting only its own calls."""
    f = await sys.kv.create()
    first = await sys.forward(f, PROMPT, returns=Sample())

    async def task(i: int) -> list[int]:
        g = await sys.kv.fork(f)
        out = [first]
        for _ in range(i + 2):
            out.append(await sys.forward(g, [out[-1]], returns=Sample()))
        return out

    return list(await asyncio.gather(*(task(i) for i in range(TASKS))))


def test_independent_tasks_of_a_remote_lip_batch_as_in_process(
    engine: EngineProcess, tiny_loaded
) -> None:  # noqa: ANN001
    async def remote() -> tuple[list[list[int]], list[int]]:
        async with await Client.connect(engine.conn, user="alice") as client:
            before = await client.policy()
            await client.set_policy("eager")  # no wait: only how calls arrive decides
            try:
                lip = await client.attach("independent")
                tokens = await independent(lip)
                await lip.exit()
            finally:
                await client.set_policy(before.name, before.settings)
            return tokens, batch_sizes(await client.trace(pid=lip.pid), lip.pid)

    async def here() -> tuple[list[list[int]], list[int]]:
        async with Kernel(tiny_loaded, num_pages=256, page_size=4) as kernel:
            kernel.scheduler.policy = Eager()
            pid = kernel.spawn(independent)
            tokens = await kernel.wait(pid)
            return tokens, batch_sizes(kernel.trace.query(pid=pid), pid)

    tokens_here, sizes_here = asyncio.run(here())
    tokens, sizes = asyncio.run(remote())
    assert tokens == tokens_here
    assert sizes == sizes_here  # the same batches, step by step
