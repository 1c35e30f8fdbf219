"""gallery/02-fork-and-share.ipynb in a browser: its cells, running it, and finding its views.

Shared by the JupyterLab test (what the views show, against the engine) and the Notebook 7 one
(that the views render in the other front end).
"""

from __future__ import annotations

from typing import Any

from lab_harness import FIGURE, cell_outputs, output_errors, output_text, run_command, wait_idle

NOTEBOOK = "gallery/02-fork-and-share.ipynb"
N, STEPS = 6, 24  # the notebook's forks, and the steps each decodes

# the cells, by a piece of their source
TIMELINE_CELL = "timeline = TimelineView(client)"
LIP_CELL = "%%lip --name parallel-sampling"
GRAPH_CELL = "graph = ForkGraphView(client"
PAGES_CELL = "pages = PageMapView(client"
TREE_CELL = "tree = KVTreeView(client"
TIMELINE_AGAIN_CELL = "await timeline.refresh()"


def run_all(page: Any) -> list[dict[str, Any]]:
    """Run every cell of the open notebook; its cells' outputs, once all ran without an error."""
    run_command(page, "notebook:run-all-cells")
    wait_idle(page, timeout=150)
    cells = cell_outputs(page)
    assert not output_errors(cells), output_errors(cells)
    assert all(c["count"] for c in cells), [c["source"][:40] for c in cells if not c["count"]]
    lip_out = output_text(next(c for c in cells if c["source"].startswith(LIP_CELL))["outputs"])
    assert "(parallel-sampling) exited" in lip_out, lip_out
    return cells


def view(page: Any, needle: str) -> Any:
    """The widget a cell displayed (the view's outer box), scrolled into sight."""
    cell = page.locator(".jp-Notebook .jp-CodeCell").filter(
        has=page.locator(".jp-InputArea", has_text=needle)
    )
    box = cell.locator(".jp-OutputArea-output > .widget-vbox")
    box.first.wait_for(state="attached")
    assert box.count() == 1, needle
    box.scroll_into_view_if_needed()
    return box


def figure(box: Any, *types: str) -> dict[str, Any]:
    """The view's plotly figure, once plotly drew it with data (traces of these types, if given)
    as wide as the output (plotly draws at 700 px when the page has not shown it yet)."""
    plot = box.locator(".js-plotly-plot")
    plot.wait_for(state="attached")
    fig = plot.evaluate(FIGURE)
    assert fig["drawn"] and fig["traces"], fig
    if types:
        assert [t.get("type") for t in fig["traces"]] == list(types), fig
    assert fig["room"] > 800 and abs(fig["width"] - fig["room"]) <= 2, fig
    return fig
