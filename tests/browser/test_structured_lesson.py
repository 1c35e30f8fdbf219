"""gallery/06-structured-output.ipynb in JupyterLab: it runs top to bottom without an error, its
token view renders, and what the view shows of the grammar's masks is what the engine did.

The lesson keeps the file it constrained step by step (`/home/<user>/lesson-06/json`): its
tokens are the prompt, then every token the view shows but the final stop token. Here each
step's mask is computed again, outside the engine, with llguidance's own matcher on the
engine's tokenizer and the lesson's schema, and the count of tokens it refuses is checked
against the "masked N of V" the view drew for that step.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from fork_and_share import view
from lab_harness import (
    TOKEN_ROWS,
    USER,
    Engine,
    Lab,
    cell_text,
    run_lesson,
    settle,
    shown,
    tokenizer_of,
)

from engine.wire.records import Grammar

NOTEBOOK = "gallery/06-structured-output.ipynb"
SETUP_CELL = "import asyncio"
INSIDE_CELL = "%%lip --name inside"
INSIDE = f"/home/{USER}/lesson-06/json"
GRAMMAR = 5  # the token view's grammar column (step, chosen, p, rank, top tokens, grammar)


def test_the_structured_output_lesson_shows_the_masks_the_grammar_made(
    page: Any, lab: Lab, artifacts: Path
) -> None:
    llguidance = pytest.importorskip("llguidance")
    cells = run_lesson(page, lab, NOTEBOOK)
    shown_schema = re.search(r"schema: (.*)$", cell_text(cells, SETUP_CELL), re.M)
    assert shown_schema, cell_text(cells, SETUP_CELL)
    schema = json.loads(shown_schema.group(1))
    said = cell_text(cells, INSIDE_CELL)
    head = re.search(r"prompt: (\d+) tokens; (\d+) steps, the last a stop token: True", said)
    assert head, said
    prompt, steps = int(head.group(1)), int(head.group(2))
    overruled = re.search(r"first choice at (\d+) steps", said)
    assert overruled, said

    engine = Engine(lab)
    kept = engine("kv.read", path=INSIDE, start=0, stop=None)
    written = kept[prompt:]  # every step's token but the last (the stop token was never fed)
    assert len(written) == steps - 1
    tokenizer = tokenizer_of(engine)

    box = view(page, INSIDE_CELL)
    rows: list[dict[str, Any]] = settle("the token view", lambda: _rows(box, steps))
    want = [shown(tokenizer.decode([t], skip_special_tokens=False)) for t in written]
    assert [r["text"][1].replace("\xa0", " ") for r in rows[:-1]] == want
    stop = tokenizer.token_to_id(rows[-1]["text"][1])
    assert stop is not None  # a special token, shown as its name

    masked = []
    for r in rows:
        m = re.fullmatch(r"masked ([\d,]+) of ([\d,]+); wanted .*", r["text"][GRAMMAR].strip())
        assert m, r["text"]
        masked.append(tuple(int(g.replace(",", "")) for g in m.groups()))
    vocab = masked[0][1]
    assert {v for _, v in masked} == {vocab}

    # each step's mask again: llguidance's matcher, after the tokens before that step
    ll = llguidance.LLTokenizer(engine.info["tokenizer"], n_vocab=vocab, eos_token=[stop])
    grammar = Grammar.json_schema(schema)
    matcher = llguidance.LLMatcher(ll, llguidance.grammar_from(grammar.kind, grammar.source))
    for i, (refused, _) in enumerate(masked[:-1]):  # the last: only stop tokens, the engine's
        allowed = sum(bin(b).count("1") for b in matcher.compute_bitmask()[: -(-vocab // 8)])
        assert refused == vocab - allowed, (i, refused, vocab - allowed)
        assert matcher.consume_token(written[i])
    assert matcher.is_accepting()  # the JSON was complete where the model stopped

    struck = sum(1 for r in rows if "wanted <s>" in r["html"][GRAMMAR])
    assert struck == int(overruled.group(1))  # the grammar overruled the model's first choice
    box.screenshot(path=str(artifacts / "gallery-06-token-view.png"))


def _rows(box: Any, steps: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = box.evaluate(TOKEN_ROWS)
    assert len(rows) == steps
    return rows
