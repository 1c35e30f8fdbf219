"""gallery/02-fork-and-share.ipynb: parallel sampling with fork, seen in the workbench's views."""

from __future__ import annotations

import ast
import re
from typing import Any

from runner import IDLE_EXIT, wait_gone

N = 6


def numbers(pattern: str, text: str) -> list[int]:
    match = re.search(pattern, text)
    assert match, (pattern, text)
    return [int(g) for g in match.groups()]


def literal(pattern: str, text: str) -> Any:
    """The Python literal a notebook printed where pattern's group matches."""
    match = re.search(pattern, text)
    assert match, (pattern, text)
    return ast.literal_eval(match.group(1))


def test_fork_and_share_notebook(run_notebook) -> None:  # type: ignore[no-untyped-def]
    nb = run_notebook("02-fork-and-share.ipynb")

    sample = nb.text("sample")
    assert re.search(r"LIP \d+ \(parallel-sampling\) exited", sample), sample
    texts = re.findall(r"^sample-(\d+): \.\.\.(.+)$", sample, re.M)
    assert [int(i) for i, _ in texts] == list(range(N))
    assert len({t for _, t in texts}) > 1  # different continuations of one prompt

    share = nb.text("share")
    forks, tokens, num_pages, size = numbers(
        r"(\d+) forks of a (\d+)-token prompt in (\d+) pages of (\d+)", share
    )
    assert forks == N and num_pages == -(-tokens // size) and tokens > size
    shared = literal(r"each fork shares: (\[.*\])", share)
    assert shared == [tokens // size] * N  # every full prompt page; the partial one was copied

    graph = nb.text("graph")
    assert f"{N + 1} files, {N} forks; shared prefixes: [{tokens}] tokens" in graph
    assert f"the prompt shares pages with {N} files" in graph

    counts = literal(r"pages: (\{.*\})", nb.text("pages"))
    by = literal(r"shared by n files -> pages: (\{.*\})", nb.text("pages"))
    assert counts["shared"] >= tokens // size and by.get(N + 1, 0) == tokens // size

    tree = nb.text("tree")
    runs = literal(r"shared with other files: (\[.*\])", tree)
    assert runs[: tokens // size] == [N] * (tokens // size) and runs[-1] == 0

    timeline = nb.text("timeline")
    batches, biggest, many = numbers(r"(\d+) batches, up to (\d+) calls each, (\d+) with", timeline)
    assert biggest > 1 and many > 0  # the forks' decodes ran in the same forward passes
    assert batches <= 1 + N * 24  # the prompt, then at most one batch per decode step

    for tag in ("views", "graph", "pages", "tree", "timeline"):  # each shows a widget
        outputs = nb.cell(tag).get("outputs", [])
        assert any(
            "application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs
        ), tag
    assert wait_gone(nb.engine_pid(), IDLE_EXIT + 20)
