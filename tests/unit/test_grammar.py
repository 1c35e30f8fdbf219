"""engine.grammar: llguidance's matcher on the demo model's byte-level tokenizer, its masks
checked against the vocabulary itself (which tokens' text a grammar can take next)."""

from __future__ import annotations

import re

import pytest
import torch

from engine.grammar import (
    ConstrainedSegment,
    Constraint,
    Grammars,
    MaskRows,
    apply_masks,
    attach,
    compute_masks,
)
from engine.models import TINY_MODEL
from engine.sequence import KVSequence
from engine.tokenizer import Tokenizer
from engine.wire.errors import GrammarError, InvalidArgument, TokenRefused
from engine.wire.records import Grammar

DIGITS = Grammar.regex(r"[0-9]+x")


@pytest.fixture(scope="module")
def grammars() -> Grammars:
    tok = Tokenizer.from_dir(TINY_MODEL)
    assert tok.eos_id is not None
    return Grammars(tok, tok.vocab_size, [tok.eos_id])


def allowed(grammars: Grammars, c: Constraint) -> set[int]:
    """The token ids a constraint's mask leaves finite, through apply_masks."""
    bits = torch.empty((1, -(-grammars.vocab_size // 32)), dtype=torch.int32)
    c.fill(bits, 0)
    logits = torch.zeros(1, grammars.vocab_size)
    apply_masks(logits, MaskRows.of([0], bits, grammars.vocab_size))
    return set(torch.isfinite(logits[0]).nonzero().flatten().tolist())


def texts(grammars: Grammars) -> dict[int, str]:
    tok = grammars.tokenizer
    return {i: tok.decode([i]) for i in range(tok.vocab_size)}


def test_a_regex_mask_allows_exactly_the_tokens_that_continue_a_match(grammars) -> None:  # noqa: ANN001
    c = attach(grammars, [], DIGITS, None)
    vocab = texts(grammars)
    eos = grammars.stop_ids[0]
    # at the start: a token of digits, or digits then the closing x
    want = {i for i, t in vocab.items() if re.fullmatch(r"[0-9]+x?", t)}
    assert allowed(grammars, c) == want
    c.consume(grammars.tokenizer.encode("12"))
    assert allowed(grammars, c) == want | {i for i, t in vocab.items() if t == "x"}
    c.consume(grammars.tokenizer.encode("x"))
    assert c.matcher.is_stopped() and allowed(grammars, c) == {eos}  # complete: only a stop


def test_refused_tokens_are_named_and_change_nothing(grammars) -> None:  # noqa: ANN001
    tok = grammars.tokenizer
    c = attach(grammars, [], DIGITS, None)
    ids = tok.encode("12") + tok.encode("ab")
    assert c.refused(0, ids) == len(tok.encode("12"))
    with pytest.raises(TokenRefused, match=r"forward: token \d+ \('a.*at index 1 .*regex"):
        c.check(0, ids, "forward")
    assert c.consumed == 0 and c.refused(0, tok.encode("7x")) is None


def test_tokens_before_start_are_free_and_outputs_before_it_unmasked(grammars) -> None:  # noqa: ANN001
    tok = grammars.tokenizer
    prompt = tok.encode("Write a number:")
    c = attach(grammars, [], DIGITS, start=len(prompt))  # the grammar begins after the prompt
    assert c.refused(0, prompt) is None
    seg = ConstrainedSegment(c, 0, prompt, list(range(len(prompt))), first_row=3)
    masks = compute_masks([seg], grammars.vocab_size)
    # only the last output predicts a matched token: one mask row, the prompt's last
    assert masks.rows == [3 + len(prompt) - 1] and c.consumed == 0
    logits = torch.zeros(3 + len(prompt), grammars.vocab_size)
    apply_masks(logits, masks)
    assert torch.isfinite(logits[:-1]).all()
    digits = {i for i, t in texts(grammars).items() if re.fullmatch(r"[0-9]+x?", t)}
    assert set(torch.isfinite(logits[-1]).nonzero().flatten().tolist()) == digits


def test_several_outputs_each_get_the_mask_after_their_own_prefix(grammars) -> None:  # noqa: ANN001
    tok = grammars.tokenizer
    c = attach(grammars, [], Grammar.choice(["12x", "3"]), None)
    ids = [tok.encode("1")[0], tok.encode("2")[0]]
    masks = compute_masks([ConstrainedSegment(c, 0, ids, [1, 0], 0)], grammars.vocab_size)
    logits = torch.zeros(2, grammars.vocab_size)
    apply_masks(logits, masks)
    after = [set(torch.isfinite(row).nonzero().flatten().tolist()) for row in logits]
    assert c.consumed == 2
    assert all(tok.decode([t]).startswith("x") or t in grammars.stop_ids for t in after[0])
    assert tok.encode("x")[0] in after[0]  # output 1 (row 0): after "12"
    assert after[1] == {t for t in range(grammars.vocab_size) if tok.decode([t]) in ("2", "2x")}


def test_fork_copies_the_state_and_truncate_rolls_it_back(grammars, make_pool) -> None:  # noqa: ANN001
    tok = grammars.tokenizer
    pool = make_pool(num_layers=1, num_kv_heads=1, head_dim=4, num_pages=8, page_size=4)
    seq = KVSequence()
    seq.constraint = attach(grammars, [], DIGITS, None)
    ids = tok.encode("123")
    seq.reserve(pool, len(ids))
    seq.append(ids, list(range(len(ids))))
    seq.constraint.consume(ids)
    child = seq.fork(pool)
    assert child.constraint is not None and child.constraint is not seq.constraint
    child.constraint.consume(tok.encode("x"))
    assert child.constraint.matcher.is_stopped() and not seq.constraint.matcher.is_stopped()
    seq.truncate(pool, 1)
    assert seq.constraint.end == 1 and seq.constraint.refused(1, tok.encode("9x")) is None
    assert seq.constraint.refused(1, tok.encode("x")) is None  # "1x" matches too
    seq.truncate(pool, 0)
    assert seq.constraint.refused(0, tok.encode("x")) == 0  # at the start x is refused
    seq.release(pool)
    child.release(pool)
    assert seq.constraint is None


def test_attaching_matches_the_tokens_already_past_start(grammars) -> None:  # noqa: ANN001
    tok = grammars.tokenizer
    held = tok.encode("n=") + tok.encode("42")
    c = attach(grammars, held, DIGITS, start=len(tok.encode("n=")))
    assert c.consumed == len(tok.encode("42"))
    with pytest.raises(TokenRefused, match="kv.constrain"):
        attach(grammars, held, DIGITS, start=0)
    with pytest.raises(InvalidArgument, match="start must be an int >= 0"):
        attach(grammars, held, DIGITS, start=-1)


@pytest.mark.parametrize(
    ("grammar", "problem"),
    [
        (Grammar("regx", "a"), "kind is one of regex, json_schema, lark, choice"),
        (Grammar.regex("(("), "unclosed group"),
        (Grammar("json_schema", "{not json"), "json_schema grammar"),
        (Grammar.choice([]), "non-empty list of strings"),
        (Grammar("choice", "[1, 2]"), "non-empty list of strings"),
        (Grammar.lark("start: undefined_rule"), "unknown name"),
    ],
)
def test_a_bad_grammar_is_a_grammar_error_naming_the_problem(grammars, grammar, problem) -> None:  # noqa: ANN001
    with pytest.raises(GrammarError, match=re.escape(problem)):
        attach(grammars, [], grammar, None)


def test_grammar_records_build_the_sources() -> None:
    compact = '{"type": "integer", "x-guidance": {"whitespace_flexible": false}}'
    assert Grammar.json_schema({"type": "integer"}) == Grammar("json_schema", compact)
    assert (
        Grammar.json_schema('{"type": "integer"}', whitespace=True).source == '{"type": "integer"}'
    )
    assert Grammar.choice(["a", 'b"']) == Grammar("choice", '["a", "b\\""]')
    assert Grammar.regex("a+").kind == "regex" and Grammar.lark("start: x").kind == "lark"


def test_the_bench_masks_the_same_tokens_both_ways() -> None:
    """`symphony bench constrained` at a small size on the demo model: engine-side and LIP-side
    masking write the same tokens (measure checks it), and every token matches the grammar."""
    from engine.bench import constrained as bench
    from engine.loader import load_model

    loaded = load_model(TINY_MODEL, dtype="float32", show_progress=False)
    measured = bench.measure(loaded, runs=1, lips=2, new=6)
    assert set(measured) == set(bench.CASES)
    assert all(tokens == 12 and timing.engine > 0 for timing, tokens in measured.values())


def test_follow_catches_up_with_a_file_that_changed(grammars) -> None:  # noqa: ANN001
    tok = grammars.tokenizer
    one, two, x = tok.encode("1"), tok.encode("2"), tok.encode("x")
    c = attach(grammars, one + two, DIGITS, start=0)
    c.follow(one + two, one + two + two, "kv.constrain")  # appended meanwhile
    assert c.end == 3
    c.follow(one + two + two, one + x, "kv.constrain")  # truncated, then appended
    assert c.end == 2 and c.matcher.is_stopped()
    with pytest.raises(TokenRefused, match="kv.constrain"):
        c.follow(one + x, x, "kv.constrain")
    assert c.end == 2  # refused: unchanged
