"""gallery/04-speculative-decoding.ipynb in JupyterLab: it runs top to bottom without an error,
its token view renders, and what the view shows of the drafts is what the engine saw.

The engine's trace holds every forward call of the lesson's speculative process and how many
tokens it fed: the prompt, then for each verifying forward the last token and the draft. The
view's rows, read back from the page, are cut into forwards (a forward's accepted draft tokens
are green, then its rejected guess is red, or its own next token has no colour), and each
forward's draft length is checked against the trace.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

from fork_and_share import view
from lab_harness import TOKEN_ROWS, Engine, Lab, cell_text, run_lesson, settle, shown

from workbench.widgets.style import ACCEPTED_COLOUR, REJECTED_COLOUR

NOTEBOOK = "gallery/04-speculative-decoding.ipynb"
GREEDY_CELL = "%%lip --name greedy"
SPECULATIVE_CELL = "%%lip --name speculative"
N = 40  # the lesson's token count


def test_the_speculative_lesson_colours_the_drafts_the_engine_verified(
    page: Any, lab: Lab, artifacts: Path
) -> None:
    cells = run_lesson(page, lab, NOTEBOOK)
    engine = Engine(lab)
    greedy = re.search(
        r"greedy: \d+ tokens in \d+ forwards: (.*)$", cell_text(cells, GREEDY_CELL), re.M
    )
    assert greedy, cell_text(cells, GREEDY_CELL)
    said = cell_text(cells, SPECULATIVE_CELL)
    numbers = re.search(
        r"speculative: (\d+) tokens in (\d+) forwards; (\d+) of (\d+) drafted", said
    )
    assert numbers, said
    tokens, forwards, accepted, drafted = (int(g) for g in numbers.groups())
    assert tokens == N
    # float32: greedy decoding's tokens; bfloat16 (the demo model here, where the CPU has
    # bfloat16 arithmetic) rounds a forward of several tokens apart from one of one token
    float32 = engine("stat_engine")["dtype"] == "float32"
    same = "the same tokens as greedy decoding: True" in said
    assert same or not float32, said

    # the engine's record: the speculative process's forwards, how many tokens each fed
    ran = [p for p in lab.get("processes?exited=1000")["processes"] if p["notebook"] == NOTEBOOK]
    (pid,) = [p["pid"] for p in ran if p["name"] == "speculative"]
    fed = [
        e.data["tokens"]
        for e in engine("trace", kinds=["call.submitted"], limit=100_000)
        if e.pid == pid
    ]
    assert len(fed) == forwards
    drafts = [n - 1 for n in fed[1:]]  # each verifying forward: the last token, then the draft
    assert sum(drafts) == drafted

    box = view(page, SPECULATIVE_CELL)

    def rows_match() -> None:
        rows = box.evaluate(TOKEN_ROWS)
        assert len(rows) == N
        if same:  # the text: greedy decoding's, token by token
            chosen = "".join(r["text"][1] for r in rows).replace("\xa0", " ")
            assert chosen == shown(ast.literal_eval(greedy.group(1)))
        green = [f"background:{ACCEPTED_COLOUR}" in r["style"] for r in rows]
        red = [f"background:{REJECTED_COLOUR}" in r["style"] for r in rows]
        verdicts = [r["text"][5] for r in rows]  # the draft column
        assert [v == "accepted" for v in verdicts] == green
        assert [v.startswith("rejected: guessed ") for v in verdicts] == red
        assert sum(green) == accepted
        # cut into forwards after the prompt's row: greens, then a red or an uncoloured row
        per_forward: list[tuple[int, bool]] = []  # (accepted, ended with a rejected guess)
        run = 0
        for g, r in zip(green[1:], red[1:], strict=True):
            if g:
                run += 1
                continue
            per_forward.append((run, r))
            run = 0
        assert run == 0 and len(per_forward) == len(drafts)
        for (ok, rejected), n in zip(per_forward, drafts, strict=True):
            assert ok <= n and rejected == (ok < n), (per_forward, drafts)

    settle("the token view's drafts", rows_match)
    box.screenshot(path=str(artifacts / "gallery-04-token-view.png"))
