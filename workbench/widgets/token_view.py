"""The token view: each step of a generation, its chosen token among the top-k alternatives.

%%lip
view = TokenView(detokenize)
display(view)
d = await forward(f, tokenize("The return value"))
for _ in range(20):
    t = d.sample(temperature=0.8)
    view.add(d, t)                      # the distribution t was drawn from, and t
    d = await forward(f, [t])

Speculative decoding's verifying forwards go in with `view.add_verification(v)` (the
`on_step` of `speculative_decode`): accepted draft tokens are green, a rejected guess red,
with the guess and the draft it took down. Constrained generation's steps go in with
`view.add_masked(logits, before, t)`: how many tokens the grammar masked out, and what the
model wanted before the mask (struck through where the grammar refused it).
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from engine.wire.records import Distribution
from workbench.client import LIP, Client
from workbench.widgets.style import (
    ACCEPTED_COLOUR,
    FONT,
    PRIVATE_COLOUR,
    REJECTED_COLOUR,
    legend,
    piece,
)
from workbench.widgets.token_data import (
    TokenChoice,
    TokenStep,
    masked_step,
    token_step,
    verification_steps,
)

if TYPE_CHECKING:
    from workbench.lib.speculative import Verification

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
        `colour` (any CSS colour) marks its row."""
        step = token_step(len(self.steps), dist, int(chosen), self.detokenize, self.k, note)
        return self.add_step(step, colour)

    def add_step(self, step: TokenStep, colour: str | None = None) -> TokenStep:
        """One more step, made by `token_data`'s functions (numbered as the view's next)."""
        step = step._replace(step=len(self.steps))
        self.steps.append(step)
        self.colours[step.step] = colour
        self._schedule()
        return step

    def add_verification(self, v: Verification) -> list[TokenStep]:
        """The tokens one verifying forward of `speculative_decode` added (pass this method as
        its `on_step`): accepted draft tokens green, the first rejected guess red."""
        steps = verification_steps(len(self.steps), v, self.detokenize, self.k)
        return [self.add_step(s) for s in steps]

    def add_masked(
        self, logits: Sequence[float], before: Distribution, chosen: int, note: str = ""
    ) -> TokenStep:
        """A step of constrained generation: `logits` the engine's masked row for the file with
        the grammar, `before` the model's distribution there without it, `chosen` the token."""
        step = masked_step(0, logits, before, int(chosen), self.detokenize, self.k, note)
        return self.add_step(step)

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
        drafts = any(s.draft is not None for s in self.steps)
        masks = any(s.mask is not None for s in self.steps)
        head = "<tr><th>step</th><th>chosen</th><th>p</th><th>rank</th><th>top tokens</th>"
        head += ("<th>draft</th>" if drafts else "") + ("<th>grammar</th>" if masks else "")
        head += "<th></th></tr>"
        note = f"<div>… {skipped} earlier steps</div>" if skipped else ""
        body = "".join(_row(s, self.colours.get(s.step), drafts, masks) for s in rows)
        text = "".join(piece(s.chosen.text) for s in self.steps)
        verdicts = [(ACCEPTED_COLOUR, "draft accepted"), (REJECTED_COLOUR, "draft rejected")]
        key = f"<div>{legend(verdicts)}</div>" if drafts else ""
        self.table.value = (
            f'<div style="{FONT}"><div><b>text</b>: {text}</div>{key}{note}'
            f'<table style="border-collapse:collapse">{head}{body}</table></div>'
        )


def _row(s: TokenStep, colour: str | None, drafts: bool, masks: bool) -> str:
    prob = "?" if s.chosen.prob is None else f"{s.chosen.prob:.3f}"
    rank = "-" if s.rank is None else str(s.rank + 1)
    alts = "".join(_choice(c, c.id == s.chosen.id) for c in s.alternatives)
    if colour is None and s.draft is not None:
        colour = ACCEPTED_COLOUR if s.draft.accepted else REJECTED_COLOUR
    style = f' style="background:{html.escape(colour)}"' if colour else ""
    extra = (f"<td>{_draft(s)}</td>" if drafts else "") + (f"<td>{_mask(s)}</td>" if masks else "")
    return (
        f"<tr{style}><td>{s.step}</td><td><b>{piece(s.chosen.text)}</b></td><td>{prob}</td>"
        f"<td>{rank}</td><td>{alts}</td>{extra}<td>{html.escape(s.note)}</td></tr>"
    )


def _draft(s: TokenStep) -> str:
    """A step's draft cell: accepted, or the rejected guess and the draft it took down."""
    d = s.draft
    if d is None:
        return ""
    if d.accepted:
        return "accepted"
    p = "?" if d.guessed.prob is None else f"{d.guessed.prob:.3f}"
    dropped = "".join(piece(c.text) for c in d.discarded)
    rest = f", dropped {dropped}" if d.discarded else ""
    return f"rejected: guessed {piece(d.guessed.text)} (p {p}){rest}"


def _mask(s: TokenStep) -> str:
    """A step's grammar cell: tokens masked out, and the model's wishes before the mask."""
    m = s.mask
    if m is None:
        return ""
    wanted = "".join(
        f"<s>{piece(c.text)}</s> " if c.id in m.refused_wanted else f"{piece(c.text)} "
        for c in m.wanted
    )
    return f"masked {m.refused:,} of {m.allowed + m.refused:,}; wanted {wanted}"


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
