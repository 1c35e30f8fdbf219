"""Live views of the engine for notebooks: ipywidgets and plotly `FigureWidget`s, no custom build.

    from workbench.widgets import KVTreeView, ForkGraphView, PageMapView, TimelineView, TokenView
    client = await workbench.connect()
    TimelineView(client)                   # live while LIPs run; filter by pid in its header
    ForkGraphView(client, path=home)       # files under a path
    PrefixView([a, b], client)             # why a prefix was or was not shared

Each view reads the engine through the public client API only (`walk`, `pages`, `read`,
`trace`, `ps`), as the client's user, or as a process when given a LIP (then it sees that
process's /proc files too). It polls on the kernel's event loop and stops when closed;
`await view.refresh()` updates it once. What a view draws is computed by the pure functions of
`kv_data`, `trace_data` and `token_data` (`view.data` holds the latest), so tests check the
data without a browser.
"""

from __future__ import annotations

from workbench.widgets.fork_graph import ForkGraphView
from workbench.widgets.kv_tree import KVTreeView
from workbench.widgets.live import LiveView, Source
from workbench.widgets.page_map import PageMapView
from workbench.widgets.prefix_view import PrefixView
from workbench.widgets.timeline import TimelineComparison, TimelineView
from workbench.widgets.token_view import TokenView

__all__ = [
    "ForkGraphView",
    "KVTreeView",
    "LiveView",
    "PageMapView",
    "PrefixView",
    "Source",
    "TimelineComparison",
    "TimelineView",
    "TokenView",
]
