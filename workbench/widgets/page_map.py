"""The page map: the pool as a grid of pages coloured by state, the files behind each on hover."""

from __future__ import annotations

import html
from typing import NamedTuple

import ipywidgets as widgets
import plotly.graph_objects as go

from engine.records import FileStat, PageMap
from workbench.widgets.kv_data import (
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
from workbench.widgets.live import LiveView
from workbench.widgets.style import (
    FONT,
    FREE_COLOUR,
    OTHER_COLOUR,
    PRIVATE_COLOUR,
    SHARED_COLOURS,
    SWAPPED_COLOUR,
    legend,
    shared_colour,
)

# a cell's colour code: free 0, private 1, shared by 2..6+ files 2..6, swapped 7, filtered out 8
COLOURS = (FREE_COLOUR, PRIVATE_COLOUR, *SHARED_COLOURS, SWAPPED_COLOUR, OTHER_COLOUR)


class PageFetch(NamedTuple):
    pages: PageMap
    stats: list[FileStat]


def code(c: PageCell) -> int:
    if not c.kept:
        return 8
    if c.state == SWAPPED:
        return 7
    return min(c.holders, 6)


def colourscale() -> list[tuple[float, str]]:
    """Nine flat bands over 0..8, one per code."""
    n = len(COLOURS)
    scale = []
    for i, colour in enumerate(COLOURS):
        scale += [(i / n, colour), ((i + 1) / n, colour)]
    return scale


class PageMapView(LiveView):
    """Every page of the pool: free, private, shared by n files, or swapped out to host memory.

    With a path or pid filter, pages no kept file holds are greyed out.
    """

    title = "Page map"

    def __init__(self, *args: object, columns: int | None = None, **kwargs: object) -> None:
        self.columns = columns
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def body(self) -> list[widgets.Widget]:
        self.figure = go.FigureWidget(layout=_layout())
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
        with self.figure.batch_update():
            self.figure.data[0].update(z=z, text=text)
            self.figure.layout.height = int(min(700, max(120, 40 + rows * 14)))
        self.counts_html.value = counts_line(data)


def counts_line(data: PageMapData) -> str:
    c = data.counts
    by = ", ".join(f"{n} files: {k}" for n, k in data.shared_by.items())
    items = [
        (FREE_COLOUR, f"free {c[FREE]}"),
        (PRIVATE_COLOUR, f"private {c[PRIVATE]}"),
        (shared_colour(2), f"shared {c[SHARED]}" + (f" (by {by})" if by else "")),
        (SWAPPED_COLOUR, f"swapped out {c[SWAPPED]}"),
    ]
    return f'<div style="{FONT}">{data.page_size} tokens per page {legend(items)}</div>'


def _layout() -> go.Layout:
    axis = dict(showgrid=False, zeroline=False, showticklabels=False)
    return go.Layout(
        height=200,
        margin=dict(l=4, r=4, t=4, b=4),
        xaxis=axis,
        yaxis=dict(axis, autorange="reversed", scaleanchor="x"),
        uirevision="pages",
    )
