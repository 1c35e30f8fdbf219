"""Constrained generation on a real kernel in process, with the demo model `tiny` (a byte-level
BPE tokenizer, as real models have): the grammar lives in the engine, every output matches it,
over many seeds; a refused token is a typed error and the engine serves everyone else."""

from __future__ import annotations

import asyncio
import json
import math
import re
from typing import Any

import jsonschema
import pytest
from test_library import run

from engine.loader import load_model
from engine.models import TINY_MODEL
from engine.syscalls import Syscalls
from engine.wire.errors import InvalidArgument, TokenRefused
from engine.wire.records import (
    Grammar,
    Logits,
    LogProbs,
    Sample,
    SamplingParams,
    TopK,
    token_bitmask,
)
from workbench.lib import choose, constrained, generate, generate_json, generate_regex

HOT = SamplingParams(temperature=1.0)
SEEDS = range(12)
DATE = r"(19|20)[0-9][0-9]-(0[1-9]|1[0-2])-[0-2][0-9]"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "year": {"type": "integer", "minimum": 1990, "maximum": 2030},
        "tags": {"type": "array", "items": {"enum": ["list", "dict", "set"]}, "maxItems": 3},
    },
    "required": ["name", "year", "tags"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def demo() -> Any:
    return load_model(TINY_MODEL, dtype="float32", show_progress=False)


def many(program: Any, seeds: range) -> Any:
    """A program per seed, all running at once (their calls batched together)."""

    async def all_of(sys: Syscalls) -> list[Any]:
        return list(await asyncio.gather(*(program(sys, s) for s in seeds)))

    return all_of


def test_regex_output_always_matches_over_many_seeds(demo) -> None:  # noqa: ANN001
    async def one(sys: Syscalls, seed: int) -> str:
        f = await sys.kv.create()
        return await generate_regex(sys, f, "The date is ", DATE, params=HOT, seed=seed)

    out, _ = run(demo, many(one, SEEDS))
    assert all(re.fullmatch(DATE, text) for text in out), out
    assert len(set(out)) > 1  # sampled, not one forced string


def test_json_output_always_parses_and_validates_over_many_seeds(demo) -> None:  # noqa: ANN001
    async def one(sys: Syscalls, seed: int) -> Any:
        f = await sys.kv.create()
        return await generate_json(sys, f, "A record: ", SCHEMA, 160, params=HOT, seed=seed)

    out, _ = run(demo, many(one, SEEDS), num_pages=1024)
    for value in out:
        jsonschema.validate(value, SCHEMA)
    assert len({json.dumps(v) for v in out}) > 1


def test_choose_returns_one_of_the_options(demo) -> None:  # noqa: ANN001
    options = ["return", "yield", "raise an exception"]

    async def one(sys: Syscalls, seed: int) -> str:
        f = await sys.kv.create()
        return await choose(sys, f, "A generator function should", options, HOT, seed)

    out, _ = run(demo, many(one, SEEDS))
    assert set(out) <= set(options) and len(set(out)) > 1


def test_without_the_grammar_the_model_writes_something_else(demo) -> None:  # noqa: ANN001
    """The oracle above could fail: unconstrained, the same prompts do not match."""

    async def one(sys: Syscalls, seed: int) -> str:
        out = await generate(sys, await sys.kv.create(), "The date is ", 10, HOT, seed=seed)
        return out.text

    out, _ = run(demo, many(one, range(4)))
    assert not any(re.fullmatch(DATE, text) for text in out)


def test_masks_apply_to_topk_logprobs_and_logits(demo) -> None:  # noqa: ANN001
    async def program(sys: Syscalls) -> tuple:
        digits = [t for t in range(await sys.vocab_size()) if sys.detokenize([t]).isdigit()]
        letter = sys.tokenize("a")[0]
        prompt = sys.tokenize("The number")
        f = await sys.kv.create()
        await sys.kv.constrain(f, Grammar.regex("[0-9]+"), start=len(prompt))
        top = await sys.forward(f, prompt, returns=TopK(50))
        logits = await sys.forward(f, [digits[0]], returns=Logits())
        lp = await sys.forward(f, [digits[1]], returns=LogProbs([[digits[2], letter]]))
        return digits, letter, top, logits, lp

    (digits, letter, top, logits, lp), _ = run(demo, program)
    assert len(digits) > 50 and set(top.ids) <= set(digits)  # the 50 most likely: all digits
    finite = {i for i, x in enumerate(logits) if math.isfinite(x)}
    assert digits[0] in finite and letter not in finite
    assert math.isfinite(lp[0]) and lp[1] == -math.inf


def test_a_refused_token_fails_that_call_only(demo) -> None:  # noqa: ANN001
    """A token the grammar refuses is TokenRefused, nothing is appended, the file's grammar
    still works, and another process decoding in the same batches is untouched."""

    async def bystander(sys: Syscalls) -> list[int]:
        out = await generate(sys, await sys.kv.create(), "A list is", 16)
        return out.tokens

    async def offender(sys: Syscalls) -> tuple:
        f = await sys.kv.create()
        await sys.kv.constrain(f, Grammar.choice(["yes", "no"]))
        errors = []
        for bad in (sys.tokenize("maybe"), sys.tokenize("ye") + sys.tokenize("x")):
            try:
                await sys.forward(f, bad, returns=Sample())
            except TokenRefused as e:
                errors.append(str(e))
        held = (await sys.kv.stat(f)).tokens
        t = await sys.forward(f, sys.tokenize("no"), returns=Sample())
        return errors, len(sys.tokenize("ye")), held, t, (await sys.special_tokens()).stop

    async def both(sys: Syscalls) -> tuple:
        alone = await bystander(sys)
        beside, off = await asyncio.gather(bystander(sys), offender(sys))
        return alone, beside, off

    (alone, beside, (errors, ye, held, t, stop)), _ = run(demo, both)
    assert len(errors) == 2 and all("choice grammar" in e for e in errors)
    assert "at index 0 " in errors[0] and f"at index {ye} " in errors[1]
    assert held == 0 and t in stop  # after "no" the grammar is complete: only a stop token
    assert beside == alone


def test_fork_and_truncate_carry_the_grammar(demo) -> None:  # noqa: ANN001
    async def program(sys: Syscalls) -> tuple:
        f = await sys.kv.create()
        await sys.kv.constrain(f, Grammar.regex("(ab)+c"))
        await sys.forward(f, sys.tokenize("ab"), outputs=[])
        g = await sys.kv.fork(f)
        refused = []
        for handle in (f, g):
            try:
                await sys.forward(handle, sys.tokenize("x"), outputs=[])
            except TokenRefused:
                refused.append(handle.path)
        await sys.forward(g, sys.tokenize("c"), outputs=[])  # g complete, f not
        await sys.kv.truncate(g, 0)
        after_truncate = []
        try:
            await sys.forward(g, sys.tokenize("c"), outputs=[])  # at the start c is refused
        except TokenRefused:
            after_truncate.append("refused")
        await sys.forward(f, sys.tokenize("abc"), outputs=[])
        await sys.kv.constrain(f, None)  # detached: anything goes
        await sys.forward(f, sys.tokenize("x"), outputs=[])
        return refused, after_truncate, [f.path, g.path]

    refused, after_truncate, paths = run(demo, program)[0]
    assert refused == paths and after_truncate == ["refused"]


def test_constrained_reports_an_unfinished_grammar(demo) -> None:  # noqa: ANN001
    async def program(sys: Syscalls) -> Any:
        f = await sys.kv.create()
        return await constrained(sys, f, "Numbers:", Grammar.regex("[0-9]{40}"), max_tokens=3)

    out, _ = run(demo, program)
    assert not out.complete and len(out.tokens) == 3 and out.text.isdigit()


def test_a_bad_grammar_is_a_grammar_error_for_its_caller(demo) -> None:  # noqa: ANN001

    async def program(sys: Syscalls) -> str:
        f = await sys.kv.create()
        try:
            await sys.kv.constrain(f, Grammar.lark("start: nothing_here"))
        except Exception as e:  # noqa: BLE001 - its type is the point
            return type(e).__name__
        return "no error"

    out, _ = run(demo, program)
    assert out == "GrammarError"


async def call_masks(sys: Any) -> tuple:
    """A call's own allowed bitmask and logit bias, beside (and with) a file's grammar."""
    vocab = await sys.vocab_size()
    digits = [t for t in range(vocab) if sys.detokenize([t]).isdigit()]
    few = digits[:3]
    f = await sys.kv.create()
    prompt = sys.tokenize("The number")
    only = await sys.forward(f, prompt, returns=TopK(5, allowed=token_bitmask(vocab, few)))
    banned = await sys.forward(f, [few[0]], returns=Sample(bias={t: -math.inf for t in digits}))
    pushed = await sys.forward(f, [banned], returns=Sample(bias={few[2]: 1e4}))
    g = await sys.kv.create()
    await sys.kv.constrain(g, Grammar.regex("[0-9]+"), start=len(prompt))
    letters = [sys.tokenize(c)[0] for c in "abc"]
    errors = []
    for bad in (
        Sample(allowed=token_bitmask(vocab, letters)),  # the grammar allows none of them
        Sample(allowed=b"\xff"),  # the wrong size
        Sample(allowed=token_bitmask(vocab, [])),  # nothing at all
        Sample(bias={vocab: 1.0}),
        Sample(bias={0: math.nan}),
    ):
        try:
            await sys.forward(g, prompt, returns=bad)
        except InvalidArgument as e:
            errors.append(str(e))
    after = await sys.forward(g, prompt, returns=Sample())
    return few, digits, only, banned, pushed, errors, after


def check_call_masks(out: tuple) -> None:
    few, digits, only, banned, pushed, errors, after = out
    assert set(only.ids[:3]) == set(few) and only.probs[3:] == [0.0, 0.0]
    assert banned not in digits and pushed == few[2]
    assert len(errors) == 5, errors
    assert "no token is allowed" in errors[0] and "allowed must be" in errors[1]
    assert "allows no token" in errors[2] and "bias maps token ids" in errors[3]
    assert "below +inf" in errors[4]
    assert after in digits  # the failed calls appended nothing, the grammar is as it was


def test_a_call_brings_its_own_mask_and_bias(demo) -> None:  # noqa: ANN001
    out, _ = run(demo, call_masks)
    check_call_masks(out)


def test_token_bitmask_is_llguidances_layout() -> None:
    mask = token_bitmask(40, [0, 9, 33])
    assert len(mask) == 8 and mask[0] == 1 and mask[1] == 2 and mask[4] == 2
    with pytest.raises(InvalidArgument, match="0..39"):
        token_bitmask(40, [40])


def test_several_outputs_of_one_forward_each_follow_their_prefix(demo) -> None:  # noqa: ANN001
    """Speculative verification on a constrained file: output i is masked by the grammar after
    tokens 0..i of the call (three digits, then only an x may follow)."""

    async def program(sys: Syscalls) -> list[str]:
        one = sys.tokenize("1")
        f = await sys.kv.create()
        await sys.kv.constrain(f, Grammar.regex("[0-9]{3}x"))
        drafted = one * 3
        out = await sys.forward(f, drafted, outputs=[0, 1, 2], returns=Sample())
        return [sys.detokenize([t]) for t in out]

    texts, _ = run(demo, program)
    assert re.fullmatch("[0-9]{1,2}x?", texts[0])  # after "1": two digits more at most
    assert re.fullmatch("[0-9]x?", texts[1])  # after "11": one
    assert texts[2] == "x"  # after "111": the x
