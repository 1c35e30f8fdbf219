"""gallery/04-speculative-decoding.ipynb: prompt-lookup drafts; greedy tokens, fewer forwards."""

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
    assert wait_gone(nb.engine_pid(), IDLE_EXIT + 30)
