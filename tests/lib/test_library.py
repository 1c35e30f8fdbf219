"""The LIP library on a real kernel in process: each program against an oracle that could fail."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from engine.kernel import Kernel
from engine.syscalls import Syscalls
from engine.wire import events as ev
from engine.wire.records import Logits, LogProbs, Sample, SamplingParams
from workbench.lib import (
    beam_search,
    cached_prompt,
    generate,
    parallel_samples,
    score,
    self_consistency,
    speculative_decode,
)
from workbench.lib.decoding import held_back
from workbench.lib.draft_lip import DraftLIP
from workbench.lib.speculative import lookup

PROMPT = [5, 17, 3, 99, 42, 7, 7, 120, 64, 31, 8, 200]


def run(
    loaded: Any, program: Callable[..., Awaitable[Any]], *args: Any, num_pages: int = 256
) -> Any:
    """Run one program as a process on a fresh kernel; its result, the kernel (for its trace)."""

    async def main() -> Any:
        async with kernel:
            return await kernel.wait(kernel.spawn(program, *args))

    kernel = Kernel(loaded, num_pages=num_pages, page_size=4)
    result = asyncio.run(main())
    kernel.pool.check()
    assert kernel.pool.num_free == kernel.pool.num_pages  # every file the program made is gone
    return result, kernel


async def greedy_tokens(sys: Syscalls, prompt: list[int], n: int) -> list[int]:
    f = await sys.kv.create()
    t = await sys.forward(f, prompt, returns=Sample())
    out = [t]
    for _ in range(n - 1):
        t = await sys.forward(f, [t], returns=Sample())
        out.append(t)
    return out


def test_generate_stops_at_a_string_and_never_streams_part_of_one(tiny_loaded) -> None:  # noqa: ANN001
    async def program(sys: Syscalls) -> tuple:
        full = await generate(sys, await sys.kv.create(), PROMPT, 24)
        # a stop string taken from the middle of what greedy decoding writes
        stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 3]
        shown: list[str] = []
        cut = await generate(
            sys, await sys.kv.create(), PROMPT, 24, stop=[stop], on_text=shown.append
        )
        return full, stop, cut, shown

    (full, stop, cut, shown), _ = run(tiny_loaded, program)
    assert full.stop == "length" and len(full.tokens) == 24
    assert cut.stop == stop and cut.text == full.text[: full.text.find(stop)]
    assert cut.tokens == full.tokens[: len(cut.tokens)]
    assert "".join(shown) == cut.text  # streamed in pieces, the stop string never shown


def test_held_back_keeps_what_could_start_a_stop_string() -> None:
    assert held_back("the end", ["end of", "xyz"]) == 3
    assert held_back("the en", ["end"]) == 2
    assert held_back("abc", ["zz"]) == 0


def test_generate_stops_on_a_stop_token(tiny_loaded) -> None:  # noqa: ANN001
    async def program(sys: Syscalls) -> tuple:
        free = await greedy_tokens(sys, PROMPT, 12)
        stopped = await generate(sys, await sys.kv.create(), PROMPT, 12, stop_ids=[free[5]])
        return free, stopped

    (free, stopped), _ = run(tiny_loaded, program)
    first = free.index(free[5])
    assert stopped.tokens == free[: first + 1] and stopped.stop == "token"


def test_seeded_samples_repeat_and_forks_decode_together(tiny_loaded) -> None:  # noqa: ANN001
    hot = SamplingParams(temperature=1.0)

    async def program(sys: Syscalls) -> tuple:
        together = await parallel_samples(sys, PROMPT, 6, 16, hot, seed=3)
        alone = await generate(sys, await sys.kv.create(), PROMPT, 16, hot, seed=5)
        return together, alone

    (together, alone), kernel = run(tiny_loaded, program)
    assert together[2].tokens == alone.tokens  # sample i is seeded seed + i, batch or not
    assert len({tuple(s.tokens) for s in together}) > 1  # the samples differ
    widest = max(len(ev.record_of(b).calls) for b in kernel.trace.query(kinds=[ev.BATCH]))
    assert widest >= 6  # the forks decoded in the same batches


def test_self_consistency_votes_for_the_most_common_answer(tiny_loaded) -> None:  # noqa: ANN001
    hot = SamplingParams(temperature=1.0)
    first_word = lambda text: text.split()[0] if text.split() else None  # noqa: E731

    async def program(sys: Syscalls) -> Any:
        return await self_consistency(sys, PROMPT, first_word, n=8, max_tokens=4, params=hot)

    vote, _ = run(tiny_loaded, program)
    answers = [first_word(s.text) for s in vote.samples]
    assert sum(vote.counts.values()) == sum(a is not None for a in answers)
    assert vote.counts[vote.answer] == max(answers.count(a) for a in set(answers) if a)


def test_beam_width_one_is_greedy_and_scores_are_the_models(tiny_loaded) -> None:  # noqa: ANN001
    async def program(sys: Syscalls) -> tuple:
        greedy = await greedy_tokens(sys, PROMPT, 10)
        narrow = await beam_search(sys, PROMPT, width=1, max_tokens=10)
        wide = await beam_search(sys, PROMPT, width=4, max_tokens=10)
        rescored = await score(sys, PROMPT, [b.tokens for b in wide])
        return greedy, narrow, wide, rescored

    (greedy, narrow, wide, rescored), _ = run(tiny_loaded, program)
    assert narrow[0].tokens == greedy
    assert len(wide) == 4 and len({tuple(b.tokens) for b in wide}) == 4
    assert [b.logprob for b in wide] == sorted((b.logprob for b in wide), reverse=True)
    for beam, again in zip(wide, rescored, strict=True):
        assert beam.logprob == pytest.approx(again, abs=1e-3)


def test_score_is_the_sum_of_fresh_log_probabilities(tiny_loaded) -> None:  # noqa: ANN001
    cands = [[9, 10, 11], [200], [7, 7, 7, 7]]

    async def program(sys: Syscalls) -> tuple:
        fast = await score(sys, PROMPT, cands)
        fresh = []
        for c in cands:
            f = await sys.kv.create()
            seq = PROMPT + c[:-1]
            outs = list(range(len(PROMPT) - 1, len(seq)))
            rows = await sys.forward(f, seq, outputs=outs, returns=LogProbs([[t] for t in c]))
            fresh.append(sum(r[0] for r in rows))
        return fast, fresh

    (fast, fresh), _ = run(tiny_loaded, program)
    assert fast == pytest.approx(fresh, abs=1e-4)


def test_prompt_lookup_finds_the_latest_earlier_ngram() -> None:
    assert lookup([1, 2, 3, 9, 1, 2, 3, 8, 1, 2, 3], 3, 2) == [8, 1]
    assert lookup([1, 2, 3, 4], 3, 2) == []
    assert lookup([5, 6, 7, 5], 3, 3) == [6, 7, 5]  # falls back to the last token alone


def test_speculative_decoding_is_greedy_in_fewer_forwards(tiny_loaded) -> None:  # noqa: ANN001
    repetitive = PROMPT * 3  # drafts from the prompt itself

    seen: list = []

    async def program(sys: Syscalls) -> tuple:
        greedy = await greedy_tokens(sys, repetitive, 40)
        fast = await speculative_decode(
            sys, await sys.kv.create(), repetitive, 40, on_step=seen.append
        )
        return greedy, fast

    (greedy, fast), _ = run(tiny_loaded, program)
    assert fast.tokens == greedy
    assert fast.accepted > 0 and fast.forwards == 40 - fast.accepted
    assert len(seen) == fast.forwards and sum(v.accepted for v in seen) == fast.accepted
    assert [t for v in seen for t in v.tokens] == fast.tokens
    for v in seen:  # what was accepted is the draft's start; each token is its distribution's top
        assert v.tokens[: v.accepted] == v.draft[: v.accepted]
        assert [d.argmax() for d in v.dists] == v.tokens


def test_speculative_decoding_leaves_the_file_as_generate_does(tiny_loaded) -> None:  # noqa: ANN001
    async def program(sys: Syscalls) -> tuple:
        f = await sys.kv.create()
        fast = await speculative_decode(sys, f, PROMPT * 2, 30, stop_ids=[])
        return fast, (await sys.kv.stat(f)).tokens

    (fast, length), _ = run(tiny_loaded, program)
    assert length == len(PROMPT) * 2 + len(fast.tokens) - 1


def test_a_cached_prompt_is_computed_once_for_every_user(tiny_loaded) -> None:  # noqa: ANN001
    system = PROMPT * 4  # 48 tokens: 11 full pages of 4

    async def user(sys: Syscalls) -> tuple:
        cached = await cached_prompt(sys, "/shared/system", system)
        first = await sys.forward(cached.file, cached.rest, returns=Logits())
        stat = await sys.kv.stat(cached.file)
        return first, stat.num_shared_pages

    async def fresh(sys: Syscalls) -> list[float]:
        f = await sys.kv.create()
        await sys.kv.share(f, False)  # computed from scratch: no automatic prefix sharing
        return await sys.forward(f, system, returns=Logits())

    async def main() -> tuple:
        async with kernel:
            a = await kernel.wait(kernel.spawn(user, owner="alice"))
            b = await kernel.wait(kernel.spawn(user, owner="bob"))
            want = await kernel.wait(kernel.spawn(fresh))
            return a, b, want

    kernel = Kernel(tiny_loaded, num_pages=128, page_size=4)
    (a, b, want) = asyncio.run(main())
    kernel.pool.check()
    assert a[0] == pytest.approx(want, abs=1e-4) and b[0] == pytest.approx(want, abs=1e-4)
    assert b[1] == (len(system) - 1) // 4  # bob's fork shares every full page of the prompt
    computed = [ev.record_of(b).tokens for b in kernel.trace.query(kinds=[ev.BATCH])]
    assert sum(computed) == (len(system) - 1) + 1 + 1 + len(system)  # the prompt once, not twice


def test_a_cached_prompt_refuses_another_prompt_at_its_path(tiny_loaded) -> None:  # noqa: ANN001
    async def program(sys: Syscalls) -> None:
        await cached_prompt(sys, "/shared/p", PROMPT)
        with pytest.raises(ValueError, match="holds another prompt"):
            await cached_prompt(sys, "/shared/p", PROMPT[::-1])
        await sys.kv.unlink("/shared/p")

    run(tiny_loaded, program)


def submitted(kernel: Kernel, pid: int) -> list[int]:
    """The tokens of each forward call a process made, from the engine's trace."""
    return [ev.record_of(e).tokens for e in kernel.trace.query(pid=pid, kinds=[ev.CALL_SUBMITTED])]


def test_speculative_decoding_with_a_draft_lip_is_greedy(tiny_loaded) -> None:  # noqa: ANN001
    repetitive = PROMPT * 3

    async def program(sys: Syscalls) -> tuple:
        greedy = await greedy_tokens(sys, repetitive, 30)
        async with await DraftLIP.start(sys) as drafter:
            fast = await speculative_decode(
                sys, await sys.kv.create(), repetitive, 30, draft=3, drafter=drafter
            )
        return greedy, fast, drafter.pid

    (greedy, fast, pid), kernel = run(tiny_loaded, program)
    assert fast.tokens == greedy
    assert fast.forwards == 30 - fast.accepted and fast.accepted > 0
    fed = submitted(kernel, pid)  # the draft LIP's forwards, as the engine saw them
    assert fast.draft_forwards == len(fed) == fast.drafted
    # every token of the text is fed to the draft LIP once; only rejected drafts go again
    assert sum(fed) <= len(repetitive) + len(fast.tokens) + fast.drafted - fast.accepted


def test_a_draft_lip_truncates_its_file_when_a_draft_is_rejected(tiny_loaded) -> None:  # noqa: ANN001
    async def program(sys: Syscalls) -> tuple:
        drafter = await DraftLIP.start(sys)
        first = await drafter.propose(PROMPT, 3)
        held = await sys.kv.read(drafter.path)
        await drafter.verified(first, 1)  # the second drafted token is rejected:
        other = next(t for t in range(1, 300) if t != first.tokens[1])  # the model wrote this
        history = [*PROMPT, first.tokens[0], other]
        second = await drafter.propose(history, 3)
        held_after = await sys.kv.read(drafter.path)
        await drafter.close()
        return first, held, history, second, held_after, drafter.pid

    (first, held, history, second, held_after, pid), kernel = run(tiny_loaded, program)
    assert first.forwards == second.forwards == 3
    assert held == PROMPT + first.tokens[:2]  # the draft's last token is not fed yet
    assert held_after == history + second.tokens[:2]  # the rejected tail is gone
    # the second draft fed the model's token, then its own two: the accepted text not again
    assert submitted(kernel, pid) == [len(PROMPT), 1, 1, 1, 1, 1]


def test_a_draft_lip_ends_when_its_verifier_ends_without_closing_it(tiny_loaded) -> None:  # noqa: ANN001
    async def verifier(sys: Syscalls) -> tuple:
        drafter = await DraftLIP.start(sys)
        await drafter.propose(PROMPT, 2)
        return drafter.pid  # no close: an interrupted cell, say

    async def main() -> tuple:
        async with kernel:
            child = await kernel.wait(kernel.spawn(verifier))
            forwards = await kernel.wait(child)  # it noticed its parent had ended
            return forwards, [p.state for p in kernel.ps() if p.pid == child]

    kernel = Kernel(tiny_loaded, num_pages=64, page_size=4)
    forwards, states = asyncio.run(main())
    assert forwards == 2 and states in ([], ["exited"])
    kernel.pool.check()
    assert kernel.pool.num_free == kernel.pool.num_pages  # its file went with it
