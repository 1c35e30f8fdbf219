"""The scheduler timeline: a lane per process (its calls waiting, then computing; suspensions),
a lane of forward batches, and below it each batch's size: zoom and pan, live."""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.widgets.kv_data import Filter
from workbench.widgets.live import TOP_MARGIN, LiveView, fit, set_height, zoomable
from workbench.widgets.style import (
    BATCH_COLOUR,
    COMPUTING_COLOUR,
    SHARED_COLOURS,
    SUSPENDED_COLOUR,
    WAITING_COLOUR,
)
from workbench.widgets.trace_data import (
    BatchBar,
    CallSpan,
    Suspension,
    TimelineBuilder,
    TimelineData,
)

PAGE = 20_000  # trace events per request
BATCH_LANE = "batches"
WAITING, COMPUTING, SUSPENDED, BATCHES, SIZES = range(5)  # the figure's traces
TOP, LEGEND = TOP_MARGIN, 28  # px above the plot: the mode bar's, then the legend's


class TimelineView(LiveView):
    """What the scheduler did: when each process's calls waited and ran, and in which batches.

    pid: one process's lane and the batches it was in. Times are seconds since the engine began.
    """

    title = "Scheduler timeline"

    def __init__(self, *args: Any, max_calls: int = 20_000, **kwargs: Any) -> None:
        self.builder = TimelineBuilder(max_calls=max_calls)
        super().__init__(*args, **kwargs)

    def filters(self) -> list[widgets.Widget]:
        return [self.pid_box]

    def body(self) -> list[widgets.Widget]:
        fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.75, 0.25])
        self.figure = fit(zoomable(go.FigureWidget(fig)))
        bar = dict(orientation="h", hoverinfo="text", showlegend=True)
        self.figure.add_bar(name="waiting", marker_color=WAITING_COLOUR, **bar, row=1, col=1)
        self.figure.add_bar(name="computing", marker_color=COMPUTING_COLOUR, **bar, row=1, col=1)
        self.figure.add_bar(name="suspended", marker_color=SUSPENDED_COLOUR, **bar, row=1, col=1)
        self.figure.add_bar(name="batch", marker_color=BATCH_COLOUR, **bar, row=1, col=1)
        self.figure.add_scatter(
            name="calls per batch",
            mode="markers",
            marker=dict(size=5, color=SHARED_COLOURS[2]),
            hoverinfo="text",
            row=2,
            col=1,
        )
        self.figure.update_layout(
            height=360,
            barmode="overlay",
            margin=dict(l=10, r=10, t=TOP + LEGEND, b=30),
            # the legend above the plot, at the left; plotly's mode bar above it, at the right
            legend=dict(orientation="h", x=0, xanchor="left", y=1.02, yanchor="bottom"),
            dragmode="pan",
            uirevision="timeline",
        )
        self.figure.update_xaxes(title_text="seconds", row=2, col=1)
        self.figure.update_yaxes(title_text="calls", rangemode="tozero", row=2, col=1)
        return [self.figure]

    async def fetch(self) -> TimelineBuilder:
        """The trace after what was seen already, page by page; names of new processes."""
        while True:
            events = await self.source.trace(self.builder.last_seq, PAGE)
            self.builder.add(events)
            if len(events) < PAGE:
                break
        if any(p.name == "?" for p in self.builder.procs.values()):
            self.builder.add_processes(await self.source.ps())
        return self.builder

    def compute(self, fetched: TimelineBuilder, flt: Filter) -> TimelineData:
        return fetched.data(flt.pid)

    def draw(self, data: TimelineData) -> None:
        label = {lane.pid: lane.label for lane in data.lanes}
        now = data.now
        waiting = [c for c in data.calls if c.started is None or c.started > c.submitted]
        with self.figure.batch_update():
            _bars(self.figure.data[WAITING], *_waiting(waiting, label, now))
            _bars(self.figure.data[COMPUTING], *_computing(data.calls, label, now))
            _bars(self.figure.data[SUSPENDED], *_suspended(data.suspensions, label, now))
            _bars(self.figure.data[BATCHES], *_batches(data.batches))
            sizes = self.figure.data[SIZES]
            sizes.x = np.asarray([b.start for b in data.batches], float)
            sizes.y = np.asarray([b.size for b in data.batches], int)
            sizes.hovertext = np.asarray([_batch_text(b) for b in data.batches], dtype=object)
            order = [BATCH_LANE, *(lane.label for lane in data.lanes)]
            self.figure.update_yaxes(
                categoryorder="array", categoryarray=order, autorange="reversed", row=1, col=1
            )
        set_height(self.figure, int(min(900, TOP + LEGEND + 180 + 26 * len(order))))


def _bars(trace: Any, y: Any, base: Any, width: Any, text: Any) -> None:
    """Numbers as arrays: plotly sends them as binary buffers, without checking each item."""
    num = np.asarray
    trace.update(
        y=num(y, dtype=object),
        base=num(base, float),
        x=num(width, float),
        hovertext=num(text, dtype=object),
    )


def _waiting(
    calls: list[CallSpan], label: dict[int, str], now: float
) -> tuple[list, list, list, list]:
    y, base, width, text = [], [], [], []
    for c in calls:
        end = c.started if c.started is not None else now
        y.append(label[c.pid])
        base.append(c.submitted)
        width.append(end - c.submitted)
        text.append(
            f"pid {c.pid} call {c.call} ({c.tokens} tokens) waited {_ms(end - c.submitted)}"
        )
    return y, base, width, text


def _computing(
    calls: list[CallSpan], label: dict[int, str], now: float
) -> tuple[list, list, list, list]:
    y, base, width, text = [], [], [], []
    for c in calls:
        if c.started is None:
            continue
        end = c.finished if c.finished is not None else now
        y.append(label[c.pid])
        base.append(c.started)
        width.append(end - c.started)
        what = f" ({c.error})" if c.error else ""
        text.append(
            f"pid {c.pid} call {c.call} ({c.tokens} tokens) ran {_ms(end - c.started)}{what}"
        )
    return y, base, width, text


def _suspended(
    suspensions: list[Suspension], label: dict[int, str], now: float
) -> tuple[list, list, list, list]:
    y, base, width, text = [], [], [], []
    for s in suspensions:
        end = s.end if s.end is not None else now
        y.append(label[s.pid])
        base.append(s.start)
        width.append(end - s.start)
        text.append(f"pid {s.pid} suspended {_ms(end - s.start)}: {s.pages} pages swapped out")
    return y, base, width, text


def _batches(batches: list[BatchBar]) -> tuple[list, list, list, list]:
    return (
        [BATCH_LANE] * len(batches),
        [b.start for b in batches],
        [b.end - b.start for b in batches],
        [_batch_text(b) for b in batches],
    )


def _batch_text(b: BatchBar) -> str:
    pids = ", ".join(map(str, sorted(set(b.pids))))
    return (
        f"batch {b.batch}: {b.size} calls, {b.tokens} tokens, {_ms(b.end - b.start)}; pids {pids}"
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"
