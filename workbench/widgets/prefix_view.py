"""The prefix view: why a prefix was or was not shared.

Two or more files' tokens side by side, page by page: the pages a file holds in common with the
first file are coloured, the pages its forwards took from the prefix cache are marked, the first
token where it differs from the first file is highlighted with both tokens, and the reason its
last lookup stopped is given in words (engine.prefix_cache; `kv.explain`).
"""

from __future__ import annotations

import html
from typing import NamedTuple

import ipywidgets as widgets

from engine.wire.records import FileStat, PrefixReport
from workbench.client import LIP, Client
from workbench.widgets.kv_data import Filter
from workbench.widgets.live import LiveView
from workbench.widgets.prefix_data import PrefixPage, PrefixRow, PrefixViewData, prefix_view
from workbench.widgets.style import (
    CACHED_COLOUR,
    FONT,
    FREE_COLOUR,
    PRIVATE_COLOUR,
    legend,
    piece,
    shared_colour,
)

DIVERGED_COLOUR = "#e45756"


class PrefixFetch(NamedTuple):
    stats: list[FileStat]
    tokens: list[list[int]]
    reports: list[PrefixReport]
    page_size: int


class PrefixView(LiveView):
    """The files at `paths`, aligned page by page with the first of them."""

    title = "Prefix sharing"

    def __init__(
        self, paths: list[str], source: Client | LIP | None = None, **kwargs: object
    ) -> None:
        if not paths:
            raise ValueError("PrefixView needs at least one file path")
        self.paths = list(paths)
        super().__init__(source, **kwargs)  # type: ignore[arg-type]

    def filters(self) -> list[widgets.Widget]:
        return []  # the paths are the filter

    def body(self) -> list[widgets.Widget]:
        self.table = widgets.HTML()
        return [self.table]

    async def fetch(self) -> PrefixFetch:
        s = self.source
        stats = [await s.stat(p) for p in self.paths]
        tokens = [await s.read(p) for p in self.paths]
        reports = [await s.explain(p) for p in self.paths]
        page_size = (await s.pages()).page_size
        return PrefixFetch(stats, tokens, reports, page_size)

    def compute(self, fetched: PrefixFetch, flt: Filter) -> PrefixViewData:
        return prefix_view(
            fetched.stats,
            fetched.tokens,
            fetched.reports,
            fetched.page_size,
            self.source.detokenize,
        )

    def draw(self, data: PrefixViewData) -> None:
        self.table.value = render(data)


def render(data: PrefixViewData) -> str:
    keys = legend(
        [
            (PRIVATE_COLOUR, "its own page"),
            (shared_colour(2), "the same page as the first file's"),
            (CACHED_COLOUR, "taken from the prefix cache (outlined)"),
            (DIVERGED_COLOUR, "first differing token"),
        ]
    )
    rows = "".join(_row(r, data.page_size) for r in data.rows)
    return (
        f'<div style="{FONT}">{data.page_size} tokens per page {keys}'
        f'<table style="border-collapse:separate;border-spacing:2px">{rows}</table></div>'
    )


def _row(row: PrefixRow, page_size: int) -> str:
    cells = "".join(_cell(p, row, page_size) for p in row.pages)
    lines = [f"{row.tokens_cached} tokens from the cache"]
    if row.divergence is not None:
        d = row.divergence
        lines.append(
            f"differs from the first file at token {d.at} (page {d.page}):"
            f" {d.ours!r} there, {d.theirs!r} here"
        )
    if row.reason:
        lines.append(f"last lookup: {row.reason}")
    notes = "<br>".join(html.escape(line) for line in lines)
    return (
        f'<tr><td style="white-space:nowrap;vertical-align:top"><b>{html.escape(row.path)}</b>'
        f'<div style="color:var(--jp-ui-font-color2,#666)">{notes}</div></td>{cells}</tr>'
    )


def _cell(p: PrefixPage, row: PrefixRow, page_size: int) -> str:
    colour = shared_colour(2) if p.same_as_first else PRIVATE_COLOUR
    if p.tokens < page_size:
        colour = FREE_COLOUR  # the partly filled last page: never shared
    border = f"2px solid {CACHED_COLOUR}" if p.from_cache else "2px solid transparent"
    text = piece(p.text)
    d = row.divergence
    if d is not None and d.page == p.number:
        text = f'<span style="background:{DIVERGED_COLOUR};color:white">{text}</span>'
    where = "in host memory" if p.page is None else f"pool page {p.page}"
    title = html.escape(f"page {p.number} ({where}), {p.tokens} tokens")
    return (
        f'<td title="{title}" style="vertical-align:top;max-width:160px;overflow:hidden;'
        f'background:{colour}22;border:{border};border-left:4px solid {colour}">{text}</td>'
    )
