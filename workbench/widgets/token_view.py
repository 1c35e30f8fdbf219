"""The token view: each step of a generation, its chosen token among the top-k alternatives.

%%lip
view = TokenView(detokenize)
display(view)
d = await forward(f, tokenize("The return value"))
for _ in range(20):
    t = d.sample(temperature=0.8)
    view.add(d, t)                      # the distribution t was drawn from, and t
    d = await forward(f, [t])
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import Callable, Sequence
from typing import Any

import ipywidgets as widgets

from engine.wire.records import Distribution
from workbench.client import LIP, Client
from workbench.widgets.style import FONT, PRIVATE_COLOUR, piece
from workbench.widgets.token_data import TokenChoice, TokenStep, token_step

REDRAW_EVERY = 0.1  # seconds: steps added faster than this are drawn together


class TokenView(widgets.VBox):
    """A table of generation steps: the chosen token, its probability and rank, the top k."""

    def __init__(
        self,
        detokenize: Callable[[list[int]], str] | Client | LIP | None = None,
        k: int = 5,
        max_rows: int = 200,
    ) -> None:
        self.detokenize = _detokenizer(detokenize)
        self.k, self.max_rows = k, max_rows
        self.steps: list[TokenStep] = []
        self.colours: dict[int, str | None] = {}  # step index -> its row's colour
        self.table = widgets.HTML()
        self._pending: asyncio.Handle | None = None
        super().__init__([self.table])
        self.draw()

    def add(
        self, dist: Distribution, chosen: int, note: str = "", colour: str | None = None
    ) -> TokenStep:
        """One more step: chosen was picked from dist. `note` says something of the step, and
        `colour` (any CSS colour) marks its row, e.g. accepted and rejected draft tokens."""
        step = token_step(len(self.steps), dist, int(chosen), self.detokenize, self.k, note)
        self.steps.append(step)
        self.colours[step.step] = colour
        self._schedule()
        return step

    def extend(self, dists: Sequence[Distribution], chosen: Sequence[int]) -> None:
        for d, t in zip(dists, chosen, strict=True):
            self.add(d, t)

    def clear(self) -> None:
        self.steps, self.colours = [], {}
        self.draw()

    def _schedule(self) -> None:
        """Redraw soon (once for a burst of steps), or now where no event loop runs."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.draw()
            return
        if self._pending is None:
            self._pending = loop.call_later(REDRAW_EVERY, self.draw)

    def draw(self) -> None:
        self._pending = None
        rows = self.steps[-self.max_rows :]
        skipped = len(self.steps) - len(rows)
        head = "<tr><th>step</th><th>chosen</th><th>p</th><th>rank</th><th>top tokens</th>"
        head += "<th></th></tr>"
        note = f"<div>… {skipped} earlier steps</div>" if skipped else ""
        body = "".join(_row(s, self.colours.get(s.step)) for s in rows)
        text = "".join(piece(s.chosen.text) for s in self.steps)
        self.table.value = (
            f'<div style="{FONT}"><div><b>text</b>: {text}</div>{note}'
            f'<table style="border-collapse:collapse">{head}{body}</table></div>'
        )


def _row(s: TokenStep, colour: str | None = None) -> str:
    prob = "?" if s.chosen.prob is None else f"{s.chosen.prob:.3f}"
    rank = "-" if s.rank is None else str(s.rank + 1)
    alts = "".join(_choice(c, c.id == s.chosen.id) for c in s.alternatives)
    style = f' style="background:{html.escape(colour)}"' if colour else ""
    return (
        f"<tr{style}><td>{s.step}</td><td><b>{piece(s.chosen.text)}</b></td><td>{prob}</td>"
        f"<td>{rank}</td><td>{alts}</td><td>{html.escape(s.note)}</td></tr>"
    )


def _choice(c: TokenChoice, chosen: bool) -> str:
    width = int(60 * (c.prob or 0.0))
    border = "outline:2px solid #222;" if chosen else ""
    tip = html.escape(f"token {c.id}: p = {c.prob:.4f}")
    return (
        f'<span title="{tip}" style="display:inline-block;margin-right:8px;{border}">'
        f"{piece(c.text)}"
        f'<span style="display:inline-block;height:8px;width:{width}px;'
        f'background:{PRIVATE_COLOUR};margin-left:3px"></span></span>'
    )


def _detokenizer(source: Any) -> Callable[[list[int]], str]:
    if isinstance(source, LIP):
        return source.detokenize
    if isinstance(source, Client) and source.tokenizer is not None:
        tok = source.tokenizer
        return lambda ids: tok.decode(ids, skip_special_tokens=False)
    if callable(source):
        return source
    return lambda ids: " ".join(f"#{i}" for i in ids)
