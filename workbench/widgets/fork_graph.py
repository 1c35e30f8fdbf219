"""The fork graph: files as nodes, forks as edges labelled with the prefix they share, dotted
lines where automatic prefix sharing took one file's pages into another, and dashed ones where
`kv.splice` took one file's tokens into another (a merge)."""

from __future__ import annotations

import html
from typing import Any, NamedTuple

import ipywidgets as widgets
import plotly.graph_objects as go

from engine.wire.records import FileStat, PageMap
from workbench.widgets.kv_data import (
    Filter,
    ForkGraphData,
    ForkNode,
    describe,
    fork_graph,
    sharing,
    short_names,
)
from workbench.widgets.live import TOP_MARGIN, LiveView, Source, fit, set_height, zoomable
from workbench.widgets.style import (
    CACHED_COLOUR,
    FONT,
    GONE_COLOUR,
    PRIVATE_COLOUR,
    SPLICED_COLOUR,
    legend,
    shared_colour,
)

SELECTED_COLOUR = "#222222"


class ForkFetch(NamedTuple):
    stats: list[FileStat]
    pages: PageMap
    tokens: dict[str, list[int]]  # files in a fork: their token ids


class TokenCache:
    """Token ids of files, read again only when a file's stat says it changed."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[tuple, list[int]]] = {}

    async def tokens(self, source: Source, stats: list[FileStat]) -> dict[str, list[int]]:
        out = {}
        for st in stats:
            key = (st.created, st.tokens, st.page_table)
            hit = self._cache.get(st.path)
            if hit is None or hit[0] != key:
                hit = self._cache[st.path] = (key, await source.read(st.path))
            out[st.path] = hit[1]
        for gone in set(self._cache) - set(out):
            del self._cache[gone]
        return out


class ForkGraphView(LiveView):
    """Forks as a tree (a gone parent is grey); select a file to light up who shares its pages.

    A file with more than max_children forks shows one node for the rest: click it to expand.
    Zoom and pan with the plot's tools.
    """

    title = "Fork graph"

    def __init__(self, *args: Any, max_children: int = 12, **kwargs: Any) -> None:
        self.max_children = max_children
        self.expanded: set[str] = set()
        self.selected = ""
        self.highlight: dict[str, int] = {}  # node -> pages it shares with the selected file
        self._tokens = TokenCache()
        super().__init__(*args, **kwargs)

    def body(self) -> list[widgets.Widget]:
        self.figure = fit(zoomable(go.FigureWidget(layout=_layout(300))))
        self.figure.add_scatter(
            mode="lines", name="fork", line=dict(color="#999", width=1), hoverinfo="skip"
        )
        self.figure.add_scatter(
            mode="text", textposition="top center", hoverinfo="text", showlegend=False
        )
        self.figure.add_scatter(
            mode="markers+text", textposition="middle right", hoverinfo="text", showlegend=False
        )
        self.figure.data[2].on_click(self._on_click)
        self.figure.add_scatter(  # automatic prefix sharing: pages taken from the cache
            mode="lines",
            name="from the prefix cache",
            line=dict(color=CACHED_COLOUR, width=2, dash="dot"),
            hoverinfo="skip",
        )
        self.figure.add_scatter(  # kv.splice: tokens taken from another file (a merge)
            mode="lines+text",
            name="spliced into",
            line=dict(color=SPLICED_COLOUR, width=2, dash="dash"),
            textposition="bottom center",
            textfont=dict(color=SPLICED_COLOUR),
            hoverinfo="skip",
        )
        self.file_box = widgets.Dropdown(options=[""], value="", description="file")
        self.file_box.layout.width = "480px"
        self.file_box.observe(lambda _: self.select(self.file_box.value), names="value")
        self.collapse_button = widgets.Button(description="collapse all")
        self.collapse_button.on_click(lambda _: self._collapse())
        self.details = widgets.HTML()
        return [self.figure, widgets.HBox([self.file_box, self.collapse_button]), self.details]

    async def fetch(self) -> ForkFetch:
        stats = await self.source.walk()
        parents = {st.parent for st in stats if st.parent}
        forked = [st for st in stats if st.parent or set(st.names) & parents]
        return ForkFetch(
            stats, await self.source.pages(), await self._tokens.tokens(self.source, forked)
        )

    def compute(self, fetched: ForkFetch, flt: Filter) -> ForkGraphData:
        return fork_graph(fetched.stats, fetched.tokens, flt, self.max_children, self.expanded)

    def draw(self, graph: ForkGraphData) -> None:
        files = [n.id for n in graph.nodes if n.kind == "file"]
        if self.selected not in files:
            self.selected = ""
        selected = self._stat(graph, self.selected)
        self.highlight = sharing(selected, graph) if selected else {}
        pos = {n.id: (float(n.depth), -n.y) for n in graph.nodes}
        label = short_names(files)
        with self.figure.batch_update():
            ex, ey, lx, ly, ltext, lhover = _edges(graph, pos)
            self.figure.data[0].update(x=ex, y=ey)
            self.figure.data[1].update(x=lx, y=ly, text=ltext, hovertext=lhover)
            cx, cy = _cache_edges(graph, pos)
            self.figure.data[3].update(x=cx, y=cy)
            sx, sy, stext = _splice_edges(graph, pos)
            self.figure.data[4].update(x=sx, y=sy, text=stext)
            for i, lines in ((0, graph.edges), (3, graph.cached), (4, graph.spliced)):
                self.figure.data[i].showlegend = bool(lines)  # the kinds of line drawn
            self.figure.data[2].update(
                x=[pos[n.id][0] for n in graph.nodes],
                y=[pos[n.id][1] for n in graph.nodes],
                text=[_label(n, label) for n in graph.nodes],
                hovertext=[_hover(n) for n in graph.nodes],
                customdata=[n.id for n in graph.nodes],
                marker=dict(
                    size=14,
                    color=[self._colour(n) for n in graph.nodes],
                    line=dict(width=[3 if n.id == self.selected else 0 for n in graph.nodes]),
                ),
            )
            self.figure.layout.xaxis.range = _x_range(graph, label)
        set_height(self.figure, _height(graph))
        current = self.file_box.value
        self.file_box.options = ["", *files]
        self.file_box.value = current if current in files else ""
        self.details.value = self._details(selected)

    def select(self, path: str) -> None:
        """Light up the files that share pages with this one (as clicking its node does)."""
        if path == self.selected:
            return
        self.selected = path
        if self.file_box.value != path and path in self.file_box.options:
            self.file_box.value = path
        if self.data is not None:
            self.draw(self.data)

    def _on_click(self, trace: Any, points: Any, selector: Any) -> None:
        if self.data is None:
            return
        for i in points.point_inds:
            node: ForkNode = self.data.nodes[i]
            if node.kind == "collapsed":
                self.expanded.add(node.id.rsplit(" (+", 1)[0])
                self.redraw()
            elif node.kind == "file":
                self.select(node.id)

    def _collapse(self) -> None:
        self.expanded.clear()
        self.redraw()

    def _colour(self, n: ForkNode) -> str:
        if n.kind != "file":
            return GONE_COLOUR
        if n.id == self.selected:
            return SELECTED_COLOUR
        if n.id in self.highlight:
            return shared_colour(2 if len(self.highlight) < 2 else 3)
        return PRIVATE_COLOUR if not self.selected else "#9fb8d4"

    @staticmethod
    def _stat(graph: ForkGraphData, node_id: str) -> FileStat | None:
        return next((n.stat for n in graph.nodes if n.id == node_id), None)

    def _details(self, st: FileStat | None) -> str:
        if st is None:
            return f'<div style="{FONT}">select a file to see the pages it shares</div>'
        fetched: ForkFetch = self.fetched
        strip = page_strip(st, fetched.pages)
        shares = ", ".join(f"{html.escape(k)} ({v})" for k, v in self.highlight.items())
        return (
            f'<div style="{FONT}"><b>{html.escape(st.path)}</b>: {st.num_pages} pages, '
            f"{st.num_shared_pages} shared{' with ' + shares if shares else ''}"
            f"<div>{strip}</div></div>"
        )


def page_strip(st: FileStat, pm: PageMap) -> str:
    """The file's page table as a row of cells: private, or shared by n files (hover: who)."""
    cells = []
    counts: set[int] = set()
    for i, p in enumerate(st.page_table):
        n = pm.refcount[p] if p is not None else 1
        counts.add(n)
        files = [o for o in pm.files[p] if o not in st.names] if p is not None else []
        colour = PRIVATE_COLOUR if n <= 1 else shared_colour(n)
        tip = f"page {i} (pool page {p}): " + (", ".join(files) or "private")
        cells.append(
            f'<span title="{html.escape(tip)}" style="display:inline-block;width:14px;'
            f'height:14px;margin:1px;background:{colour}"></span>'
        )
    keys = [
        (PRIVATE_COLOUR, "private") if n <= 1 else (shared_colour(n), f"shared by {n} files")
        for n in sorted(counts)
    ]
    return "".join(cells) + legend(keys)


def _edges(
    graph: ForkGraphData, pos: dict[str, tuple[float, float]]
) -> tuple[list, list, list, list, list, list]:
    ex: list[float | None] = []
    ey: list[float | None] = []
    lx, ly, ltext, lhover = [], [], [], []
    for e in graph.edges:
        (x0, y0), (x1, y1) = pos[e.parent], pos[e.child]
        ex += [x0, x1, None]
        ey += [y0, y1, None]
        lx.append((x0 + x1) / 2)
        ly.append((y0 + y1) / 2)
        prefix = "?" if e.prefix is None else str(e.prefix)
        ltext.append(prefix)
        lhover.append(
            f"{html.escape(e.child)} forked from {html.escape(e.parent)}<br>"
            f"shared prefix: {prefix} tokens; {e.num_shared_pages} pages in common"
        )
    return ex, ey, lx, ly, ltext, lhover


def _cache_edges(
    graph: ForkGraphData, pos: dict[str, tuple[float, float]]
) -> tuple[list[float | None], list[float | None]]:
    """Dotted lines from each file to those that took cached pages from it."""
    cx: list[float | None] = []
    cy: list[float | None] = []
    for e in graph.cached:
        (x0, y0), (x1, y1) = pos[e.source], pos[e.file]
        cx += [x0, x1, None]
        cy += [y0, y1, None]
    return cx, cy


def _splice_edges(
    graph: ForkGraphData, pos: dict[str, tuple[float, float]]
) -> tuple[list[float | None], list[float | None], list[str]]:
    """Dashed lines from each file to those that spliced its tokens in, labelled at their
    middle with the tokens taken."""
    sx: list[float | None] = []
    sy: list[float | None] = []
    text: list[str] = []
    for e in graph.spliced:
        (x0, y0), (x1, y1) = pos[e.source], pos[e.file]
        sx += [x0, (x0 + x1) / 2, x1, None]
        sy += [y0, (y0 + y1) / 2, y1, None]
        text += ["", f"{e.tokens} spliced", "", ""]
    return sx, sy, text


def _label(n: ForkNode, short: Any) -> str:
    if n.kind == "collapsed":
        return f"+{len(n.hidden)} more (click)"
    return short(n.id) if n.kind == "file" else f"{n.id} (not shown)"


def _hover(n: ForkNode) -> str:
    if n.stat is not None:
        return html.escape(describe(n.stat)).replace("\n", "<br>")
    if n.kind == "collapsed":
        return f"{len(n.hidden)} more forks:<br>" + "<br>".join(map(html.escape, n.hidden[:20]))
    return f"{html.escape(n.id)}: gone, filtered out, or not readable by you"


def _x_range(graph: ForkGraphData, short: Any, width: int = 650) -> list[float]:
    """Room on the right for the deepest nodes' labels (about 7 px a character)."""
    depth = max((n.depth for n in graph.nodes), default=0)
    chars = max((len(_label(n, short)) for n in graph.nodes if n.depth == depth), default=0)
    share = min(0.6, chars * 7 / width)  # of the plot's width
    span = depth + 0.6
    return [-0.3, depth + 0.3 + share * span / (1 - share)]


def _height(graph: ForkGraphData) -> int:
    leaves = max((n.y for n in graph.nodes), default=0.0) + 1
    return int(min(800, max(260, TOP_MARGIN + 70 + 28 * leaves)))


def _layout(height: int) -> go.Layout:
    axis = dict(showgrid=False, zeroline=False, showticklabels=False)
    return go.Layout(
        height=height,
        margin=dict(l=10, r=10, t=TOP_MARGIN, b=10),
        showlegend=True,  # the kinds of line drawn: fork, from the prefix cache, spliced into
        legend=dict(orientation="h", x=0, y=0, yanchor="top", font=dict(size=10)),
        xaxis=dict(axis, title=None),
        yaxis=axis,
        dragmode="pan",
        uirevision="forks",
    )
