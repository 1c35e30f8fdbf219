"""gallery/04-speculative-decoding.ipynb: prompt-lookup drafts and a draft LIP; greedy tokens,
fewer forwards."""

from __future__ import annotations

import re

from runner import IDLE_EXIT, wait_gone

N = 40


def test_speculative_decoding_notebook(run_notebook) -> None:  # type: ignore[no-untyped-def]
    nb = run_notebook("04-speculative-decoding.ipynb")

    assert f"greedy: {N} tokens in {N} forwards" in nb.text("greedy")
    spec = nb.text("speculative")
    match = re.search(r"speculative: (\d+) tokens in (\d+) forwards; (\d+) of (\d+) drafted", spec)
    assert match, spec
    tokens, forwards, accepted, drafted = (int(g) for g in match.groups())
    assert tokens == N and 0 < accepted <= drafted
    assert forwards == N - accepted  # every accepted draft token is a forward not made
    assert "the same tokens as greedy decoding: True" in spec, spec
    view = re.search(
        r"the token view: (\d+) tokens, (\d+) draft tokens accepted, (\d+) rejected", spec
    )
    assert view, spec
    shown, green, red = (int(g) for g in view.groups())
    assert shown == tokens and green == accepted  # a row per token, each accepted one green
    assert red < forwards  # at most one rejected guess per verifying forward
    assert (red > 0) == (accepted < drafted)  # a wrong guess shows red
    assert red > 0 and green > 0  # the schedule's next day is a guess the model refuses
    outputs = nb.cell("speculative").get("outputs", [])
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    drafted = nb.text("drafted")  # a draft LIP, a child process drafting with the same model
    match = re.search(
        r"draft LIP: (\d+) tokens in (\d+) verifying forwards and (\d+) drafting forwards", drafted
    )
    assert match, drafted
    tokens, verifying, drafting = (int(g) for g in match.groups())
    assert tokens == N and verifying < N and drafting > 0
    assert "the same tokens as greedy decoding: True" in drafted, drafted
    assert wait_gone(nb.engine_pid(), IDLE_EXIT + 30)
