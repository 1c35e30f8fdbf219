"""The page map: the pool as a grid of pages coloured by state, the files behind each on hover."""

from __future__ import annotations

import html
from typing import NamedTuple

import ipywidgets as widgets
import plotly.graph_objects as go

from engine.wire.records import FileStat, PageMap
from workbench.widgets.kv_data import (
    CACHED,
    FREE,
    PRIVATE,
    SHARED,
    SWAPPED,
    Filter,
    PageCell,
    PageMapData,
    cell_text,
    grid_shape,
    page_map,
)
from workbench.widgets.live import TOP_MARGIN, LiveView, fit, set_height
from workbench.widgets.style import (
    CACHED_COLOUR,
    FONT,
    FREE_COLOUR,
    OTHER_COLOUR,
    PRIVATE_COLOUR,
    SHARED_COLOURS,
    SWAPPED_COLOUR,
    legend,
    shared_colour,
)

# a cell's colour code: free 0, private 1, shared by 2..6+ files 2..6, swapped 7, filtered out 8,
# cached 9
COLOURS = (
    FREE_COLOUR,
    PRIVATE_COLOUR,
    *SHARED_COLOURS,
    SWAPPED_COLOUR,
    OTHER_COLOUR,
    CACHED_COLOUR,
)


class PageFetch(NamedTuple):
    pages: PageMap
    stats: list[FileStat]


def code(c: PageCell) -> int:
    if c.state == FREE:
        return 0  # free whatever the filter: no file holds it
    if c.state == CACHED:
        return 9  # cached whatever the filter: no file holds it
    if not c.kept:
        return 8
    if c.state == SWAPPED:
        return 7
    return min(c.holders, 6)


def colourscale() -> list[tuple[float, str]]:
    """One flat band per colour code."""
    n = len(COLOURS)
    scale = []
    for i, colour in enumerate(COLOURS):
        scale += [(i / n, colour), ((i + 1) / n, colour)]
    return scale


class PageMapView(LiveView):
    """Every page of the pool: free, cached (kept for prefix sharing), private, shared by n
    files, or swapped out to host memory.

    With a path or pid filter, the pages of other files are greyed out (free pages stay free).
    """

    title = "Page map"

    def __init__(self, *args: object, columns: int | None = None, **kwargs: object) -> None:
        self.columns = columns
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def body(self) -> list[widgets.Widget]:
        self.figure = fit(go.FigureWidget(layout=_layout()))
        self.figure.add_heatmap(
            z=[[]],
            zmin=-0.5,
            zmax=len(COLOURS) - 0.5,
            colorscale=colourscale(),
            showscale=False,
            xgap=1,
            ygap=1,
            hoverinfo="text",
        )
        self.counts_html = widgets.HTML()
        return [self.counts_html, self.figure]

    async def fetch(self) -> PageFetch:
        return PageFetch(await self.source.pages(), await self.source.walk())

    def compute(self, fetched: PageFetch, flt: Filter) -> PageMapData:
        return page_map(fetched.pages, fetched.stats, flt)

    def draw(self, data: PageMapData) -> None:
        rows, cols = grid_shape(len(data.cells), self.columns)
        z: list[list[int | None]] = [[None] * cols for _ in range(rows)]
        text = [[""] * cols for _ in range(rows)]
        for i, c in enumerate(data.cells):
            z[i // cols][i % cols] = code(c)
            text[i // cols][i % cols] = html.escape(cell_text(c, data.page_size))
        self.figure.data[0].update(z=z, text=text)
        set_height(self.figure, _height(rows, cols))
        self.counts_html.value = counts_line(data)


def counts_line(data: PageMapData) -> str:
    """The page size, then a key per colour drawn, with its count of pages.

    Shared pages get a key per number of files holding them ("by 7 files: 2"), in that number's
    colour; with a filter, a key for the grey pages of the files it leaves out.
    """
    c = data.counts
    keys = legend([(FREE_COLOUR, f"free {c[FREE]}"), (PRIVATE_COLOUR, f"private {c[PRIVATE]}")])
    if c[CACHED]:
        keys += legend([(CACHED_COLOUR, f"cached {c[CACHED]}")])
    if data.shared_by:
        by = [(shared_colour(n), f"by {n} files: {k}") for n, k in data.shared_by.items()]
        keys += f'<span style="margin-left:10px">shared {c[SHARED]}:</span>{legend(by)}'
    else:
        keys += legend([(shared_colour(2), f"shared {c[SHARED]}")])
    others = sum(1 for cell in data.cells if not cell.kept and cell.state not in (FREE, CACHED))
    rest = [(SWAPPED_COLOUR, f"swapped out {c[SWAPPED]}")]
    rest += [(OTHER_COLOUR, f"outside the filter {others}")] if others else []
    return f'<div style="{FONT}">{data.page_size} tokens per page {keys}{legend(rest)}</div>'


BOTTOM = 4  # px below the grid


def _height(rows: int, cols: int) -> int:
    """Square cells of 24 px, smaller where there are many columns; at most 720 px high."""
    cell = max(8, min(24, 960 // max(cols, 1)))
    return int(min(720, max(120, TOP_MARGIN + BOTTOM + rows * cell)))


def _layout() -> go.Layout:
    # square cells; the plot shrinks to the grid, which sits at the figure's top left
    axis = dict(showgrid=False, zeroline=False, showticklabels=False, constrain="domain")
    return go.Layout(
        height=200,
        margin=dict(l=4, r=4, t=TOP_MARGIN, b=BOTTOM),
        plot_bgcolor="rgba(0,0,0,0)",  # no band after the last page
        xaxis=dict(axis, constraintoward="left"),
        yaxis=dict(axis, autorange="reversed", scaleanchor="x", constraintoward="top"),
        uirevision="pages",
    )
