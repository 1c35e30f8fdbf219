"""Colours and small HTML pieces the views share (readable on light and dark themes)."""

from __future__ import annotations

import html
from collections.abc import Sequence

FREE_COLOUR = "#d9d9d9"
CACHED_COLOUR = "#a8c8a0"  # free to take back, kept for prefix sharing
PRIVATE_COLOUR = "#4c78a8"
SHARED_COLOURS = ("#f2a541", "#e4572e", "#c1272d", "#8c1c13", "#5c0f0a")  # by 2, 3, 4, 5, 6+
SWAPPED_COLOUR = "#8e6bbf"
OTHER_COLOUR = "#f0f0f0"  # pages of files a filter leaves out
WAITING_COLOUR = "#f2c14e"
COMPUTING_COLOUR = "#4c78a8"
SUSPENDED_COLOUR = "#8e6bbf"
TOOL_COLOUR = "#72b7b2"  # a process waiting on a tool
GONE_COLOUR = "#bbbbbb"
SPLICED_COLOUR = "#b279a2"  # a fork graph's line from a file to one that spliced its tokens in
ACCEPTED_COLOUR = "#c7e9c0"  # a speculative draft token the model agreed with
REJECTED_COLOUR = "#fcbba1"  # one it did not
BATCH_COLOUR = "#54a24b"  # the batch lane: apart from waiting (yellow) and computing (blue)
PALETTE = (
    "#e45756", "#f58518", "#54a24b", "#b279a2", "#ff9da6", "#9d755d", "#72b7b2", "#eeca3b",
)  # fmt: skip
FONT = "font-family: var(--jp-code-font-family, monospace); font-size: 12px"


def shared_colour(n: int) -> str:
    """The colour of a page held by n > 1 files."""
    return SHARED_COLOURS[min(n, 6) - 2]


def palette(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def piece(text: str) -> str:
    """A token's text, with whitespace made visible, escaped for HTML."""
    shown = text.replace("\n", "↵").replace("\t", "→")
    return html.escape(shown).replace(" ", "&nbsp;") or "∅"


def legend(items: Sequence[tuple[str, str]]) -> str:
    """Coloured swatches with labels."""
    swatch = (
        '<span style="display:inline-block;width:10px;height:10px;background:{};'
        'margin:0 4px 0 10px;vertical-align:middle"></span>{}'
    )
    return "".join(swatch.format(c, html.escape(label)) for c, label in items)
