"""A soak of the shared engine, bounded in time: one client sends long prompts back to back while
sixteen others decode, a server run and a tool fail on purpose, and careless calls come in
between. Every well-behaved client finishes with the output it gets alone, no session is dropped,
and no page leaks. A real `symphony serve` process; real clients over ZeroMQ.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import torch
from engine_process import EngineProcess, engine_process, greedy

from engine.wire.errors import EngineError, InvalidArgument, ProcessFailed, ToolFailed
from workbench.client import Client

DECODERS, STEPS = 16, 40
LONG, LONG_PROMPTS = 500, 24  # tokens per long prompt (the model's context is 512), how many


def prompt(seed: int, n: int) -> list[int]:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    tmp = tmp_path_factory.mktemp("soak")
    args = ("--num-pages", "1024", "--page-size", "4", "--dtype", "float32")
    with engine_process(tmp, *args) as e:
        yield e


def broken_tool(x: int) -> int:
    raise RuntimeError(f"broken on purpose ({x})")


def test_long_prompts_failures_and_bad_calls_beside_sixteen_decoders(engine: EngineProcess) -> None:
    async def decoder(i: int) -> list[int]:
        async with await Client.connect(engine.conn, user=f"user{i % 4}", name=f"dec{i}") as c:
            lip = await c.attach(f"decode-{i}")
            out = await greedy(lip, prompt(i, 8 + i), STEPS)
            await lip.exit()
            return out

    async def alone() -> list[list[int]]:
        return [await decoder(i) for i in range(DECODERS)]

    async def long_prompts(client: Client) -> int:
        async with await client.attach("long") as lip:
            for j in range(LONG_PROMPTS):
                f = await lip.kv.create()
                await lip.forward(f, prompt(1000 + j, LONG))
                await lip.kv.close(f)
                await lip.kv.unlink(f.path)
        return LONG_PROMPTS

    async def careless(client: Client) -> int:
        refused = 0
        async with await client.attach("careless") as lip:
            f = await lip.kv.create()
            bad_calls = [
                lambda: lip.forward(f, [10**9]),  # past the vocabulary
                lambda: lip.forward(f, [1], positions=[2**62]),  # past the context
                lambda: lip.kv.load("../x"),  # a host path
                lambda: lip.forward(f, []),
            ]
            for _ in range(10):
                for call in bad_calls:
                    with pytest.raises(EngineError):
                        await call()
                    refused += 1
                await asyncio.sleep(0.05)
        return refused

    async def failures(client: Client) -> None:
        with pytest.raises(ProcessFailed, match="raised ValueError: on purpose"):
            await client.run("raise ValueError('on purpose')", name="fails")
        await client.register_tool(broken_tool)
        async with await client.attach("tool-user") as lip:
            for x in range(3):
                with pytest.raises(ToolFailed, match="broken on purpose"):
                    await lip.tool("broken_tool", x)
            with pytest.raises(InvalidArgument, match="no tool named"):
                await lip.tool("no_such_tool")

    async def body() -> None:
        solo = await alone()
        watcher = await Client.connect(engine.conn, user="watcher")
        before = (await watcher.stat_engine())["pages_used"]
        heavy = await Client.connect(engine.conn, user="heavy")
        others = await Client.connect(engine.conn, user="careless")
        together = asyncio.gather(
            long_prompts(heavy),
            careless(others),
            failures(others),
            *(decoder(i) for i in range(DECODERS)),
        )
        n_long, refused, _, *outs = await asyncio.wait_for(together, 100)
        assert outs == solo
        assert n_long == LONG_PROMPTS and refused == 40
        vanished = [p for p in await watcher.ps() if p.error == "client vanished"]
        assert not vanished, vanished
        for c in (heavy, others):
            await c.close()
        assert (await watcher.stat_engine())["pages_used"] == before
        await watcher.close()

    asyncio.run(body())


def test_the_soak_left_a_clean_engine(engine: EngineProcess) -> None:
    """What the engine printed: nothing a user did not ask for, and no traceback."""
    assert "Traceback" not in engine.log, engine.log[-3000:]
