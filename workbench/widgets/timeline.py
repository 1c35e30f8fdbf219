"""The scheduler timeline: a lane per process (its calls waiting, then computing; tool waits;
suspensions and the pages swapped out and in), spawned children right under their parent, a lane
of forward batches, and below it each batch's size: zoom and pan, live. `TimelineComparison`
lays two (or more) runs side by side on clocks that start at 0."""

from __future__ import annotations

import html
from collections.abc import Mapping
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
    SWAPPED_COLOUR,
    TOOL_COLOUR,
    WAITING_COLOUR,
)
from workbench.widgets.trace_data import (
    BatchBar,
    CallSpan,
    Suspension,
    Swap,
    TimelineBuilder,
    TimelineData,
    TimelineSummary,
    ToolWait,
    summary,
)

PAGE = 20_000  # trace events per request
BATCH_LANE = "batches"
# the figure's traces, per column: bars in the lanes, swap markers, then the batch sizes below
WAITING, COMPUTING, TOOLS, SUSPENDED, BATCHES, SWAPS, SIZES = range(7)
TRACES = 7
TOP, LEGEND = TOP_MARGIN, 28  # px above the plot: the mode bar's, then the legend's


def add_traces(figure: go.FigureWidget, col: int, legend: bool) -> None:
    """The TRACES traces of one timeline, in column col of a figure of two rows."""
    bar = dict(orientation="h", hoverinfo="text", showlegend=legend, row=1, col=col)
    figure.add_bar(name="waiting", marker_color=WAITING_COLOUR, legendgroup="w", **bar)
    figure.add_bar(name="computing", marker_color=COMPUTING_COLOUR, legendgroup="c", **bar)
    figure.add_bar(name="tool", marker_color=TOOL_COLOUR, legendgroup="t", **bar)
    figure.add_bar(name="suspended", marker_color=SUSPENDED_COLOUR, legendgroup="s", **bar)
    figure.add_bar(name="batch", marker_color=BATCH_COLOUR, legendgroup="b", **bar)
    figure.add_scatter(
        name="pages swapped",
        mode="markers+text",
        marker=dict(size=9, color=SWAPPED_COLOUR, line=dict(width=1, color="white")),
        textposition="top center",
        textfont=dict(size=9, color=SWAPPED_COLOUR),
        hoverinfo="text",
        legendgroup="p",
        showlegend=legend,
        row=1,
        col=col,
    )
    figure.add_scatter(
        name="calls per batch",
        mode="markers",
        marker=dict(size=5, color=SHARED_COLOURS[2]),
        hoverinfo="text",
        legendgroup="n",
        showlegend=legend,
        row=2,
        col=col,
    )


def layout(figure: go.FigureWidget, cols: int = 1) -> None:
    figure.update_layout(
        height=360,
        barmode="overlay",
        margin=dict(l=10, r=10, t=TOP + LEGEND, b=30),
        # the legend above the plot, at the left; plotly's mode bar above it, at the right
        legend=dict(orientation="h", x=0, xanchor="left", y=1.02, yanchor="bottom"),
        dragmode="pan",
        uirevision="timeline",
    )
    for col in range(1, cols + 1):
        figure.update_xaxes(title_text="seconds", row=2, col=col)
        figure.update_yaxes(title_text="calls", rangemode="tozero", row=2, col=col)


def fill(figure: go.FigureWidget, col: int, data: TimelineData) -> int:
    """Draw data into column col's traces (inside a batch_update); the lanes it drew."""
    label = {lane.pid: lane.label for lane in data.lanes}
    now = data.now
    first = (col - 1) * TRACES
    traces = figure.data[first : first + TRACES]
    waiting = [c for c in data.calls if c.started is None or c.started > c.submitted]
    _bars(traces[WAITING], *_waiting(waiting, label, now))
    _bars(traces[COMPUTING], *_computing(data.calls, label, now))
    _bars(traces[TOOLS], *_tools(data.tools, label, now))
    _bars(traces[SUSPENDED], *_suspended(data.suspensions, label, now))
    _bars(traces[BATCHES], *_batches(data.batches))
    swaps = traces[SWAPS]
    swaps.x = np.asarray([w.t for w in data.swaps], float)
    swaps.y = np.asarray([label[w.pid] for w in data.swaps], dtype=object)
    swaps.text = np.asarray([_swap_mark(w) for w in data.swaps], dtype=object)
    swaps.hovertext = np.asarray([_swap_text(w) for w in data.swaps], dtype=object)
    swaps.marker.symbol = np.asarray(
        ["triangle-down" if w.out else "triangle-up" for w in data.swaps], dtype=object
    )
    sizes = traces[SIZES]
    sizes.x = np.asarray([b.start for b in data.batches], float)
    sizes.y = np.asarray([b.size for b in data.batches], int)
    sizes.hovertext = np.asarray([_batch_text(b) for b in data.batches], dtype=object)
    order = [BATCH_LANE, *(lane.label for lane in data.lanes)]
    figure.update_yaxes(
        categoryorder="array", categoryarray=order, autorange="reversed", row=1, col=col
    )
    return len(order)


def height(lanes: int) -> int:
    return int(min(900, TOP + LEGEND + 180 + 26 * lanes))


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
        add_traces(self.figure, 1, legend=True)
        layout(self.figure)
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
        with self.figure.batch_update():
            lanes = fill(self.figure, 1, data)
        set_height(self.figure, height(lanes))


class TimelineComparison(widgets.VBox):
    """Timelines side by side, one column each, on clocks that start at 0 and share one scale,
    with what each scheduler did in numbers below (`summaries`).

        TimelineComparison({"eager": window(d, eager_pids), "adaptive": window(d, pids)})
    """

    def __init__(self, runs: Mapping[str, TimelineData]) -> None:
        if not runs:
            raise ValueError("TimelineComparison needs at least one timeline")
        self.runs = dict(runs)
        self.summaries: dict[str, TimelineSummary] = {k: summary(d) for k, d in runs.items()}
        cols = len(self.runs)
        fig = make_subplots(
            rows=2,
            cols=cols,
            shared_xaxes="all",
            row_heights=[0.75, 0.25],
            column_titles=list(self.runs),
            horizontal_spacing=0.12 / cols,
        )
        self.figure = fit(zoomable(go.FigureWidget(fig)))
        for col in range(1, cols + 1):
            add_traces(self.figure, col, legend=col == 1)
        layout(self.figure, cols)
        lanes = 0
        with self.figure.batch_update():
            for col, data in enumerate(self.runs.values(), 1):
                lanes = max(lanes, fill(self.figure, col, data))
            for kind in range(TRACES):  # in the legend once, from the first column that has it
                traces = self.figure.data[kind::TRACES]
                first = next((t for t in traces if t.x is not None and len(t.x)), traces[0])
                for t in traces:
                    t.showlegend = t is first
            # the legend under the plots: the columns' titles are above them
            self.figure.update_layout(
                legend=dict(orientation="h", x=0, xanchor="left", y=-0.12, yanchor="top"),
                margin=dict(t=TOP + 16, b=30 + LEGEND + 16),
            )
        for col in range(2, cols + 1):  # one scale of batch sizes: row 2's axes are y{cols+1}...
            self.figure.update_yaxes(matches=f"y{cols + 1}", row=2, col=col)
        set_height(self.figure, height(lanes))
        self.table = widgets.HTML(summary_table(self.summaries))
        super().__init__([self.figure, self.table], layout=widgets.Layout(width="100%"))


def summary_table(summaries: Mapping[str, TimelineSummary]) -> str:
    """The runs' numbers as an HTML table, a column per run."""
    rows = [
        ("processes", "{:d}", "processes"),
        ("batches (forward passes)", "{:d}", "batches"),
        ("calls per batch", "{:.2f}", "calls_per_batch"),
        ("seconds, first call to last", "{:.2f}", "seconds"),
        ("seconds calls waited, summed", "{:.2f}", "waited"),
        ("suspensions", "{:d}", "suspensions"),
        ("pages swapped out and in", "{:d}", "pages_swapped"),
    ]
    head = "".join(f"<th>{html.escape(name)}</th>" for name in summaries)
    body = "".join(
        f"<tr><td>{html.escape(text)}</td>"
        + "".join(f"<td>{fmt.format(getattr(s, key))}</td>" for s in summaries.values())
        + "</tr>"
        for text, fmt, key in rows
    )
    style = "border-collapse: collapse; text-align: right"
    return f'<table style="{style}"><tr><th></th>{head}</tr>{body}</table>'


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
        back = "" if s.pages_in is None else f", {s.pages_in} swapped back in"
        text.append(
            f"pid {s.pid} suspended {_ms(end - s.start)}: {s.pages_out} pages swapped out{back}"
        )
    return y, base, width, text


def _tools(
    tools: list[ToolWait], label: dict[int, str], now: float
) -> tuple[list, list, list, list]:
    y, base, width, text = [], [], [], []
    for t in tools:
        end = t.end if t.end is not None else now
        y.append(label[t.pid])
        base.append(t.start)
        width.append(end - t.start)
        what = f" ({t.error})" if t.error else ""
        text.append(f"pid {t.pid} waited {_ms(end - t.start)} on tool {t.tool!r}{what}")
    return y, base, width, text


def _swap_mark(w: Swap) -> str:
    return f"{'↓' if w.out else '↑'}{w.num_pages}"


def _swap_text(w: Swap) -> str:
    where = "out to host memory" if w.out else "back into the pool"
    return f"pid {w.pid}: {w.num_pages} pages swapped {where} at {w.t:.3f} s"


def _batches(batches: list[BatchBar]) -> tuple[list, list, list, list]:
    return (
        [BATCH_LANE] * len(batches),
        [b.start for b in batches],
        [b.end - b.start for b in batches],
        [_batch_text(b) for b in batches],
    )


def _batch_text(b: BatchBar) -> str:
    pids = ", ".join(map(str, sorted(set(b.pids))))
    by = f" ({b.policy})" if b.policy else ""
    took = _ms(b.end - b.start)
    return f"batch {b.batch}{by}: {b.size} calls, {b.tokens} tokens, {took}; pids {pids}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"
