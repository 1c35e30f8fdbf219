"""Constrained generation over RPC: a real `symphony serve` of the demo model `tiny`, a
client's LIP. The grammar goes over the wire once; the results equal the in-process kernel's,
and the grammar's errors arrive as their own types."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from engine_process import EngineProcess, engine_process
from test_constrained import DATE, SCHEMA, call_masks, check_call_masks
from test_library import run

from engine.loader import load_model
from engine.models import TINY_MODEL
from engine.wire.errors import GrammarError, TokenRefused
from engine.wire.records import Grammar, SamplingParams
from workbench.client import Client
from workbench.lib import choose, generate_json, generate_regex

HOT = SamplingParams(temperature=1.0)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    args = ("--model", "tiny", "--num-pages", "512", "--page-size", "4", "--dtype", "float32")
    with engine_process(tmp_path_factory.mktemp("constrained-rpc"), *args, arch=None) as e:
        yield e


async def programs(sys: Any) -> tuple:
    date = await generate_regex(sys, await sys.kv.create(), "The date is ", DATE, 24, HOT, 3)
    record = await generate_json(sys, await sys.kv.create(), "A record: ", SCHEMA, 160, HOT, 4)
    pick = await choose(sys, await sys.kv.create(), "Pick:", ["list", "tuple"], HOT, 5)
    errors = []
    f = await sys.kv.create()
    for grammar, tokens in ((Grammar.lark("start: missing"), []), (Grammar.regex("[0-9]+"), "x")):
        try:
            await sys.kv.constrain(f, grammar)
            await sys.forward(f, sys.tokenize(tokens), outputs=[])
        except (GrammarError, TokenRefused) as e:
            errors.append(type(e).__name__)
    return date, record, pick, errors


def test_constrained_generation_gives_the_same_results_over_rpc(engine: EngineProcess) -> None:
    async def remote() -> tuple:
        client = await Client.connect(engine.conn, user="alice")
        async with client, await client.attach("constrained") as lip:
            return await programs(lip)

    there = asyncio.run(remote())
    here, _ = run(load_model(TINY_MODEL, dtype="float32", show_progress=False), programs)
    assert there == here
    assert there[3] == ["GrammarError", "TokenRefused"]
    assert "Traceback" not in engine.log


def test_a_calls_own_mask_and_bias_cross_the_wire(engine: EngineProcess) -> None:
    async def remote() -> tuple:
        client = await Client.connect(engine.conn, user="alice")
        async with client, await client.attach("call-masks") as lip:
            return await call_masks(lip)

    there = asyncio.run(remote())
    check_call_masks(there)
    here, _ = run(load_model(TINY_MODEL, dtype="float32", show_progress=False), call_masks)
    assert there[2:] == here[2:]
