"""gallery/09-sinks-and-windows.ipynb: an attention sink on the real model, dropping against
hiding: flat pages against growing ones, the same text and logits, what the model still sees."""

from __future__ import annotations

import ast
import re

from runner import IDLE_EXIT, wait_gone

SINK, WINDOW, TOKENS = 4, 48, 96


def literal(pattern: str, text: str) -> object:
    match = re.search(pattern, text)
    assert match, (pattern, text)
    return ast.literal_eval(match.group(1))


def test_sinks_and_windows_notebook(run_notebook) -> None:  # type: ignore[no-untyped-def]
    nb = run_notebook("09-sinks-and-windows.ipynb")

    page = int(re.search(r"pages of (\d+) tokens", nb.text("setup")).group(1))  # type: ignore[union-attr]
    sinks = nb.text("sinks")
    dropping = literal(r"pages before each drop, dropping: (\[.*\])", sinks)
    hiding = literal(r"pages before each drop, hiding: +(\[.*\])", sinks)
    bound = -(-(SINK + WINDOW + page) // page)  # the sink, the window and one chunk
    assert isinstance(dropping, list) and len(dropping) >= 2 and set(dropping) == {bound}
    assert isinstance(hiding, list) and len(hiding) == len(dropping)
    assert hiding == sorted(hiding) and hiding[-1] > hiding[0]  # hiding keeps every page
    left = int(re.search(r"(\d+) tokens left attention", sinks).group(1))  # type: ignore[union-attr]
    assert left == page * len(dropping) and "the same text: True" in sinks
    diff = float(re.search(r"next logits: ([\d.e+-]+)", sinks).group(1))  # type: ignore[union-attr]
    assert diff < 1e-3  # dropped tokens have no effect beyond hiding them

    pages = nb.text("pages")
    files = {
        name: (int(t), int(p), int(h))
        for name, t, p, h in re.findall(
            r"^(\w+): (\d+) tokens in (\d+) pages, (\d+) hidden", pages, re.M
        )
    }
    assert files["drop"][0] + left == files["hide"][0] and files["hide"][2] == left
    assert files["drop"][1] < files["hide"][1] and files["drop"][2] == 0

    sees = nb.text("sees")
    kept, total = (int(g) for g in re.search(r"attends (\d+) of (\d+) tokens", sees).groups())  # type: ignore[union-attr]
    assert (kept, total) == (files["drop"][0], files["hide"][0])
    assert "the question is still there: False" in sees
    outputs = nb.cell("pages").get("outputs", [])
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    assert wait_gone(nb.engine_pid(), IDLE_EXIT + 30)
