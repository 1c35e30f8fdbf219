"""The same library code over RPC: a real `symphony serve` process, a client's LIP.

The engine serves the checkpoint `tiny_loaded` is (tests/checkpoints.py, seed 0): the results
must equal those of the in-process kernel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from engine_process import EngineProcess, engine_process
from test_library import PROMPT, run

from engine.wire.records import SamplingParams
from workbench.client import Client
from workbench.lib import beam_search, parallel_samples, score, speculative_decode

HOT = SamplingParams(temperature=1.0)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    args = ("--num-pages", "256", "--page-size", "4", "--dtype", "float32")
    with engine_process(tmp_path_factory.mktemp("lib-rpc"), *args) as e:
        yield e


async def programs(sys: Any) -> tuple:
    spec = await speculative_decode(sys, await sys.kv.create(), PROMPT * 3, 24)
    beams = await beam_search(sys, PROMPT, width=3, max_tokens=6)
    samples = await parallel_samples(sys, PROMPT, 4, 8, HOT, seed=11)
    scores = await score(sys, PROMPT, [b.tokens for b in beams])
    return spec, beams, samples, scores


def test_library_programs_give_the_same_results_over_rpc(
    engine: EngineProcess, tiny_loaded
) -> None:  # noqa: ANN001
    async def remote() -> tuple:
        client = await Client.connect(engine.conn, user="alice")
        async with client, await client.attach("library") as lip:
            return await programs(lip)

    spec, beams, samples, scores = asyncio.run(remote())
    (spec_here, beams_here, samples_here, scores_here), _ = run(tiny_loaded, programs)
    assert spec.tokens == spec_here.tokens and spec.forwards == spec_here.forwards
    assert [b.tokens for b in beams] == [b.tokens for b in beams_here]
    assert [s.tokens for s in samples] == [s.tokens for s in samples_here]
    assert scores == pytest.approx(scores_here, abs=1e-4)
