"""What every live view shares: where it reads from, its filters, and its polling task.

A view reads the engine only through the public client API, as the client (or, given a LIP,
as that process: then it also sees the process's own /proc files). It polls on the kernel's
asyncio loop, so a cell that awaits the engine (a `%%lip` cell) leaves it room to update; it
redraws only when what it shows changed, backs off while nothing does, and stops when closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
from collections.abc import Sequence
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go

from engine.wire.errors import EngineError, EngineNotRunning, ProcessExited
from engine.wire.records import Event, FileHandle, FileStat, PageMap, PrefixReport, ProcessInfo
from workbench.client import LIP, Client
from workbench.widgets.kv_data import Filter
from workbench.widgets.trace_data import KINDS

MAX_BACKOFF = 5.0  # a quiet view polls this many times less often, at most
TOP_MARGIN = 32  # px above a figure's plot: where plotly's mode bar (its tools) shows


class Source:
    """The calls a view makes: a Client's (what its user may read) or a LIP's (its files too).

    source None: this kernel's shared client (`workbench.connect()`), connected at first use.
    Each method is a declared call (`engine.wire.calls`: `walk` is `kv.walk`, `trace` is
    `trace`) with some of its parameters, as declared; tests/unit/test_calls.py holds it to them.
    """

    def __init__(self, source: Client | LIP | None = None) -> None:
        self.lip = source if isinstance(source, LIP) else None
        self._client = source.client if isinstance(source, LIP) else source

    async def client(self) -> Client:
        if self._client is None:
            from workbench import connect

            self._client = await connect()
        return self._client

    async def walk(self, path: str = "/") -> list[FileStat]:
        return await (self.lip.kv if self.lip else await self.client()).walk(path)

    async def pages(self) -> PageMap:
        return await (self.lip.kv if self.lip else await self.client()).pages()

    async def read(self, path: FileHandle | str) -> list[int]:
        return await (self.lip.kv if self.lip else await self.client()).read(path)

    async def stat(self, path: FileHandle | str) -> FileStat:
        return await (self.lip.kv if self.lip else await self.client()).stat(path)

    async def explain(self, path: FileHandle | str) -> PrefixReport:
        return await (self.lip.kv if self.lip else await self.client()).explain(path)

    async def trace(self, after_seq: int | None = None, limit: int = 50_000) -> list[Event]:
        """The events the views draw (`KINDS`)."""
        client = await self.client()
        return await client.trace(after_seq=after_seq, limit=limit, kinds=KINDS)

    async def ps(self) -> list[ProcessInfo]:
        return await (await self.client()).ps()

    async def stat_engine(self) -> dict[str, Any]:
        return await (await self.client()).stat_engine()

    def detokenize(self, ids: Sequence[int]) -> str:
        tok = self._client.tokenizer if self._client is not None else None
        if tok is None:
            return " ".join(f"#{i}" for i in ids)
        return tok.decode(list(ids), skip_special_tokens=False)


class LiveView(widgets.VBox):
    """A view with path and pid filters that polls the engine every `interval` seconds.

    `await view.refresh()` fetches and redraws once (what tests and scripts call); with live
    (the default, where an event loop runs) it polls by itself until `close()`.
    """

    title = "view"

    def __init__(
        self,
        source: Client | LIP | None = None,
        *,
        path: str = "/",
        pid: int | None = None,
        interval: float = 1.0,
        live: bool = True,
    ) -> None:
        self.source = Source(source)
        self.interval = interval
        self.fetched: Any = None  # the last engine replies
        self.data: Any = None  # what is drawn, computed from them
        self.polls = 0
        self._task: asyncio.Task | None = None
        self.path_box = widgets.Text(value=path, description="path", continuous_update=False)
        pid_text = "" if pid is None else str(pid)
        self.pid_box = widgets.Text(
            value=pid_text, description="pid", placeholder="any", continuous_update=False
        )
        for box in (self.path_box, self.pid_box):
            box.layout.width = "220px"
            box.observe(lambda _: self.redraw(), names="value")
        self.status = widgets.HTML()
        header = widgets.HBox([widgets.HTML(f"<b>{self.title}</b>"), *self.filters()])
        self.parts = self.body()
        super().__init__([header, *self.parts, self.status], layout=widgets.Layout(width="100%"))
        if live:
            self.start()

    # --- what a view defines ---------------------------------------------------------------------

    def filters(self) -> list[widgets.Widget]:
        return [self.path_box, self.pid_box]

    def body(self) -> list[widgets.Widget]:
        raise NotImplementedError

    async def fetch(self) -> Any:
        """Ask the engine for what this view shows."""
        raise NotImplementedError

    def compute(self, fetched: Any, flt: Filter) -> Any:
        """Engine replies -> the view's data (pure)."""
        raise NotImplementedError

    def draw(self, data: Any) -> None:
        raise NotImplementedError

    # --- filters, refreshing, polling ------------------------------------------------------------

    @property
    def filter(self) -> Filter:
        text = self.pid_box.value.strip()
        pid = int(text) if text.isdigit() else None
        return Filter(self.path_box.value.strip() or "/", pid)

    async def refresh(self) -> bool:
        """Fetch and redraw; whether what the view shows changed."""
        self.fetched = await self.fetch()
        self.polls += 1
        return self.redraw()

    def redraw(self) -> bool:
        """Recompute from the last replies (after a filter changed, say); draw if changed."""
        if self.fetched is None:
            return False
        data = self.compute(self.fetched, self.filter)
        if data == self.data:
            return False
        self.data = data
        self.draw(data)
        return True

    def start(self) -> None:
        """Poll on the running event loop (nothing happens where none runs: call refresh)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._poll(), name=f"symphony-{self.title}")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    @property
    def live(self) -> bool:
        return self._task is not None and not self._task.done()

    def close(self) -> None:
        """Stop polling and close every widget of the view (its comms go away)."""
        self.stop()
        for child in self.parts:
            close_all(child)
        super().close()

    async def _poll(self) -> None:
        quiet = 0
        while True:
            try:
                changed = await self.refresh()
                quiet = 0 if changed else quiet + 1
                self.say("")
            except (EngineNotRunning, ProcessExited) as e:
                self.say(f"{e}; stopped updating", error=True)
                return
            except EngineError as e:
                self.say(f"{type(e).__name__}: {e}", error=True)
                quiet += 1
            await asyncio.sleep(self.interval * min(MAX_BACKOFF, 1.0 + quiet / 4))

    def say(self, text: str, error: bool = False) -> None:
        colour = "var(--jp-error-color1, #c00)" if error else "var(--jp-ui-font-color2, #666)"
        value = f'<span style="color: {colour}">{html.escape(text)}</span>' if text else ""
        if self.status.value != value:
            self.status.value = value


def fit(figure: go.FigureWidget) -> go.FigureWidget:
    """Keep the figure as wide as the output it is shown in.

    plotly draws a FigureWidget before the page shows it, so at its default 700 px, and sizes
    it again only on a relayout while `autosize` holds (a relayout of the height alone fixes the
    width as it is then). So the figure is sized again whenever a view of it comes on the page
    (the frontend counts them in `_view_count`), and by `set_height`.
    """
    figure.update_layout(autosize=True, width=None)
    figure.observe(lambda change: _shown(figure, change), names="_view_count")
    return figure


def set_height(figure: go.FigureWidget, height: int) -> None:
    """Give the figure this height, keeping it as wide as its output (not in a batch_update)."""
    if figure.layout.height != height:
        figure.layout.height = height
        refit(figure)


def refit(figure: go.FigureWidget) -> None:
    """Size the figure to its output's width again, at the height it has."""
    height = figure.layout.height
    layout = {**({"height": height} if height else {}), "width": None, "autosize": True}
    figure._send_relayout_msg(layout)  # sent as is: plotly would leave out what is unchanged


def _shown(figure: go.FigureWidget, change: dict[str, Any]) -> None:
    if (change["new"] or 0) > (change["old"] or 0):  # one more view of it on the page
        refit(figure)


def zoomable(figure: go.FigureWidget) -> go.FigureWidget:
    """Zoom with the mouse wheel, pan by dragging (plotly's config for this figure)."""
    figure._config = {**figure._config, "scrollZoom": True, "displaylogo": False}
    return figure


def close_all(widget: widgets.Widget) -> None:
    for child in getattr(widget, "children", ()):
        close_all(child)
    widget.close()


def run_soon(coro: Any) -> asyncio.Task | None:
    """Run a coroutine on the running loop (a click handler fetching something), if any."""
    with contextlib.suppress(RuntimeError):
        return asyncio.get_running_loop().create_task(coro)
    coro.close()
    return None
