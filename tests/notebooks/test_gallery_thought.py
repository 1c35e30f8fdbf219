"""gallery/08-thought-structures.ipynb: a tree, a skeleton with spawned children and a graph
merged by splicing, on the real model, seen in the fork graph, the timeline and the page map."""

from __future__ import annotations

import re

from runner import IDLE_EXIT, wait_gone


def numbers(pattern: str, text: str) -> list[int]:
    match = re.search(pattern, text)
    assert match, (pattern, text)
    return [int(g) for g in match.groups()]


def test_thought_structures_notebook(run_notebook) -> None:  # type: ignore[no-untyped-def]
    nb = run_notebook("08-thought-structures.ipynb")

    tree = nb.text("tree")
    values = [float(v) for v in re.findall(r"^value (-?[\d.]+): ['\"].+['\"]$", tree, re.M)]
    assert len(values) == 2 and values[0] >= values[1], tree  # the two best, best first
    # the prompt, the two thoughts kept at depth 1 and the two best of their six children
    assert "5 files, 4 forks" in nb.text("tree-graph")

    skeleton = nb.text("skeleton")
    expanded = re.findall(r"^child (\d+) expanded ['\"](.+)['\"]:$", skeleton, re.M)
    assert 1 <= len(expanded) <= 3, skeleton
    pids = sorted(int(pid) for pid, _ in expanded)
    timeline = nb.text("skeleton-timeline")
    count, parent = numbers(r"(\d+) children under process (\d+)", timeline)
    assert count == len(expanded) and all(pid > parent for pid in pids)
    if len(pids) > 1:  # the children decoded in the same batches
        assert numbers(r"(\d+) batches carried the calls of more than one child", timeline)[0] > 0

    graph = nb.text("graph")
    assert len(re.findall(r"^branch \d: ['\"].*['\"]$", graph, re.M)) == 3, graph
    assert re.search(r"^merged: ['\"]", graph, re.M), graph
    spliced = [
        tuple(map(int, m))
        for m in re.findall(
            r"spliced (\d+) tokens: (\d+) pages by reference, (\d+) tokens copied", graph
        )
    ]
    assert len(spliced) == 3 and spliced[0][1] > 0 and spliced[0][2] == 0  # the first: no seam
    fed, once = numbers(r"tokens computed: (\d+); each token once: (\d+)", graph)
    assert fed == once  # the merge computed nothing again

    pages = nb.text("graph-pages")
    tokens, held, shared = numbers(r"merged: (\d+) tokens in (\d+) pages, (\d+) of them", pages)
    # the spliced branches, then the merge prompt and the aggregation written after them; the
    # first branch's pages are still shared, but for its partly filled last one (copied on write)
    assert tokens > sum(s[0] for s in spliced) and 0 < spliced[0][1] - 1 <= shared <= held
    assert "'shared'" in pages

    # the fork graph draws the merge: one splice edge from each branch into the merged file,
    # with the tokens each splice of the graph cell reported taking from it
    edges = re.findall(r"^splice edge: (\S+) -> (\S+), (\d+) tokens$", nb.text("graph-forks"), re.M)
    assert [(src.rsplit("/", 1)[1], dst.rsplit("/", 1)[1], int(n)) for src, dst, n in edges] == [
        (f"branch-{i}", "merged", s[0]) for i, s in enumerate(spliced)
    ], edges

    for tag in ("setup", "tree-graph", "skeleton-timeline", "graph-pages", "graph-forks"):
        outputs = nb.cell(tag).get("outputs", [])
        assert any(
            "application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs
        ), tag
    assert wait_gone(nb.engine_pid(), IDLE_EXIT + 30)
