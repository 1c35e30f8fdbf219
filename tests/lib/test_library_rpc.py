"""The same library code over RPC: a real `symphony serve` process, a client's LIP.

The engine serves the checkpoint `tiny_loaded` is (tests/checkpoints.py, seed 0): the results
must equal those of the in-process kernel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from engine_process import EngineProcess, engine_process
from test_library import PROMPT, run

from engine.wire.records import SamplingParams
from workbench.client import Client
from workbench.lib import (
    Chat,
    DraftLIP,
    beam_search,
    generate,
    parallel_samples,
    score,
    speculative_decode,
)

HOT = SamplingParams(temperature=1.0)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    args = ("--num-pages", "256", "--page-size", "4", "--dtype", "float32")
    with engine_process(tmp_path_factory.mktemp("lib-rpc"), *args) as e:
        yield e


def over_rpc(engine: EngineProcess, name: str, program: Callable[[Any], Awaitable[tuple]]) -> tuple:
    """What `program` returns run by a LIP of alice's named `name`, attached over RPC."""

    async def remote() -> tuple:
        client = await Client.connect(engine.conn, user="alice")
        async with client, await client.attach(name) as lip:
            return await program(lip)

    return asyncio.run(remote())


async def programs(sys: Any) -> tuple:
    spec = await speculative_decode(sys, await sys.kv.create(), PROMPT * 3, 24)
    beams = await beam_search(sys, PROMPT, width=3, max_tokens=6)
    samples = await parallel_samples(sys, PROMPT, 4, 8, HOT, seed=11)
    scores = await score(sys, PROMPT, [b.tokens for b in beams])
    return spec, beams, samples, scores


def test_library_programs_give_the_same_results_over_rpc(
    engine: EngineProcess, tiny_loaded
) -> None:  # noqa: ANN001
    spec, beams, samples, scores = over_rpc(engine, "library", programs)
    (spec_here, beams_here, samples_here, scores_here), _ = run(tiny_loaded, programs)
    assert spec.tokens == spec_here.tokens and spec.forwards == spec_here.forwards
    assert [b.tokens for b in beams] == [b.tokens for b in beams_here]
    assert [s.tokens for s in samples] == [s.tokens for s in samples_here]
    assert scores == pytest.approx(scores_here, abs=1e-4)


def test_a_generation_over_rpc_is_one_round_trip_with_the_same_stops(
    engine: EngineProcess, tiny_loaded
) -> None:  # noqa: ANN001
    async def program(sys: Any) -> tuple:
        whole = await generate(sys, await sys.kv.create(), PROMPT, 20)
        stop = whole.text[len(whole.text) // 2 : len(whole.text) // 2 + 3]
        streamed: list[str] = []
        cut = await generate(
            sys, await sys.kv.create(), PROMPT, 20, stop=[stop], on_text=streamed.append
        )
        return whole, stop, cut, streamed

    async def remote() -> tuple:
        client = await Client.connect(engine.conn, user="alice")
        async with client, await client.attach("generate") as lip:
            sent: list[str] = []
            call = client.call

            async def counted(op: str, args: Any = None, pid: Any = None) -> Any:
                sent.append(op)
                return await call(op, args, pid)

            client.call = counted  # type: ignore[method-assign]
            f = await lip.kv.create()
            sent.clear()
            one = await generate(lip, f, PROMPT, 20)
            return one, sent[:], await program(lip)

    one, sent, (whole, stop, cut, streamed) = asyncio.run(remote())
    (whole_here, stop_here, cut_here, streamed_here), _ = run(tiny_loaded, program)
    assert sent == ["sample_loop"]  # 20 tokens, one round trip
    assert one.tokens == whole.tokens == whole_here.tokens and stop == stop_here
    assert cut == cut_here and cut.stop == stop and "".join(streamed) == cut.text
    assert streamed == streamed_here


async def chat_program(sys: Any) -> tuple:
    chat = await Chat.start(sys, system="You are terse.")
    first = await chat.say("Name a prime.", max_tokens=8)
    second = await chat.say("And another?", max_tokens=6)
    return first, second, chat.messages


def test_a_chat_over_rpc_keeps_its_file_as_in_process(engine: EngineProcess, tiny_loaded) -> None:  # noqa: ANN001
    first, second, messages = over_rpc(engine, "chat", chat_program)
    (first_here, second_here, messages_here), _ = run(tiny_loaded, chat_program)
    assert (first, second, messages) == (first_here, second_here, messages_here)
    assert second.reused > 0 and second.forwarded < second.reused + second.forwarded


async def draft_lip_program(sys: Any) -> tuple:
    async with await DraftLIP.start(sys) as drafter:
        fast = await speculative_decode(
            sys, await sys.kv.create(), PROMPT * 3, 24, draft=3, drafter=drafter
        )
        fed = drafter.fed
    greedy = await generate(sys, await sys.kv.create(), PROMPT * 3, 24)  # default: greedy
    return fast, fed, greedy.tokens


def test_speculative_decoding_with_a_draft_lip_over_rpc_is_as_in_process(
    engine: EngineProcess, tiny_loaded
) -> None:  # noqa: ANN001
    fast, fed, greedy = over_rpc(engine, "draft-lip", draft_lip_program)
    (fast_here, fed_here, _), _ = run(tiny_loaded, draft_lip_program)
    assert fast.tokens == greedy  # the draft LIP ran engine-side, the verifier here
    assert fast == fast_here and fed == fed_here
    assert fast.draft_forwards == fast.drafted > 0 and fast.forwards == 24 - fast.accepted
