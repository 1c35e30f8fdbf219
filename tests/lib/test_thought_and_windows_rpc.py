"""Splicing, dropping and the programs built on them over RPC and in an engine-side worker: a
real `symphony serve` process; the results must equal those of the in-process kernel (the
engine serves the checkpoint `tiny_loaded` is, tests/checkpoints.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from engine_process import EngineProcess, engine_process
from test_library import PROMPT, run

from engine.wire.errors import InvalidArgument
from engine.wire.records import SamplingParams, Spliced
from workbench.client import Client
from workbench.lib import attention_sink, graph_of_thought, skeleton_of_thought, tree_of_thought


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    args = ("--pages", "256", "--page-size", "4", "--dtype", "float32")
    with engine_process(tmp_path_factory.mktemp("thought-rpc"), *args) as e:
        yield e


def length(text: str) -> float:
    return float(len(text))


async def programs(sys: Any) -> list[Any]:
    f = await sys.kv.create()
    sink = await attention_sink(sys, f, PROMPT, 40, 4, 16)
    hot = SamplingParams(temperature=1.0)
    graph = await graph_of_thought(sys, PROMPT, 3, 5, [7, 8], 4, hot, seed=3)
    tree = await tree_of_thought(sys, PROMPT, length, 2, 2, 1, 3, stop=())
    skeleton = await skeleton_of_thought(sys, PROMPT, ["alpha", "beta"], point_tokens=4)
    return [
        sink.tokens,
        sink.num_pages,
        [b.tokens for b in graph.branches],
        graph.merged.tokens,
        [tuple(s) for s in graph.spliced],
        [t.tokens for t in tree],
        skeleton.expansions,
    ]


async def in_worker(sys: Any, prompt: list[int]) -> list[Any]:
    """The library inside an engine-side worker (shipped as source: imports inside)."""
    from engine.wire.records import SamplingParams
    from workbench.lib import attention_sink, graph_of_thought

    f = await sys.kv.create()
    sink = await attention_sink(sys, f, prompt, 40, 4, 16)
    hot = SamplingParams(temperature=1.0)
    graph = await graph_of_thought(sys, prompt, 3, 5, [7, 8], 4, hot, seed=3)
    return [sink.tokens, sink.num_pages, graph.merged.tokens]


def test_the_programs_give_the_same_results_over_rpc_and_in_a_worker(
    engine: EngineProcess,
    tiny_loaded,  # noqa: ANN001
) -> None:
    async def remote() -> tuple:
        client = await Client.connect(engine.conn, user="alice")
        async with client, await client.attach("thought") as lip:
            here = await programs(lip)
            worker = await lip.wait(await lip.spawn(in_worker, PROMPT))
            return here, worker

    rpc, worker = asyncio.run(remote())
    local, _ = run(tiny_loaded, programs)
    assert rpc == local
    assert [list(x) for x in worker] == [local[0], local[1], local[3]]
    assert set(local[1]) == {(4 + 16 + 4) // 4}  # the sink's pages stay flat


def test_splice_and_drop_over_rpc_share_pages_and_refuse_bad_ranges(engine: EngineProcess) -> None:
    async def remote() -> tuple:
        client = await Client.connect(engine.conn, user="alice")
        async with client, await client.attach("splice") as lip:
            f = await lip.kv.create()
            await lip.forward(f, PROMPT, outputs=[])
            g = await lip.kv.create()
            done = await lip.kv.splice(g, f, 0, 8)
            by_path = await lip.kv.splice(g, (await lip.kv.stat(f)).path, 8)
            await lip.kv.drop(g, 4, 8)
            try:
                await lip.kv.drop(g, 3, 99)
            except InvalidArgument as e:
                error = str(e)
            return done, by_path, await lip.kv.stat(f), await lip.kv.stat(g), error

    done, by_path, sf, sg, error = asyncio.run(remote())
    assert isinstance(done, Spliced) and done == (8, 2, 0) and by_path == (4, 1, 0)
    assert sg.tokens == 8 and sg.page_table == (sf.page_table[0], sf.page_table[2])
    assert "outside 0..8" in error
