"""gallery/02-fork-and-share.ipynb in Jupyter Notebook 7 (`python -m notebook`, its own server
and engine): the labextension starts there, the notebook runs, and each of the workbench's views
renders: plotly drew each figure (`.js-plotly-plot`, with its data) and the ipywidgets are there.

What the views show is checked against the engine in test_gallery_widgets.py (JupyterLab); here
the point is the other front end, so the checks are on the shape of what was drawn: the fork
graph's 7 files and 6 forks, the page map's heatmap, the KV tree's boxes, the token view's rows,
the timeline's lanes. One screenshot per view goes to artifacts/browser/ (`nb7-*.png`).
"""

from __future__ import annotations

import shutil
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
from lab_harness import D_OF, ROOT, TEXTS, Lab, open_notebook, settle

from workbench.widgets.timeline import BATCHES, COMPUTING, SIZES

FILES = ["prompt", *(f"sample-{i}" for i in range(N))]
PANEL_ID = "symphony-workbench-sidebar"  # the labextension's sidebar

# Notebook 7.6's own shortcuts plugin throws this on every page, with every labextension
# (this one, ipywidgets', plotly's, anywidget's) disabled too: not the workbench's
NOTEBOOK7_OWN_ERRORS = {"Cannot read properties of undefined (reading 'schema')"}

# which app this is, and what the labextension added to it
APP = """id => {
    const app = window.jupyterapp;
    const left = [...app.shell.widgets('left')].map(w => w.id);
    return {name: app.name, active: app.isPluginActivated(id), left,
            notebook: app.shell.currentWidget && app.shell.currentWidget.constructor.name};
}"""


def test_the_fork_and_share_notebook_renders_its_views_in_notebook_7(
    page: Any, notebook7: Lab, artifacts: Path
) -> None:
    shutil.copytree(ROOT / "gallery", notebook7.root / "gallery", dirs_exist_ok=True)
    errors: list[str] = []  # what the page threw or logged as an error
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    open_notebook(page, notebook7, NOTEBOOK)
    app = page.evaluate(APP, "symphony-workbench:plugin")
    assert app["name"] == "Jupyter Notebook", app  # Notebook 7's app, not JupyterLab's
    assert app["active"] and PANEL_ID in app["left"], app  # the labextension's sidebar
    run_all(page)

    # the fork graph: a node per file (7), a line and a label per fork (6)
    graph = view(page, GRAPH_CELL)

    def graph_drawn() -> None:
        traces = figure(graph, *["scatter"] * 5)["traces"]
        lines, labels, nodes, _cached, _spliced = traces
        assert sorted(n.rsplit("/", 1)[1] for n in nodes["customdata"]) == FILES
        assert len(lines["x"]) == 3 * N and len(labels["text"]) == N
        svg = graph.locator(".js-plotly-plot .scatterlayer .trace")
        assert svg.count() in (3, 4, 5)  # (the prefix cache's and the splices' lines: none here)
        assert len(svg.nth(0).evaluate(D_OF, "path.js-line")) == N
        assert len(svg.nth(1).evaluate(TEXTS, ".textpoint text")) == N
        assert sorted(svg.nth(2).evaluate(TEXTS, ".textpoint text")) == FILES

    settle("the fork graph", graph_drawn)
    graph.screenshot(path=str(artifacts / "nb7-fork-graph.png"))

    # the page map: a heatmap of the pool's pages, the prompt's full pages held by all 7 files
    page_map = view(page, PAGES_CELL)

    def pages_drawn() -> None:
        (heat,) = figure(page_map, "heatmap")["traces"]
        drawn = [c for row in heat["z"] for c in row if c is not None]
        assert len(drawn) == 256 and 6 in drawn, drawn  # --SymphonyWorkbench.num_pages=256
        assert page_map.locator(".js-plotly-plot .heatmaplayer image").count() == 1
        line = page_map.locator(".widget-html-content", has_text="tokens per page").inner_text()
        assert "shared" in line and "7 files" in line, line

    settle("the page map", pages_drawn)
    page_map.screenshot(path=str(artifacts / "nb7-page-map.png"))

    # the KV tree: the directory and its 7 files as an icicle, named; sample-0's pages below it
    tree = view(page, TREE_CELL)

    def tree_drawn() -> None:
        (icicle,) = figure(tree, "icicle")["traces"]
        assert set(FILES) <= set(icicle["labels"]), icicle["labels"]
        slices = tree.evaluate(TEXTS, ".trace.icicle g.slice text.slicetext")
        assert sorted(slices) == sorted(["fork-demo", *FILES]), slices

    settle("the KV tree", tree_drawn)
    chosen = tree.locator(".widget-html-content", has_text="sample-0:")
    assert chosen.locator("span[title^='page ']").count() > 0
    tree.screenshot(path=str(artifacts / "nb7-kv-tree.png"))

    # the token view: a header and a row per step of sample 0
    steps = view(page, LIP_CELL)

    def steps_drawn() -> None:
        assert steps.locator("table tr").count() == 1 + STEPS
        probs = steps.evaluate(TEXTS, "table tr td:nth-child(3)")
        assert len(probs) == STEPS and all(0 < float(p) <= 1 for p in probs), probs

    settle("the token view", steps_drawn)
    steps.screenshot(path=str(artifacts / "nb7-token-view.png"))

    # the timeline (shown twice, filtered to the LIP's pid by the last cell): its lanes
    doc = notebook7.get("processes?exited=1000")
    (lip,) = [p for p in doc["processes"] if p["notebook"] == NOTEBOOK]
    lanes = ["batches", f"{lip['pid']} parallel-sampling"]
    timelines = [view(page, TIMELINE_CELL), view(page, TIMELINE_AGAIN_CELL)]

    def timeline_drawn(box: Any) -> None:
        fig = figure(box, *["bar"] * 5, "scatter", "scatter")
        assert fig["categories"] == lanes, fig["categories"]
        ticks = box.evaluate(TEXTS, ".subplot.xy .yaxislayer-above .ytick text")
        assert sorted(ticks) == sorted(lanes), ticks
        traces = fig["traces"]
        computing, batches, sizes = (traces[i] for i in (COMPUTING, BATCHES, SIZES))
        assert computing["x"] and batches["x"] and max(sizes["y"]) > 1, fig

    for box in timelines:
        assert box.locator(".widget-text input").input_value() == str(lip["pid"])
        settle("the timeline", lambda box=box: timeline_drawn(box))
    timelines[1].screenshot(path=str(artifacts / "nb7-timeline.png"))

    for box in (graph, page_map, tree, *timelines):  # no view says it failed or stopped updating
        assert box.locator(":scope > .widget-html").last.inner_text().strip() == ""
    assert [e for e in errors if e not in NOTEBOOK7_OWN_ERRORS] == []
