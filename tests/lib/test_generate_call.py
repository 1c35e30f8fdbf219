"""The engine's `sample_loop` call: the sampling loop, with stop tokens and strings, in it."""

from __future__ import annotations

import pytest
from test_library import PROMPT, greedy_tokens, run

from engine.syscalls import Syscalls
from engine.wire.errors import InvalidArgument
from engine.wire.records import Sample, SamplingParams
from workbench.lib import generate


def test_generate_is_greedy_decoding_and_leaves_the_file_as_forward_does(tiny_loaded) -> None:  # noqa: ANN001
    async def program(sys: Syscalls) -> tuple:
        free = await greedy_tokens(sys, PROMPT, 10)
        f = await sys.kv.create()
        g = await sys.sample_loop(f, PROMPT, 10)
        return free, g, await sys.kv.read(f), sys.detokenize(free)

    (free, g, held, text), _ = run(tiny_loaded, program)
    assert g.tokens == free and g.stop == "length" and g.text == text
    assert held == PROMPT + free[:-1]  # every new token but the last, as the forward loop


def test_generate_stops_at_a_token_and_at_the_token_completing_a_string(tiny_loaded) -> None:  # noqa: ANN001
    async def program(sys: Syscalls) -> tuple:
        free = await greedy_tokens(sys, PROMPT, 16)
        full = sys.detokenize(free)
        stop = full[len(full) // 2 : len(full) // 2 + 3]
        by_token = await sys.sample_loop(await sys.kv.create(), PROMPT, 16, stop_ids=[free[4]])
        by_string = await sys.sample_loop(await sys.kv.create(), PROMPT, 16, stop=["\x00", stop])
        n = len(by_string.tokens)
        texts = sys.detokenize(free[: n - 1]), sys.detokenize(free[:n])
        return free, full, stop, by_token, by_string, texts

    (free, full, stop, by_token, by_string, (before, at)), _ = run(tiny_loaded, program)
    assert by_token.tokens == free[: free.index(free[4]) + 1] and by_token.stop == "token"
    assert by_string.stop == stop and by_string.text == full[: full.find(stop)]
    assert by_string.tokens == free[: len(by_string.tokens)] and by_string.held == 0
    assert stop not in before and stop in at  # it ended at the token that completed the string


def test_generate_holds_back_what_could_begin_a_stop_string(tiny_loaded) -> None:  # noqa: ANN001
    async def program(sys: Syscalls) -> tuple:
        full = sys.detokenize(await greedy_tokens(sys, PROMPT, 8))
        stop = full[-2:] + "\x00"  # begins with the text's last two characters, never completes
        g = await sys.sample_loop(await sys.kv.create(), PROMPT, 8, stop=[stop])
        return full, g

    (full, g), _ = run(tiny_loaded, program)
    assert g.stop == "length" and g.text == full
    assert g.held == 2  # the two characters that begin the stop string are not shown yet


def test_a_generation_in_pieces_is_one_generation(tiny_loaded) -> None:  # noqa: ANN001
    async def program(sys: Syscalls) -> tuple:
        whole = await sys.sample_loop(await sys.kv.create(), PROMPT, 12)
        stop = whole.text[len(whole.text) // 2 - 1 : len(whole.text) // 2 + 2]
        f = await sys.kv.create()
        pieces, fed = [], PROMPT
        while sum(len(p.tokens) for p in pieces) < 12:
            before = [t for p in pieces for t in p.tokens]
            piece = await sys.sample_loop(f, fed, 1, stop=[stop], before=before)
            pieces.append(piece)
            if piece.stop != "length":
                break
            fed = piece.tokens[-1:]
        streamed: list[str] = []
        lib = await generate(
            sys, await sys.kv.create(), PROMPT, 12, stop=[stop], on_text=streamed.append
        )
        return whole, stop, pieces, lib, streamed

    (whole, stop, pieces, lib, streamed), _ = run(tiny_loaded, program)
    tokens = [t for p in pieces for t in p.tokens]
    assert pieces[-1].stop == stop and pieces[-1].text == whole.text[: whole.text.find(stop)]
    assert tokens == whole.tokens[: len(tokens)]  # a stop string across pieces is found
    assert lib.text == pieces[-1].text and lib.tokens == tokens
    assert "".join(streamed) == lib.text and len(streamed) >= 1


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": [""]}, "stop string"),
        ({"stop": "end"}, "list of strings"),
        ({"stop_ids": [10**9]}, "stop_ids"),
        ({"returns": Sample(SamplingParams(temperature=0.5), generator="x")}, "generator"),
    ],
)
def test_bad_generate_arguments_are_named(tiny_loaded, kwargs: dict, named: str) -> None:  # noqa: ANN001
    async def program(sys: Syscalls) -> str:
        f = await sys.kv.create()
        with pytest.raises(InvalidArgument) as e:
            await sys.sample_loop(f, PROMPT, **kwargs)
        assert await sys.kv.read(f) == []  # nothing appended
        return str(e.value)

    message, _ = run(tiny_loaded, program)
    assert named in message
