"""The KV file tree: the namespace as an icicle, and one file's tokens page by page."""

from __future__ import annotations

import html
from typing import Any, NamedTuple

import ipywidgets as widgets
import plotly.graph_objects as go

from engine.wire.records import FileStat, PageMap
from workbench.widgets.kv_data import Filter, PageRun, TreeNode, describe, file_pages, tree_nodes
from workbench.widgets.live import TOP_MARGIN, LiveView, fit, run_soon
from workbench.widgets.style import (
    FONT,
    FREE_COLOUR,
    PRIVATE_COLOUR,
    legend,
    palette,
    piece,
    shared_colour,
)


class KVFetch(NamedTuple):
    stats: list[FileStat]
    pages: PageMap


class KVTreeView(LiveView):
    """Every file the reader may read, by directory; select one to see its tokens and pages.

    Each file's box is as wide as its pages and coloured by how many of them are shared; hover
    for its tokens, pages, which files share them, owner and mode.
    """

    title = "KV files"

    def body(self) -> list[widgets.Widget]:
        # above the boxes: plotly's mode bar, then the path of the directory shown
        margin = dict(l=4, r=4, t=TOP_MARGIN + 24, b=4)
        self.figure = fit(
            go.FigureWidget(layout=go.Layout(height=360, margin=margin, uirevision="tree"))
        )
        self.figure.add_icicle(ids=[], labels=[], parents=[], branchvalues="remainder")
        self.figure.data[0].on_click(self._on_click)
        self.file_box = widgets.Dropdown(options=[""], value="", description="file")
        self.file_box.layout.width = "480px"
        self.file_box.observe(lambda _: self.show_file(), names="value")
        self.tokens_html = widgets.HTML()
        self.runs: list[PageRun] = []  # the selected file's pages, as shown
        return [self.figure, self.file_box, self.tokens_html]

    async def fetch(self) -> KVFetch:
        return KVFetch(await self.source.walk(), await self.source.pages())

    def compute(self, fetched: KVFetch, flt: Filter) -> list[TreeNode]:
        return tree_nodes(fetched.stats, flt)

    def draw(self, nodes: list[TreeNode]) -> None:
        with self.figure.batch_update():
            t = self.figure.data[0]
            t.ids = [n.id for n in nodes]
            t.parents = [n.parent for n in nodes]
            t.labels = [n.label for n in nodes]
            t.values = [_size(n) for n in nodes]
            t.marker.colors = [_colour(n) for n in nodes]
            t.hovertext = [_hover(n) for n in nodes]
            t.hoverinfo = "text"
            top = self.filter.path.rstrip("/") or "/"
            t.level = top if any(n.id == top and n.kind == "dir" for n in nodes) else ""
        files = [n.id for n in nodes if n.kind == "file"]
        current = self.file_box.value
        self.file_box.options = ["", *files]
        self.file_box.value = current if current in files else ""
        self.show_file()

    def select(self, path: str) -> None:
        """Show this file's tokens (as clicking it in the tree does)."""
        self.file_box.value = path

    def show_file(self) -> None:
        path = self.file_box.value
        if not path or self.fetched is None:
            self.runs, self.tokens_html.value = [], ""
            return
        run_soon(self.load_file(path))

    async def load_file(self, path: str) -> list[PageRun]:
        """Read the file's tokens and show them cut at page boundaries, shared pages coloured."""
        fetched: KVFetch = self.fetched
        st = next((s for s in fetched.stats if s.path == path), None)
        if st is None:
            return []
        tokens = await self.source.read(path)
        pieces = [self.source.detokenize([t]) for t in tokens]
        self.runs = file_pages(st, tokens, pieces, fetched.pages)
        self.tokens_html.value = render_runs(st, self.runs)
        return self.runs

    def _on_click(self, trace: Any, points: Any, selector: Any) -> None:
        for i in points.point_inds:
            node_id = trace.ids[i]
            if node_id in self.file_box.options:
                self.select(node_id)


def _size(n: TreeNode) -> int:
    if n.kind == "file":
        return max(n.num_pages, 1)
    return 0 if n.files else 1  # an empty directory still shows


def _colour(n: TreeNode) -> str:
    if n.kind == "dir":
        return FREE_COLOUR
    if n.num_shared_pages == 0:
        return PRIVATE_COLOUR
    return shared_colour(2 if n.num_shared_pages < n.num_pages else 3)


def _hover(n: TreeNode) -> str:
    if n.stat is not None:
        return html.escape(describe(n.stat)).replace("\n", "<br>")
    held = f"{n.num_pages} pages ({n.num_shared_pages} shared)"
    return f"{n.id}<br>{n.files} files, {n.tokens} tokens, {held}"


def render_runs(st: FileStat, runs: list[PageRun]) -> str:
    """The file's tokens with a bar at each page boundary, shared pages coloured by sharers."""
    colours: dict[tuple[str, ...], str] = {}
    spans = []
    for r in runs:
        if r.sharers and r.sharers not in colours:
            colours[r.sharers] = palette(len(colours))
        bg = colours.get(r.sharers, "transparent")
        who = ", ".join(r.sharers) or "no other readable file"
        tip = f"page {r.entry} (pool page {r.page}), tokens {r.start}..: shared with {who}"
        if r.unseen:
            tip += f" and {r.unseen} file(s) you may not read"
        text = "".join(piece(p) for p in r.pieces)
        spans.append(
            f'<span title="{html.escape(tip)}" style="background:{bg};'
            f'border-left:2px solid #888;padding:0 2px">{text}</span>'
        )
    keys = [(c, "shared with " + ", ".join(s)) for s, c in colours.items()]
    held = f"{st.num_pages} pages, {st.num_shared_pages} shared"
    head = f"{html.escape(st.path)}: {st.tokens} tokens, {held}"
    return (
        f'<div style="{FONT}"><div>{head}{legend(keys)}</div>'
        f'<div style="line-height:1.8;word-break:break-all">{"".join(spans)}</div></div>'
    )
