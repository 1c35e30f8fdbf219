"""gallery/02-fork-and-share.ipynb in JupyterLab: each of the workbench's views renders in the page
and shows what the engine reports.

The notebook runs from a copy in the server's root. Then, for each view, what the browser drew
(plotly's figure on its `.js-plotly-plot` element, `gd.data` and `gd._fullLayout`, and the SVG
plotly made of it; the HTML of the ipywidgets) is compared with the engine's own answers, asked
here through a `SyncClient` on the server's connection file and the server's REST endpoints.
The views poll the engine, so each comparison is retried until it holds (or time runs out).
One screenshot per view goes to artifacts/browser/.
"""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from fork_and_share import (
    GRAPH_CELL,
    LIP_CELL,
    NOTEBOOK,
    PAGES_CELL,
    STEPS,
    TIMELINE_AGAIN_CELL,
    TIMELINE_CELL,
    TREE_CELL,
    N,
    figure,
    run_all,
    view,
)
from lab_harness import (
    D_OF,
    ROOT,
    TEXTS,
    USER,
    Engine,
    Lab,
    open_notebook,
    settle,
    shown,
    tokenizer_of,
)

from workbench.widgets.timeline import BATCHES, COMPUTING, SIZES

DEMO = f"/home/{USER}/fork-demo"
PROMPT = f"{DEMO}/prompt"


def test_the_fork_and_share_notebooks_views_show_what_the_engine_reports(
    page: Any, lab: Lab, artifacts: Path
) -> None:
    shutil.copytree(ROOT / "gallery", lab.root / "gallery", dirs_exist_ok=True)
    open_notebook(page, lab, NOTEBOOK)
    run_all(page)

    engine = Engine(lab)
    stats = {s.path: s for s in engine("kv.walk", path=DEMO)}
    prompt = stats[PROMPT]
    size = engine.info["page_size"]
    assert sorted(stats) == [PROMPT] + [f"{DEMO}/sample-{i}" for i in range(N)]

    # ---- the fork graph: a node per file, an edge per fork labelled with the shared prefix -----
    graph = view(page, GRAPH_CELL)
    tokens = {p: engine("kv.read", path=p, start=0, stop=None) for p in stats}
    forks = {
        (s.parent, p): _prefix(tokens[s.parent], tokens[p]) for p, s in stats.items() if s.parent
    }
    assert prompt.parent is None and len(forks) == N
    assert set(forks.values()) == {prompt.tokens}  # each fork holds the prompt, then its own

    def graph_matches() -> None:
        lines, labels, nodes, cached, spliced = figure(graph)["traces"]
        assert not cached.get("x")  # forks only: no page came from the prefix cache
        assert not spliced.get("x")  # and nothing was spliced
        xy_ids = nodes["x"], nodes["y"], nodes["customdata"]
        at = {(x, y): node for x, y, node in zip(*xy_ids, strict=True)}
        assert sorted(nodes["customdata"]) == sorted(stats)
        xs, ys = lines["x"], lines["y"]
        drawn = {(at[xs[i], ys[i]], at[xs[i + 1], ys[i + 1]]) for i in range(0, len(xs), 3)}
        assert len(xs) == 3 * len(forks) and drawn == set(forks)
        assert sorted(labels["text"]) == sorted(str(n) for n in forks.values())
        # plotly's SVG: a marker per file with its name, a line and a label per fork (and the
        # prefix cache's dotted lines and the splices' dashed ones, none here: plotly may leave
        # those traces out)
        svg = graph.locator(".js-plotly-plot .scatterlayer .trace")
        assert svg.count() in (3, 4, 5)
        segments = svg.nth(0).evaluate(D_OF, "path.js-line")  # one path per edge
        assert len(segments) == len(forks) and all(d.count("M") == 1 for d in segments), segments
        edge_labels = svg.nth(1).evaluate(TEXTS, ".textpoint text")
        assert sorted(edge_labels) == sorted(str(n) for n in forks.values())
        assert svg.nth(2).locator(".point").count() == len(stats)
        names = svg.nth(2).evaluate(TEXTS, ".textpoint text")
        assert sorted(names) == sorted(p.rsplit("/", 1)[1] for p in stats)

    settle("the fork graph", graph_matches)
    # the prompt is selected: its details name every fork with the pages they share
    details = graph.locator(".widget-html-content", has_text=f"{PROMPT}:")
    text = details.inner_text()
    assert f"{PROMPT}: {prompt.num_pages} pages, {prompt.num_shared_pages} shared with" in text, (
        text
    )
    for other, n in prompt.shared_with.items():
        assert f"{other} ({n})" in text, (other, n, text)
    assert details.locator("span[title^='page ']").count() == prompt.num_pages
    graph.screenshot(path=str(artifacts / "gallery-02-fork-graph.png"))

    # ---- the page map: the pool's pages coloured by state; counts as stat_engine says ---------
    page_map = view(page, PAGES_CELL)

    def pages_match() -> None:
        pm = engine("kv.pages")
        st = engine("stat_engine")
        assert pm.swapped_total == 0 and st["pages_total"] == len(pm.refcount)
        # cells: the filter (our directory) keeps pages one of its files holds; free pages stay
        # free (0) and cached ones cached (9), the other files' pages are grey (8)
        cached = set(pm.cached)
        want = [
            (9 if p in cached else 0)
            if not n
            else min(n, 6)
            if any(o.startswith(DEMO + "/") for o in files)
            else 8
            for p, (n, files) in enumerate(zip(pm.refcount, pm.files, strict=True))
        ]
        (heat,) = figure(page_map)["traces"]
        drawn = [c for row in heat["z"] for c in row if c is not None]
        assert drawn == want, Counter(drawn) - Counter(want) or Counter(want) - Counter(drawn)
        full = prompt.tokens // size  # the prompt's full pages: held by all N + 1 files
        assert [pm.refcount[p] for p in prompt.page_table[:full]] == [N + 1] * full
        assert Counter(drawn)[6] == full
        # the counts line above the grid
        line = page_map.locator(".widget-html-content", has_text="tokens per page").inner_text()
        counts = {k: int(v) for k, v in re.findall(r"(free|cached|private|shared|out) (\d+)", line)}
        shared_by = Counter(n for n in pm.refcount if n > 1)
        assert counts == {
            "free": st["pages_free"],
            **({"cached": st["pages_cached"]} if st["pages_cached"] else {}),
            "private": sum(n == 1 for n in pm.refcount),
            "shared": sum(shared_by.values()),
            "out": st["pages_swapped"],
        }, line
        assert counts["private"] + counts["shared"] == st["pages_used"]
        by = dict(re.findall(r"(\d+) files: (\d+)", line))
        assert {int(k): int(v) for k, v in by.items()} == dict(shared_by), line

    settle("the page map", pages_match)
    page_map.screenshot(path=str(artifacts / "gallery-02-page-map.png"))

    # ---- the KV file tree: the directory and its files as an icicle; sample-0's pages ---------
    tree = view(page, TREE_CELL)
    sample0 = stats[f"{DEMO}/sample-0"]

    def tree_matches() -> None:
        (icicle,) = figure(tree)["traces"]
        about = zip(icicle["labels"], icicle["parents"], icicle["values"], strict=True)
        nodes = dict(zip(icicle["ids"], about, strict=True))
        files = {i for i in nodes if i.startswith(DEMO + "/")}
        assert files == set(stats)
        for path, st in stats.items():
            assert nodes[path] == (path.rsplit("/", 1)[1], DEMO, st.num_pages), path
        assert icicle["level"] == DEMO
        # plotly's SVG: the directory (zoomed in on) and a box per file, named
        slices = tree.evaluate(TEXTS, ".trace.icicle g.slice text.slicetext")
        assert sorted(slices) == sorted(["fork-demo", *(p.rsplit("/", 1)[1] for p in stats)])

    settle("the KV tree", tree_matches)
    chosen = tree.locator(".widget-html-content", has_text=f"{sample0.path}:")
    head = f"{sample0.path}: {sample0.tokens} tokens, {sample0.num_pages} pages, "
    assert head + f"{sample0.num_shared_pages} shared" in chosen.inner_text()
    runs = chosen.locator("span[title^='page ']")
    assert runs.count() == sample0.num_pages
    for i in range(sample0.num_shared_pages):  # the prompt's full pages: shared with all the others
        title = runs.nth(i).get_attribute("title") or ""
        assert all(o in title for o in stats if o != sample0.path), title
    tree.screenshot(path=str(artifacts / "gallery-02-kv-tree.png"))

    # ---- the token view: sample 0's steps, the tokens it appended to its fork ------------------
    steps = view(page, LIP_CELL)
    tokenizer = tokenizer_of(engine)
    appended = tokens[sample0.path][prompt.tokens :]
    assert len(appended) == STEPS
    want = [shown(tokenizer.decode([t], skip_special_tokens=False)) for t in appended]

    def steps_match() -> None:
        assert steps.locator("table tr").count() == 1 + STEPS  # a header, then a row per step
        chosen = steps.evaluate(TEXTS, "table tr td:nth-child(2)")
        assert [t.replace("\xa0", " ") for t in chosen] == want
        probs = steps.evaluate(TEXTS, "table tr td:nth-child(3)")
        ranks = steps.evaluate(TEXTS, "table tr td:nth-child(4)")
        assert all(0 < float(p) <= 1 for p in probs), probs
        assert all(1 <= int(r) <= 20 for r in ranks), ranks  # drawn from the top 20

    settle("the token view", steps_match)
    steps.screenshot(path=str(artifacts / "gallery-02-token-view.png"))

    # ---- the timeline: filtered to the notebook's LIP, its lane and the batches it was in -----
    doc = lab.get("processes?exited=1000")
    ran = [p for p in doc["processes"] if p["notebook"] == NOTEBOOK]
    assert [p["name"] for p in ran] == ["parallel-sampling"], ran
    pid = ran[0]["pid"]
    mine = [
        e.data
        for e in engine("trace", kinds=["batch"], limit=100_000)
        if pid in e.data.get("pids", ())
    ]
    timelines = [view(page, TIMELINE_CELL), view(page, TIMELINE_AGAIN_CELL)]

    def timeline_matches(box: Any, lanes: list[str]) -> dict[str, Any]:
        fig = figure(box)
        assert fig["categories"] == ["batches", *lanes]
        ticks = box.evaluate(TEXTS, ".subplot.xy .yaxislayer-above .ytick text")
        assert sorted(ticks) == sorted(["batches", *lanes])
        return fig

    for box in timelines:  # both show the one widget, filtered by pid in the last cell
        assert box.locator(".widget-text input").input_value() == str(pid)
        fig = settle(
            "the timeline", lambda box=box: timeline_matches(box, [f"{pid} {ran[0]['name']}"])
        )
        traces = fig["traces"]
        computing, batches, sizes = (traces[i] for i in (COMPUTING, BATCHES, SIZES))
        assert len(batches["x"]) == len(mine)  # a bar per batch the LIP was in
        assert sizes["y"] == [len(d["sizes"]) for d in mine]
        assert max(sizes["y"]) > 1  # the forks' decodes ran in the same forward passes
        lip = next(p for p in engine("ps") if p.pid == pid)
        assert len(computing["x"]) == lip.calls  # a bar per call
    timelines[1].screenshot(path=str(artifacts / "gallery-02-timeline.png"))

    # no pid: a lane for every process in the trace, the notebook's LIP among them
    pid_box = timelines[1].locator(".widget-text input")
    pid_box.fill("")
    pid_box.press("Enter")
    names = {p.pid: p.name for p in engine("ps")}  # every process, the exited ones too

    def every_lane() -> None:
        for box in timelines:
            timeline_matches(box, [f"{p} {name}" for p, name in sorted(names.items())])

    settle("the timeline of every process", every_lane)
    timelines[0].screenshot(path=str(artifacts / "gallery-02-timeline-all.png"))

    for box in (graph, page_map, tree, *timelines):  # no view says it failed or stopped updating
        assert box.locator(":scope > .widget-html").last.inner_text().strip() == ""


def _prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n
